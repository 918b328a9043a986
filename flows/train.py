"""The ``train`` flow: params -> preflight -> stage -> validate -> key -> train (one MLflow run) -> evaluate.

Composition only: every step is a plain function from ``tasks/``, wrapped here with
Prefect's ``task`` for retries and logging. The same flow serves `trainyard run`,
the `dvc repro` train stage and scheduled deployments.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect.artifacts import create_markdown_artifact

from tasks.doctor import ensure_ready, format_table
from tasks.evaluate import final_metrics
from tasks.errors import TrackingError, TrainingError, TrainyardError
from tasks.params import Params, load_params, params_hash
from tasks.redact import redact, redact_log_handlers, reveal
from tasks.registry import describe_version, registry_plan
from tasks.repro_key import ReproKey, run_tags, same_inputs_filter, trainyard_version
from tasks.run_naming import NOTE_TAG, dataset_profile, description, readable_name
from tasks.run_finish import SyncReport, finish_or_defer, record_stop, sync
from tasks.run_lease import REPRODUCES_TAG, RUN_DIR_TAG, Heartbeat, RunDirLock, owner_tags, resumable_run
from tasks.runners import Runner, make_runner
from tasks.stage import StagedDataset, cache_from_params, stage_exact, stage_from_params
from tasks.data_wait import STARVED, TAG as DATA_WAIT_TAG
from tasks.gpu_scope import runner_gpus
from tasks.summary import ARTIFACT_KEY, RunSummary, artifact_description
from tasks.adapters.mlflow_tracking import RunRecord, Tracker, default_artifact_root, resolve_tracking_uri
from tasks.job import (
    OOM_TAG,
    TrainJob,
    STOP_FILE,
    is_retry,
    note_out_of_memory,
    plan_retry,
    prepare_run_dir,
    worth_retrying,
)
from tasks.live_logging import live_logging
from tasks.sweep import STUDY_TAG, pruned_watch
from tasks.validate import ValidationReport, format_warnings, validate_staged
from tasks.adapters.git_dvc import code_root, code_version


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_name: str
    run_dir: str
    tracking_uri: str
    experiment: str
    metrics: dict[str, float | int]
    key: dict[str, Any]
    outcome: str = "trained"  # or "up to date": an earlier run already trained on the same inputs
    run_url: str = ""
    resumed_after: list[int] = field(default_factory=list)  # epochs at which a crashed training resumed
    model_version: str = ""  # "<registered model>/<version>" with its aliases, when the training registered one


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Bad input fails the same way on every try; retry only what may pass a moment later."""
    exc = getattr(state, "data", None)
    return not isinstance(exc, TrainyardError) or exc.transient


# Retries only where a second try can help: reading a network source, talking to a
# tracking server. Validation and training are deterministic: a retry repeats the failure.
preflight_task = task(name="preflight", cache_policy=NO_CACHE)(ensure_ready)
load_params_task = task(name="load-params", cache_policy=NO_CACHE)(load_params)
sync_task = task(name="sync-earlier-runs", cache_policy=NO_CACHE)(sync)
validate_task = task(name="validate", cache_policy=NO_CACHE)(validate_staged)
stage_exact_task = task(
    name="stage-exact-version",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)(stage_exact)
stage_task = task(
    name="stage", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE
)(stage_from_params)


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


