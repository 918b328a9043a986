"""The ``sweep`` flow: params -> study -> parent MLflow run -> trials -> best trial, plots, candidate.

Composition only: the loop (ask, launch, follow, prune, tell, adopt orphans) is tasks/sweep.py,
the study tasks/adapters/optuna_study.py, the space tasks/sweep_space.py. This module adds the
two places a trial can train:

- :class:`LocalTrials` (``sweep.pool: null``): the ``train`` flow as a subflow of this run, in a
  thread each, ``sweep.parallel`` at once;
- :class:`PoolTrials` (``sweep.pool: <work pool>``): flow runs of the ``train`` deployment on that
  pool, so K trials train at once on as many machines as the pool's workers have; each training
  holds one slot of the Prefect global concurrency limit ``sweep.gpu_limit`` (the team's GPUs).
"""

from __future__ import annotations

import contextvars
import json
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.adapters.mlflow_tracking import Tracker, default_artifact_root, resolve_tracking_uri
from tasks.adapters.optuna_study import Study, default_storage
from tasks.errors import ParamsError, SweepError, TrackingError
from tasks.evaluate import final_metrics
from tasks.params import Params, flatten, load_params
from tasks.redact import redact, reveal
from tasks.registry import describe_version, register_run, registry_plan
from tasks.run_lease import RUN_DIR_TAG
from tasks.run_naming import NOTE_TAG
from tasks.summary import ARTIFACT_KEY, parse_artifact_description
from tasks.sweep import ENDED, ROLE_TAG, STUDY_TAG, Sweep, SweepReport, TrialEnd, TrialPlan
from tasks.sweep_space import Dimension, objective_direction, overrides, study_name


@dataclass(frozen=True)
class SweepResult:
    study: str
    storage: str
    parent_run_id: str
    parent_url: str
    objective: str
    direction: str
    complete: int
    pruned: int
    failed: int
    best_trial: int | None = None
    best_value: float | None = None
    best_values: dict[str, Any] = field(default_factory=dict)
    best_run_id: str = ""
    best_run_url: str = ""
    model_version: str = ""
    tracking_uri: str = ""


@flow(name="sweep", log_prints=True)
def sweep_flow(params_path: str = "params.yaml", overrides: list[str] | None = None) -> SweepResult:
    """Search ``sweep.space`` with an Optuna study: each trial one ``train`` run under one parent MLflow run.

    Trials train in this process (``sweep.pool`` null) or as runs of the ``train`` deployment on
    ``sweep.pool``; hopeless ones are pruned from their per-epoch metrics; an unchanged sweep run
    again continues its study, so a killed sweep resumes. The best trial's values and score go on
    the parent run with Optuna's plots, and its model becomes the registry's ``candidate``.
    """
    logger = get_run_logger()
    given = list(overrides or [])
    params = load_params(params_path, tuple(reveal(o) for o in given))
    spec = params.sweep
    dims = params.sweep_dimensions()
    if not dims:
        raise ParamsError(
            f"{params.path}: sweep.space is empty; valid form: train keys like lr0: {{low: 1e-4, high: 0.01}}"
        )
    direction = objective_direction(spec.objective, spec.direction)
    tracking_uri, _ = resolve_tracking_uri(params.tracking.uri, params.base_dir)
    tracker = Tracker(tracking_uri)
    tracker.ping()
    name = spec.study or study_name(params.tracking.experiment, asdict(spec), params.train, params.data.source)
    storage = spec.storage or default_storage(params.base_dir)
    study = Study.open(
        storage, name, direction, spec.pruner, spec.prune_after, spec.startup_trials, spec.sampler, spec.seed
    )
    parent = _parent_run(tracker, params, dims, name, storage, direction)
    logger.info(
        "sweep %s: %d trial(s), %d at once, %s %s; study in %s; parent MLflow run %s",
        name,
        spec.trials,
        spec.parallel,
        direction,
        spec.objective,
        redact(storage),
        parent,
    )
    base = [o for o in given if not o.strip().startswith("sweep.")]  # the user's --set, for every trial
    if spec.pool and not tracking_uri.startswith(("http://", "https://")):
        logger.warning(
            "sweep.pool %r with the tracking store %s: only workers on this machine can log their trials "
            "there; set tracking.uri to an MLflow server the pool's workers reach",
            spec.pool,
            redact(tracking_uri),
        )
    if spec.pool:
        _ensure_gpu_limit(spec.gpu_limit, spec.parallel)
        launcher: Any = PoolTrials(spec.pool, spec.deployment, params_path, base, spec.gpu_limit)
    else:
        launcher = LocalTrials(params_path, base)
    sweep = Sweep(
        study=study,
        dims=dims,
        launcher=launcher,
        tracker=tracker,
        experiment=params.tracking.experiment,
        parent_run_id=parent,
        trials=spec.trials,
        parallel=spec.parallel,
        objective=spec.objective,
        direction=direction,
        enqueue=spec.enqueue,
        say=logger.info,
    )
    try:
        report = sweep.run()
    except BaseException:
        # first: the CLI's watchdog ends the process seconds after a trial records its interruption
        tracker.end_run(parent, "KILLED")  # `trainyard sweep` again adopts the trials and reopens it
        launcher.stop()
        raise
    return _finish(tracker, params, study, report, parent, storage, direction)


