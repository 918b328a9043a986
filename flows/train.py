"""The ``train`` flow: params -> preflight -> stage -> validate -> key -> train (one MLflow run) -> evaluate.

Composition only: every step is a plain function from ``tasks/``, wrapped here with
Prefect's ``task`` for retries and logging. The same flow serves `trainyard run`,
the `dvc repro` train stage and scheduled deployments.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.doctor import ensure_ready, format_table
from tasks.errors import TrainyardError
from tasks.evaluate import write_metrics
from tasks.params import Params, load_params, params_hash
from tasks.repro_key import ReproKey, run_name, trainyard_version
from tasks.runners import Runner, make_runner
from tasks.stage import StagedDataset, cache_from_params, stage_exact, stage_from_params
from tasks.track import Tracker, backfill_epochs, default_artifact_root, iter_artifacts, resolve_tracking_uri
from tasks.train import TrainJob, prepare_run_dir
from tasks.validate import ValidationReport, ensure_valid
from tasks.version import code_root, code_version

# Files of a run directory that go to MLflow, beside the weights.
ARTIFACT_PATTERNS = ("results.csv", "args.yaml", "params.yaml", "metrics.json", "data.yaml", "job.json", "*.png", "*.jpg")


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_name: str
    run_dir: str
    tracking_uri: str
    experiment: str
    metrics: dict[str, float | int]
    key: dict[str, Any]


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Bad input fails the same way on every try; retry only what may pass a moment later."""
    exc = getattr(state, "data", None)
    return not isinstance(exc, TrainyardError) or exc.transient