@task(
    name="start-mlflow-run",
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def start_run_task(
    params: Params,
    key: ReproKey,
    tracking_uri: str,
    report: ValidationReport,
    staged: StagedDataset,
    extra_tags: dict[str, str],
    stop_after: int | None = None,
) -> tuple[str, str]:
    tracker = Tracker(tracking_uri)  # reachability was checked by the preflight
    name = params.tracking.run_name or readable_name(params, extra_tags, stop_after)
    note = {NOTE_TAG: description(params, key, staged.source)}
    run_id = tracker.start_run(
        params.tracking.experiment,
        name,
        tags={**run_tags(params, key, staged.source, report), **params.settings_tags(), **note, **extra_tags},
        params=params.mlflow_params(),
        artifact_location=default_artifact_root(tracking_uri, params.base_dir),
    )
    return run_id, name


@task(name="log-dataset-input", cache_policy=NO_CACHE)
def log_dataset_task(tracking_uri: str, run_id: str, staged: StagedDataset, report: ValidationReport) -> None:
    """The data version as the run's MLflow dataset input (Datasets column and filter); a failure only warns."""
    name = Path(staged.source.rstrip("/")).name or staged.source
    try:
        Tracker(tracking_uri).log_dataset(
            run_id, name, staged.md5, staged.source, dataset_profile(report.splits, report.names)
        )
    except TrackingError as exc:
        get_run_logger().warning("could not record the dataset input of run %s: %s", run_id, exc)


RESUMED_TAG = "trainyard.resumed_after"  # the epochs after which a killed training was resumed, "3,7"


def retry_if_resumable(task: Any, task_run: Any, state: Any) -> bool:
    """A killed or crashed training resumes from last.pt; one that never got going is not retried."""
    exc = getattr(state, "data", None)
    return isinstance(exc, TrainingError) and exc.resumable


@task(name="train", cache_policy=NO_CACHE, retry_condition_fn=retry_if_resumable)
def train_task(runner: Runner, job: TrainJob, tracking_uri: str, run_id: str, prunable: bool = False) -> list[int]:
    """Run the training, its epochs and system metrics logged live; on a retry, resume from the run
    directory's last.pt into the same MLflow run. ``prunable``: a sweep trial, which stops after
    the current epoch once the sweep tags its run as pruned.

    Returns the epochs after which it resumed (empty when it ran straight through).
    """
    logger = get_run_logger()
    resumed: list[int] = []
    if is_retry(Path(job.run_dir)):
        tracker = Tracker(tracking_uri)
        logged = max((step for step, _ in tracker.metric_history(run_id, "train/box_loss")), default=0)
        attempt = plan_retry(job, logged, _resumed_after(tracker, run_id))
        logger.warning("%s, into MLflow run %s", attempt.note, run_id)
        if attempt.job.resume:
            tracker.set_tags(run_id, {RESUMED_TAG: ",".join(map(str, attempt.resumed_after))})
        if attempt.recovery:
            before = tracker.get_run(run_id).tags.get(OOM_TAG, "")
            tracker.set_tags(run_id, {OOM_TAG: "; ".join(x for x in (before, attempt.recovery) if x)})
        job, resumed = attempt.job, attempt.resumed_after
    try:
        gpus = runner_gpus(job.args, runner)
        watch = pruned_watch(Tracker(tracking_uri), run_id) if prunable else None
        with live_logging(
            Tracker(tracking_uri), run_id, Path(job.run_dir), job.logged_through, logger.warning, gpus, watch=watch
        ):
            runner.run(job, {}, logger.info)
    except TrainingError as exc:
        if exc.out_of_memory:
            note_out_of_memory(job, "the container was OOMKilled")
        exc.resumable = worth_retrying(exc.killed, Path(job.run_dir))
        raise
    except BaseException as exc:
        # Ctrl-C / SIGTERM: record it here, before Prefect reports the crash to an API that the
        # same Ctrl-C may have stopped (its temporary server shares the terminal)
        record_stop(Tracker(tracking_uri), run_id, "", Path(job.run_dir), exc, logger.warning)
        raise
    return resumed


@contextlib.contextmanager
def _gpu_slot(limit: str | None) -> Any:
    """Hold one slot of the Prefect global concurrency limit ``limit`` (GPUs) while training."""
    if not limit:
        yield
        return
    from prefect.concurrency.sync import concurrency

    get_run_logger().info("waiting for a slot of the GPU limit %r", limit)
    with concurrency(limit, occupy=1, strict=True):
        yield


def _resumed_after(tracker: Tracker, run_id: str) -> list[int]:
    text = tracker.get_run(run_id).tags.get(RESUMED_TAG, "")
    return [int(x) for x in text.split(",") if x.strip().isdigit()]


finish_run_task = task(name="finish-mlflow-run", cache_policy=NO_CACHE)(finish_or_defer)


@task(
    name="resume-interrupted-run",
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def resumable_run_task(tracking_uri: str, experiment: str, key: ReproKey, run_dir: Path | None) -> RunRecord | None:
    """An interrupted run of this very training (same key) whose run directory can resume."""
    return resumable_run(Tracker(tracking_uri).runs_with_status(experiment, "KILLED"), key.digest, run_dir)


@task(
    name="find-up-to-date-run",
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def up_to_date_task(tracking_uri: str, experiment: str, key: ReproKey) -> RunRecord | None:
    """The latest finished, complete run trained on the same data, params and image/environment."""
    return Tracker(tracking_uri).latest_run(experiment, same_inputs_filter(key))


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary_task(summary: RunSummary) -> None:
    """The flow run's summary in the Prefect UI (Artifacts tab), keyed so runs line up in one history."""
    create_markdown_artifact(
        markdown=summary.markdown(),
        key=ARTIFACT_KEY,
        description=artifact_description(summary.outcome, summary.run_id),
    )


@flow(name="train", log_prints=True)
def train_flow(
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    run_dir: str | None = None,
    data_version: str | None = None,
    data_commit: str | None = None,
    stop_after: int | None = None,
    extra_tags: dict[str, str] | None = None,
    force: bool = False,
    batch_schedule: list[list[int]] | None = None,
    gpu_slots: str | None = None,
) -> TrainResult:
    """Train YOLO11 on ``data.source`` with ``params.yaml`` (+ ``--set`` overrides), tracked in one MLflow run.

    Unless ``force``, a run whose data hash, params hash and image/environment digest equal
    those of an earlier finished run does not train: it reports "up to date" with that run.
    ``data_version`` (a DVC md5) trains on exactly that version or fails; ``stop_after``
    ends after N epochs with the full run's schedule, ``batch_schedule`` replays a run's
    out-of-memory recoveries (all three used by `trainyard reproduce`). ``gpu_slots`` names a
    Prefect global concurrency limit whose slot the training holds while it trains (a sweep's
    trials on a work pool); ``extra_tags`` of a sweep trial make it stop when the sweep prunes it.
    """
    redact_log_handlers()  # also when a worker or `trainyard serve` runs the flow, not the CLI
    logger = get_run_logger()
    trial = STUDY_TAG in (extra_tags or {})
    # the CLI passes passwords of --set URLs redacted (Prefect stores flow parameters); see tasks.redact
    params = load_params_task(params_path, tuple(reveal(o) for o in overrides or ()))
    train_args = _train_args(params)
    checks = preflight_task(params)
    logger.info("preflight:\n%s", format_table(checks))
    staged = stage_exact_task(params, data_version, data_commit) if data_version else stage_task(params)
    logger.info(
        "staged %s (%d files, %.1f MB) at %s%s in %.1f s",
        staged.md5,
        staged.files,
        staged.bytes / 1e6,
        staged.path,
        " (reused)" if staged.reused else "",
        staged.seconds,
    )
    for note in staged.notes:
        logger.warning(note)
    report = validate_task(params, staged)
    logger.info(
        "dataset %s is valid%s: %s",
        staged.source,
        " (checked before, same data version)" if report.cached else "",
        {k: v.images for k, v in report.splits.items()},
    )
    if report.warnings:
        logger.warning(
            "dataset %s trains with %d warning(s):\n%s",
            staged.source,
            len(report.warnings),
            format_warnings(report.warnings),
        )
    runner = make_runner(params.runner.kind, params.container)
    runner.warm_up()  # the training process imports torch and Ultralytics while MLflow is opened below
    key = reproduction_key_task(params, staged, runner)
    tracking_uri, uri_from = resolve_tracking_uri(params.tracking.uri, params.base_dir)
    logger.info("tracking at %s (%s)", redact(tracking_uri), uri_from)
    experiment = params.tracking.experiment
    tracker = Tracker(tracking_uri)
    _log_sync(sync_task(tracker, params.base_dir, experiment, logger.warning))  # runs an outage or a kill left open
    if not force:
        prior = up_to_date_task(tracking_uri, experiment, key)
        if prior is not None:
            runner.discard()
            return _up_to_date(prior, key, params, tracking_uri)
    fixed_dir = Path(run_dir).resolve() if run_dir else None
    with contextlib.ExitStack() as held:  # one training per run directory, until its run is finished
        lock = held.enter_context(RunDirLock(fixed_dir)) if fixed_dir else None
        interrupted = resumable_run_task(tracking_uri, experiment, key, fixed_dir) if stop_after is None else None
        if interrupted is not None:
            run_id, name = interrupted.run_id, interrupted.name
            out = Path(interrupted.tags[RUN_DIR_TAG])
            lock = lock or held.enter_context(RunDirLock(out, run_id))
            tracker.reopen_run(run_id)
            logger.warning("resuming interrupted MLflow run %s (%s) in %s", name, run_id, out)
        else:
            if fixed_dir:
                prepare_run_dir(fixed_dir, logger.warning)  # refuse before opening a run
            tags = {**_prefect_tags(), **(extra_tags or {})}
            run_id, name = start_run_task(params, key, tracking_uri, report, staged, tags, stop_after)
            log_dataset_task(tracking_uri, run_id, staged, report)
            out = fixed_dir or params.base_dir / "runs" / run_id
            lock = lock or held.enter_context(RunDirLock(out, run_id))
            if not fixed_dir:
                prepare_run_dir(out, logger.warning)
        lock.claim(run_id)
        tracker.set_tags(run_id, {**owner_tags(out), **_prefect_tags()})
        try:
            with Heartbeat(tracker, run_id):
                (out / "params.yaml").write_text(params.to_yaml())
                (out / "validation.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
                data_yaml = staged.training_yaml(out / "data.yaml")
                job = TrainJob(
                    run_dir=str(out),
                    data_yaml=str(data_yaml),
                    args=train_args,
                    stop_after=stop_after,
                    oom_min_batch=params.runner.oom_min_batch,
                    batch_schedule=list(batch_schedule or []),
                )
                with (
                    cache_from_params(params).lease(staged.key),  # eviction must not pull the data from under it
                    _gpu_slot(gpu_slots),
                ):
                    resumed = train_task.with_options(
                        retries=params.runner.retries, retry_delay_seconds=params.runner.retry_delay
                    )(runner, job, tracking_uri, run_id, trial)
        except BaseException as exc:  # a run never stays RUNNING because its training failed or was interrupted
            record_stop(tracker, run_id, name, out, exc, logger.warning)
            raise
        # a sweep registers its best trial, not each one (flows/sweep.py)
        registry = None if trial else registry_plan(params, reproduction=bool((extra_tags or {}).get(REPRODUCES_TAG)))
        pruned = (out / STOP_FILE).is_file()
        metrics = finish_run_task(
            tracker,
            run_id,
            out,
            stop_after is None and not pruned,
            params.base_dir,
            params.tracking.wait,
            logger.warning,
            registry,
            logger.info,
        )
        outcome_text = (
            f"trained {metrics.get('epochs', '?')} epochs: mAP50-95 {metrics.get('mAP50-95', float('nan')):.4f}"
        )
        tracker.set_tags(run_id, {NOTE_TAG: description(params, key, staged.source, outcome_text)})
    record = tracker.get_run(run_id)
    url = tracker.run_url(record)
    outcome = "trained"
    if pruned:
        outcome = "pruned"
    elif resumed:
        outcome = f"trained (resumed after epoch {', '.join(map(str, resumed))})"
    verdict = record.tags.get(DATA_WAIT_TAG, "")  # the finish diagnosed the run directory
    if verdict:
        (logger.warning if verdict.startswith(STARVED) else logger.info)(verdict)
    notes = (verdict,) if verdict else ()
    if record.tags.get(OOM_TAG):
        notes = (f"recovered from running out of memory: {record.tags[OOM_TAG]}", *notes)
    publish_summary_task(_summary(outcome, name, run_id, url, key, params, metrics, notes))
    result = TrainResult(
        run_id=run_id,
        run_name=name,
        run_dir=str(out),
        tracking_uri=redact(tracking_uri),
        experiment=experiment,
        metrics=metrics,
        key=key.tags(),
        outcome="pruned" if pruned else "trained",
        run_url=url,
        resumed_after=resumed,
        model_version=describe_version(tracker, record.tags),
    )
    (out / "run.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _log_sync(report: SyncReport) -> None:
    for line in report.lines():
        get_run_logger().warning(line)


def _up_to_date(prior: RunRecord, key: ReproKey, params: Params, tracking_uri: str) -> TrainResult:
    url = Tracker(tracking_uri).run_url(prior)
    get_run_logger().info(
        "up to date: data %s, params %s and %s digest %s equal those of MLflow run %s (%s); "
        "not retraining (force=True / `trainyard run --force` retrains) - %s",
        key.data_hash,
        key.params_hash[:12],
        "image" if key.env_kind == "docker" else "environment",
        key.env_digest[:19],
        prior.name,
        prior.run_id,
        url,
    )
    metrics = final_metrics(prior.metrics)
    publish_summary_task(
        _summary(
            "up to date",
            prior.name,
            prior.run_id,
            url,
            key,
            params,
            metrics,
            notes=("nothing changed since this run: no training",),
        )
    )
    return TrainResult(
        run_id=prior.run_id,
        run_name=prior.name,
        run_dir=prior.tags.get(RUN_DIR_TAG, ""),
        tracking_uri=redact(tracking_uri),
        experiment=params.tracking.experiment,
        metrics=metrics,
        key=key.tags(),
        outcome="up to date",
        run_url=url,
    )


def _summary(
    outcome: str,
    name: str,
    run_id: str,
    url: str,
    key: ReproKey,
    params: Params,
    metrics: dict[str, float | int],
    notes: tuple[str, ...] = (),
) -> RunSummary:
    image = str(params.container.image) if key.env_kind == "docker" else None
    return RunSummary(
        outcome=outcome,
        run_name=name,
        run_id=run_id,
        run_url=url,
        data_hash=key.data_hash,
        params_hash=key.params_hash,
        env_kind=key.env_kind,
        env_digest=key.env_digest,
        code_commit=key.code_commit,
        metrics=metrics,
        image=image,
        notes=notes,
    )


def _prefect_tags() -> dict[str, str]:
    """Link the MLflow run back to the Prefect flow run (and its deployment) that made it."""
    from prefect.runtime import deployment, flow_run

    tags = {"trainyard.prefect.flow_run_id": str(flow_run.id or "")}
    if deployment.name:
        tags["trainyard.prefect.deployment"] = str(deployment.name)
    return {k: v for k, v in tags.items() if v}


def _train_args(params: Params) -> dict[str, Any]:
    return {**params.train, "model": params.model_ref()}