class LocalTrials:
    """Trials as subflows of the sweep's flow run, one thread each (the training itself is a child process)."""

    in_process = True

    def __init__(self, params_path: str, base: list[str]) -> None:
        self.params_path, self.base = params_path, base
        self._ends: dict[str, TrialEnd | None] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._ended = threading.Event()  # set by each trial's thread as it ends: wakes the sweep's loop

    def launch(self, plan: TrialPlan) -> str:
        handle = f"local-{uuid.uuid4().hex[:12]}"
        self._ends[handle] = None
        # a copied context keeps the trial a subflow of this flow run; a daemon thread, so a
        # stopped sweep does not wait for it (its training stops with this process)
        thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._train, handle, plan), daemon=True, name=handle
        )
        self._threads[handle] = thread
        thread.start()
        return handle

    def _train(self, handle: str, plan: TrialPlan) -> None:
        from flows.train import train_flow

        try:
            result = train_flow(
                params_path=self.params_path, overrides=[*self.base, *plan.overrides], extra_tags=plan.tags
            )
            self._ends[handle] = TrialEnd(True, result.run_id, result.outcome)
        except BaseException as exc:  # noqa: BLE001 - a failed trial is the study's business, not the sweep's end
            self._ends[handle] = TrialEnd(False, None, f"{type(exc).__name__}: {redact(str(exc))}")
        finally:
            self._ended.set()

    def poll(self, handle: str) -> TrialEnd | None:
        thread = self._threads.get(handle)
        if thread is None or thread.is_alive():
            return None
        return self._ends.get(handle) or TrialEnd(False, None, "the trial's thread ended without a result")

    def knows(self, handle: str) -> bool:
        return handle in self._threads

    def wait(self, seconds: float) -> None:
        self._ended.wait(seconds)
        self._ended.clear()

    def stop(self) -> None:
        """Stop the trainings (their runs end KILLED, to resume) and wait for their flows to record it."""
        from tasks.runners import STOP_GRACE, stop_local_trainings

        stop_local_trainings()
        for thread in self._threads.values():
            thread.join(timeout=STOP_GRACE + 10)