# Retries only where a second try can help: reading a network source, talking to a
# tracking server. Validation and training are deterministic: a retry repeats the failure.
preflight_task = task(ensure_ready, name="preflight", cache_policy=NO_CACHE)
load_params_task = task(load_params, name="load-params", cache_policy=NO_CACHE)
validate_task = task(ensure_valid, name="validate", cache_policy=NO_CACHE)
stage_exact_task = task(stage_exact, name="stage-exact-version", retries=2, retry_delay_seconds=5,
                        retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
stage_task = task(stage_from_params, name="stage", retries=2, retry_delay_seconds=5,
                  retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)


@task(name="reproduction-key", cache_policy=NO_CACHE)
def reproduction_key_task(params: Params, staged: StagedDataset, runner: Runner) -> ReproKey:
    code = code_version(code_root())
    env = runner.environment()
    return ReproKey(
        data_hash=staged.md5,
        params_hash=params_hash(params),
        code_commit=code.commit or "none",
        code_dirty=code.dirty,
        code_diff=code.diff_sha256 or "",
        env_kind=env.kind,
        env_digest=env.digest,
        seed=params.seed,
        version=trainyard_version(),
    )


@task(name="start-mlflow-run", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)
def start_run_task(params: Params, key: ReproKey, tracking_uri: str, report: ValidationReport,
                   staged: StagedDataset, extra_tags: dict[str, str]) -> tuple[str, str]:
    tracker = Tracker(tracking_uri)  # reachability was checked by the preflight
    name = params.tracking["run_name"] or run_name(str(params.train["model"]), key.data_hash, key.params_hash)
    tags = {
        **key.tags(),
        "trainyard.data_source": staged.source,
        "trainyard.overrides": " ".join(params.overrides),
        "trainyard.runner": params.runner["kind"],
        **({"trainyard.image": str(params.container["image"]), "trainyard.image_digest": key.env_digest}
           if key.env_kind == "docker" else {}),
        "trainyard.images_train": str(report.splits["train"].images if "train" in report.splits else 0),
        **extra_tags,
    }
    run_id = tracker.start_run(
        params.tracking["experiment"],
        name,
        tags=tags,
        params=params.flat(),
        artifact_location=default_artifact_root(tracking_uri, params.base_dir),
    )
    return run_id, name


@task(name="train", cache_policy=NO_CACHE)
def train_task(runner: Runner, job: TrainJob, tracking_uri: str, run_id: str) -> None:
    logger = get_run_logger()
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_RUN_ID": run_id}
    runner.run(job, env, logger.info)


@task(name="finish-mlflow-run", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)
def finish_run_task(tracking_uri: str, run_id: str, run_dir: Path) -> dict[str, float | int]:
    tracker = Tracker(tracking_uri)
    backfilled = backfill_epochs(tracker, run_id, run_dir / "results.csv")
    if backfilled:
        get_run_logger().warning("logged %d epoch(s) from results.csv that live logging missed", backfilled)
    metrics = write_metrics(run_dir, run_dir / "metrics.json")
    tracker.log_metrics(run_id, {f"final/{k}": v for k, v in metrics.items()}, step=int(metrics.get("epochs", 0)))
    weights = run_dir / "weights"
    if weights.is_dir():
        tracker.log_artifacts(run_id, weights, "weights")
    for path in iter_artifacts(run_dir, ARTIFACT_PATTERNS):
        tracker.log_artifact(run_id, path)
    tracker.end_run(run_id, "FINISHED")
    return metrics


@flow(name="train", log_prints=True)
def train_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, run_dir: str | None = None,
               data_version: str | None = None, data_commit: str | None = None, stop_after: int | None = None,
               extra_tags: dict[str, str] | None = None) -> TrainResult:
    """Train YOLO11 on ``data.source`` with ``params.yaml`` (+ ``--set`` overrides), tracked in one MLflow run.

    ``data_version`` (a DVC md5) trains on exactly that version or fails; ``stop_after``
    ends after N epochs with the full run's schedule (both used by `trainyard reproduce`).
    """
    logger = get_run_logger()
    params = load_params_task(params_path, tuple(overrides or ()))
    train_args = _train_args(params)
    checks = preflight_task(params)
    logger.info("preflight:\n%s", format_table(checks))
    staged = stage_exact_task(params, data_version, data_commit) if data_version else stage_task(params)
    logger.info("staged %s (%d files, %.1f MB) at %s%s in %.1f s", staged.md5, staged.files, staged.bytes / 1e6,
                staged.path, " (reused)" if staged.reused else "", staged.seconds)
    for note in staged.notes:
        logger.warning(note)
    report = validate_task(staged.path, label=staged.source)
    logger.info("dataset %s is valid: %s", staged.source, {k: v.images for k, v in report.splits.items()})
    runner = make_runner(params.runner["kind"], params.container)
    key = reproduction_key_task(params, staged, runner)
    tracking_uri, uri_from = resolve_tracking_uri(params.tracking["uri"], params.base_dir)
    logger.info("tracking at %s (%s)", tracking_uri, uri_from)
    fixed_dir = prepare_run_dir(Path(run_dir).resolve()) if run_dir else None  # refuse before opening a run
    run_id, name = start_run_task(params, key, tracking_uri, report, staged, extra_tags or {})
    out = fixed_dir or prepare_run_dir(params.base_dir / "runs" / run_id)
    try:
        (out / "params.yaml").write_text(params.to_yaml())
        data_yaml = staged.training_yaml(out / "data.yaml")
        job = TrainJob(run_dir=str(out), data_yaml=str(data_yaml), args=train_args, stop_after=stop_after)
        with cache_from_params(params).lease(staged.key):  # eviction must not pull the data from under it
            train_task(runner, job, tracking_uri, run_id)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            tracker = Tracker(tracking_uri)
            tracker.set_tags(run_id, {"trainyard.error": str(exc)[:5000]})
            tracker.end_run(run_id, status)
        except TrainyardError:
            logger.warning("could not mark MLflow run %s as %s", run_id, status)
        raise
    metrics = finish_run_task(tracking_uri, run_id, out)
    result = TrainResult(
        run_id=run_id,
        run_name=name,
        run_dir=str(out),
        tracking_uri=tracking_uri,
        experiment=params.tracking["experiment"],
        metrics=metrics,
        key=key.tags(),
    )
    (out / "run.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _train_args(params: Params) -> dict[str, Any]:
    return {**params.train, "model": params.model_ref()}
