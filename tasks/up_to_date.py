"""Is there anything to train? The "up to date" answer without Prefect, torch, Ultralytics or mlflow.

A finished, complete run whose data md5, params hash and environment (or image) digest equal
those of this training already made its model (see tasks.repro_key.UNCHANGED_IF_SAME). Those
three and one search of the tracking store are all the answer needs, so `trainyard run` asks it
before it starts Prefect: a nightly job with nothing new answers in well under a second instead
of paying for a Prefect API and mlflow's import first. When the answer is "train", the flow runs
as before (and stages nothing twice: the copy made here is the one it reuses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.params import params_hash
from tasks.repro_key import same_inputs_filter, same_inputs_tags

if TYPE_CHECKING:
    from tasks.adapters.mlflow_tracking import RunRecord, Tracker
    from tasks.params import Params
    from tasks.runners import Runner
    from tasks.stage import StagedDataset


@dataclass(frozen=True)
class UpToDate:
    """The run that already trained on these inputs, and its model version as `trainyard run` prints it."""

    run: "RunRecord"
    model_version: str  # "trainyard/3 (candidate)", or "" when it registered none


def input_values(params: "Params", staged: "StagedDataset", runner: "Runner") -> dict[str, str]:
    """The values of UNCHANGED_IF_SAME for this training (the flow asks with its whole reproduction key)."""
    return {"data_hash": staged.md5, "params_hash": params_hash(params), "env_digest": runner.environment().digest}


def up_to_date(params: "Params", tracker: "Tracker", staged: "StagedDataset", runner: "Runner") -> UpToDate | None:
    """The latest finished, complete run on the same data, params and environment, if there is one.

    Read without mlflow where the store allows (tasks/adapters/mlflow_lookup.py); through
    MLflow's client otherwise. Raises TrackingError when the store cannot be reached.
    """
    from tasks.adapters.mlflow_lookup import LookupUnavailable, StoreLookup
    from tasks.registry import describe_version

    values = input_values(params, staged, runner)
    try:
        lookup = StoreLookup(tracker.uri)
        run = lookup.latest_finished_run(params.tracking.experiment, same_inputs_tags(values))
        return None if run is None else UpToDate(run, describe_version(lookup, run.tags))
    except LookupUnavailable:
        pass
    tracker.ping()
    run = tracker.latest_run(params.tracking.experiment, same_inputs_filter(values))
    return None if run is None else UpToDate(run, describe_version(tracker, run.tags))