class PoolTrials:
    """Trials as flow runs of the train flow's deployment on a work pool."""

    in_process = False

    def __init__(self, pool: str, deployment: str, params_path: str, base: list[str], gpu_limit: str) -> None:
        from prefect.client.orchestration import get_client

        self.name = f"train/{deployment}"
        with get_client(sync_client=True) as client:
            try:
                found = client.read_deployment_by_name(self.name)
            except Exception as exc:  # ObjectNotFound, or the API's own error
                raise SweepError(
                    f"no deployment {self.name!r} on the Prefect API ({type(exc).__name__}); create it with "
                    f"`prefect deploy --name {deployment}` from the checkout (prefect.yaml), on work pool {pool!r}"
                ) from None
        if found.work_pool_name != pool:
            raise SweepError(
                f"deployment {self.name!r} runs on work pool {found.work_pool_name!r}, not sweep.pool {pool!r}; "
                "set sweep.pool or sweep.deployment to match"
            )
        # the deployment's own --set (stage.root=/stage, train.device=0 for a GPU pool) come first
        self.base = [*(found.parameters or {}).get("overrides", []), *base]
        self.params_path, self.gpu_limit = params_path, gpu_limit

    def launch(self, plan: TrialPlan) -> str:
        from prefect.deployments import run_deployment

        run: Any = run_deployment(  # sync here: this flow is not async
            self.name,
            parameters={
                "params_path": self.params_path,
                "overrides": [*self.base, *plan.overrides],
                "extra_tags": plan.tags,
                "gpu_slots": self.gpu_limit,
            },
            timeout=0,  # start it and return: the sweep follows it
            tags=["trainyard-sweep", f"trial-{plan.number}"],
            idempotency_key=plan.key,  # a sweep killed mid-launch, started again, gets the same flow run
        )
        return str(run.id)

    def poll(self, handle: str) -> TrialEnd | None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(handle))
            state = run.state
            if state is None or not state.is_final():
                return None
            if not state.is_completed():
                return TrialEnd(False, None, f"flow run {run.name} ended {state.name}: {state.message or ''}".strip())
            return TrialEnd(True, *_summary_of(client, run.id))

    def stop(self) -> None:
        pass  # flow runs on the pool train on; the next `trainyard sweep` adopts them

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)  # the API is polled: a flow run's end is seen at the next poll

    def knows(self, handle: str) -> bool:
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                client.read_flow_run(uuid.UUID(handle))
        except Exception:  # noqa: BLE001 - gone from the API, or a local handle: launch it again
            return False
        return True


