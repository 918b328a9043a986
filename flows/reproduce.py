"""The ``reproduce`` flow: re-run a recorded training from its MLflow record and give a verdict.

Composition only: the record, the exact data version, the same image digest (or
environment), the same params and seed go into the ``train`` flow; tasks.reproduce compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.train import retry_if_transient, train_flow
from tasks.job import OOM_TAG, recovery_schedule
from tasks.params import load_params
from tasks.redact import MASK, hide, reveal
from tasks.repro_key import ReproKey
from tasks.reproduce import Verdict, compare, image_for_reproduction, read_record
from tasks.stage_cache import default_stage_root
from tasks.adapters.mlflow_tracking import Tracker, resolve_tracking_uri
from tasks.adapters.git_dvc import code_root, code_version

read_record_task = task(
    name="read-record", retries=2, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE
)(read_record)


@dataclass(frozen=True)
class Reproduction:
    original_run_id: str
    run_id: str
    verdict: Verdict


image_task = task(name="image-drift", cache_policy=NO_CACHE)(image_for_reproduction)


@flow(name="reproduce", log_prints=True)
def reproduce_flow(
    run_id: str,
    params_path: str = "params.yaml",
    epochs: int | None = None,
    allow_drift: bool = False,
    overrides: list[str] | None = None,
) -> Reproduction:
    """Reproduce MLflow run ``run_id``; ``epochs`` replays only the first N epochs."""
    logger = get_run_logger()
    local = load_params(params_path)  # this machine's tracking store, stage cache and tolerances
    uri, _ = resolve_tracking_uri(local.tracking.uri, local.base_dir)
    tracker = Tracker(uri)
    tracker.ping()
    record = read_record_task(tracker, run_id)
    replay = min(epochs, record.epochs) if epochs else record.epochs
    here = code_version(code_root())
    if here.commit != record.key.code_commit:
        logger.warning(
            "run %s was made by code commit %s; this checkout is %s (use --checkout to run the recorded code)",
            run_id,
            record.key.code_commit,
            here.commit,
        )
    stage_root = local.resolve_path(local.stage.root) if local.stage.root else default_stage_root()
    sets = [f"tracking.uri={uri}", f"stage.root={stage_root}"]
    tags = {"trainyard.reproduces": run_id, "trainyard.reproduces_name": record.run.name}
    recoveries = record.run.tags.get(OOM_TAG, "")
    if recoveries:  # trained on at a halved batch after running out of memory: replay that
        tags[OOM_TAG] = f"{recoveries} (replayed)"
        logger.info("replaying the original's out-of-memory recoveries: %s", recoveries)
    if record.key.env_kind == "docker":
        image, drift = image_task(
            record.run.tags.get("trainyard.image", record.key.env_digest),
            record.key.env_digest,
            allow_drift,
            bool(local.container.pull),
        )
        sets.append(f"container.image={image}")
        tags.update(drift)
    if MASK in record.params_yaml and local.data.endpoint_url:  # recorded without its password
        sets.append(f"data.endpoint_url={local.data.endpoint_url}")
    # The recorded params.yaml, beside the local one so its relative paths mean the same.
    recorded = local.base_dir / f".reproduce-{run_id}.params.yaml"
    recorded.write_text(record.params_yaml)
    try:
        result = train_flow(
            params_path=str(recorded),
            overrides=[hide(o) for o in sets + [reveal(o) for o in overrides or []]],  # no password to Prefect
            data_version=record.key.data_hash,
            data_commit=record.key.code_commit,
            stop_after=replay if replay < record.epochs else None,
            extra_tags=tags,
            force=True,
            batch_schedule=recovery_schedule(recoveries),
        )  # the point is to train again
    finally:
        recorded.unlink(missing_ok=True)
    new = tracker.get_run(result.run_id)
    histories = {k: tracker.metric_history(result.run_id, k) for k in record.histories}
    verdict = compare(
        record.histories,
        histories,
        replay,
        float(local.reproduce.rtol),
        float(local.reproduce.atol),
        record.key,
        ReproKey.from_tags(new.tags, result.run_id),
    )
    table = Path(result.run_dir) / "reproduction.md"
    table.write_text(verdict.table())
    tracker.log_artifact(result.run_id, table)
    tracker.set_tags(
        result.run_id,
        {"trainyard.verdict": verdict.kind, "trainyard.verdict_changed_inputs": ",".join(verdict.changed_inputs)},
    )
    logger.info("verdict: %s", verdict.summary())
    return Reproduction(run_id, result.run_id, verdict)
