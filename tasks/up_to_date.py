"""Is there anything to train? The "up to date" answer without Prefect, torch or Ultralytics.

A finished, complete run whose data md5, params hash and environment (or image) digest equal
those of this training already made its model (see tasks.repro_key.UNCHANGED_IF_SAME). Those
three and one MLflow search are all the answer needs, so `trainyard run` asks it before it
starts Prefect: a nightly job with nothing new answers in about a second instead of paying
for a Prefect API first. When the answer is "train", the flow runs as before (and stages
nothing twice: the copy made here is the one it reuses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.params import params_hash
from tasks.repro_key import same_inputs_filter

if TYPE_CHECKING:
    from tasks.adapters.mlflow_tracking import RunRecord, Tracker
    from tasks.params import Params
    from tasks.runners import Runner
    from tasks.stage import StagedDataset


def inputs_filter(params: "Params", staged: "StagedDataset", runner: "Runner") -> str:
    """The MLflow search for runs trained on exactly these inputs."""
    # the values of UNCHANGED_IF_SAME: the flow asks the same question with its whole reproduction key
    values = {"data_hash": staged.md5, "params_hash": params_hash(params), "env_digest": runner.environment().digest}
    return same_inputs_filter(values)


def up_to_date_run(
    params: "Params", tracker: "Tracker", staged: "StagedDataset", runner: "Runner"
) -> "RunRecord | None":
    """The latest finished, complete run on the same data, params and environment, if there is one."""
    return tracker.latest_run(params.tracking.experiment, inputs_filter(params, staged, runner))