def _summary_of(client: Any, flow_run_id: uuid.UUID) -> tuple[str | None, str]:
    """(MLflow run id, outcome) from the train flow run's summary artifact."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[ARTIFACT_KEY])
        )
    )
    for artifact in artifacts:
        parsed = parse_artifact_description(artifact.description or "")
        if parsed:
            return parsed[1], parsed[0]
    return None, "trained"


def _ensure_gpu_limit(name: str, slots: int) -> None:
    """The global concurrency limit the trials' trainings take a slot of: created with ``slots`` if missing,
    left as it is otherwise (a team sets it to its number of GPUs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except Exception:  # noqa: BLE001 - ObjectNotFound
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            logger.info("created the Prefect concurrency limit %r with %d GPU slot(s)", name, slots)
            return
    logger.info("GPU slots: Prefect concurrency limit %r allows %d training(s) at once", name, limit.limit)


def _parent_run(
    tracker: Tracker, params: Params, dims: Sequence[Dimension], name: str, storage: str, direction: str
) -> str:
    """The sweep's MLflow run: found by its study (a resumed sweep), else created."""
    experiment = params.tracking.experiment
    found = tracker.search_runs(
        experiment, f"tags.`{STUDY_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'parent'", newest_first=True, max_results=1
    )
    if found:
        if found[0].status != "RUNNING":
            tracker.reopen_run(found[0].run_id)
        return found[0].run_id
    spec = params.sweep
    searched = {d.key for d in dims}
    record = {f"space.{d.key}": d.describe().removeprefix(f"{d.key} ") for d in dims}
    base = {k: v for k, v in flatten(dict(params.train)).items() if k not in searched}
    settings = {
        f"sweep.{k}": v
        # not sweep.trials: params cannot change, and an extended sweep has more (the trials/* metrics count them)
        for k, v in flatten({k: getattr(spec, k) for k in ("objective", "pruner", "sampler", "seed")}).items()
    }
    label = " ".join(d.key for d in dims)
    return tracker.start_run(
        experiment,
        f"sweep {label} ({name.rsplit('-', 1)[-1]})",
        tags={
            STUDY_TAG: name,
            ROLE_TAG: "parent",
            "trainyard.sweep.storage": redact(storage),
            "trainyard.sweep.objective": f"{direction} {spec.objective}",
            NOTE_TAG: f"**sweep** `{name}`: {direction} {spec.objective} over {', '.join(d.describe() for d in dims)}",
        },
        params={**base, **record, **settings},
        artifact_location=default_artifact_root(tracker.uri, params.base_dir),
    )


def _finish(
    tracker: Tracker, params: Params, study: Study, report: SweepReport, parent: str, storage: str, direction: str
) -> SweepResult:
    """The best trial, the counts and Optuna's plots on the parent run; the best model as ``candidate``."""
    logger = get_run_logger()
    spec = params.sweep
    ended = sum(report.count(state) for state in ENDED)
    counts = {
        "trials/complete": report.count("COMPLETE"),
        "trials/pruned": report.count("PRUNED"),
        "trials/failed": report.count("FAIL"),
    }
    best = report.best
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {k: float(v) for k, v in counts.items()}
    version = ""
    best_run = str(best.attrs.get("run_id", "")) if best else ""
    if best is not None and best.value is not None:
        metrics[f"best/{spec.objective}"] = best.value
        values = best.values
        tags.update({f"trainyard.sweep.best.{k}": json.dumps(v) for k, v in values.items()})
        tags.update({"trainyard.sweep.best_trial": str(best.number), "trainyard.sweep.best_run": best_run})
        if best_run:
            trained = load_params(params.path, (*params.overrides, *overrides(values)))  # the best trial's params
            version = _register_best(tracker, trained, best_run)
    tags[NOTE_TAG] = report.markdown(spec.objective, direction)
    # the same table on the Prefect flow run (Artifacts tab), keyed so a study's sweeps line up in one history
    create_markdown_artifact(
        markdown=tags[NOTE_TAG], key="trainyard-sweep", description=f"trainyard sweep {study.name}: parent run {parent}"
    )
    tracker.log_metrics(parent, metrics, step=ended)
    tracker.set_tags(parent, tags)
    with tempfile.TemporaryDirectory() as tmp:
        for png in study.plots(Path(tmp) / "optuna"):
            tracker.log_artifact(parent, png, "optuna")
        table = Path(tmp) / "trials.csv"
        table.write_text(report.csv_table())
        tracker.log_artifact(parent, table)
        importances = study.importances()
        if importances:
            (Path(tmp) / "importances.json").write_text(json.dumps(importances, indent=2) + "\n")
            tracker.log_artifact(parent, Path(tmp) / "importances.json")
    tracker.end_run(parent, "FINISHED")
    if ended and not report.count("COMPLETE"):
        raise SweepError(
            f"sweep {study.name}: none of its {ended} trial(s) finished ({counts['trials/pruned']} pruned, "
            f"{counts['trials/failed']} failed); the first failure: {report.first_failure()}"
        )
    record = tracker.get_run(parent)
    best_record = tracker.get_run(best_run) if best_run else None
    result = SweepResult(
        study=study.name,
        storage=redact(storage),
        parent_run_id=parent,
        parent_url=tracker.run_url(record),
        objective=spec.objective,
        direction=direction,
        complete=counts["trials/complete"],
        pruned=counts["trials/pruned"],
        failed=counts["trials/failed"],
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_values=best.values if best else {},
        best_run_id=best_run,
        best_run_url=tracker.run_url(best_record) if best_record else "",
        model_version=version,
        tracking_uri=redact(tracker.uri),
    )
    logger.info(
        "sweep %s: %d finished, %d pruned, %d failed; best %s",
        study.name,
        result.complete,
        result.pruned,
        result.failed,
        f"trial {result.best_trial}: {spec.objective} {result.best_value:.4f}" if best else "none",
    )
    return result


def _register_best(tracker: Tracker, params: Params, run_id: str) -> str:
    """The best trial's best.pt as a model version with the ``candidate`` alias; "" where there is no registry."""
    logger = get_run_logger()
    plan = registry_plan(params)
    if plan is None:
        return ""
    run = tracker.get_run(run_id)
    run_dir = Path(run.tags.get(RUN_DIR_TAG, ""))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not (run_dir / "weights" / "best.pt").is_file():  # trained on another machine of the pool
                run_dir = Path(tmp)
                tracker.download_artifact(run_id, "weights/best.pt", run_dir / "weights")
            registration = register_run(tracker, run_id, run_dir, plan, final_metrics(run.metrics), logger.warning)
    except TrackingError as exc:
        logger.warning("the best trial's model is not registered: %s", exc)
        return ""
    if registration is None:
        return ""
    logger.info(registration.note)
    return describe_version(tracker, tracker.get_run(run_id).tags)
