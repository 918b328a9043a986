"""Ending a training's MLflow run, now or later: back-fill, final metrics, artifacts, FINISHED.

A training whose tracking server is away when it ends loses nothing: its epochs are in the
run directory's results.csv and its weights and plots beside them. The flow waits
``tracking.wait`` seconds for the server, then records the run in a small journal
(``.trainyard/unsynced/<run id>.json`` beside params.yaml) and stops with exit code 4; the next
`trainyard run`, `trainyard doctor` or `trainyard sync` finishes it from the run directory.
The journal names the tracking store without its password.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tasks.data_wait import TAG as DATA_WAIT_TAG
from tasks.data_wait import diagnose_run
from tasks.errors import TrackingError, interruption_signal
from tasks.evaluate import write_metrics
from tasks.job import failure_text, write_atomic
from tasks.registry import RegistryPlan, register_run
from tasks.repro_key import COMPLETE_TAG
from tasks.run_lease import RUN_DIR_TAG, Reaped, reap_stale_runs

if TYPE_CHECKING:
    from tasks.adapters.mlflow_tracking import Tracker

# Files of a run directory that go to MLflow, beside the weights.
ARTIFACT_PATTERNS = (
    "results.csv",
    "args.yaml",
    "params.yaml",
    "metrics.json",
    "data.yaml",
    "validation.json",
    "job.json",
    "*.png",
    "*.jpg",
)
JOURNAL = Path(".trainyard") / "unsynced"


def finish_run(
    tracker: "Tracker",
    run_id: str,
    run_dir: Path,
    complete: bool,
    warn: Callable[[str], None],
    registry: RegistryPlan | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, float | int]:
    """Log what the run is missing from ``run_dir``, register its model (``registry``), end it FINISHED;
    return the final metrics.

    Idempotent: epochs already logged are skipped, artifacts are overwritten, a run with a model
    version keeps it, so a finish that failed half-way (server gone again) is simply repeated.
    """
    from tasks.adapters.mlflow_tracking import backfill_epochs, iter_artifacts

    if tracker.get_run(run_id).status != "RUNNING":  # marked KILLED while its server was away
        tracker.reopen_run(run_id)
    backfilled = backfill_epochs(tracker, run_id, run_dir)
    if backfilled:
        warn(f"logged {backfilled} epoch(s) from {run_dir} that live logging missed")
    metrics = write_metrics(run_dir, run_dir / "metrics.json")
    tracker.log_metrics(run_id, metrics, step=int(metrics.get("epochs", 0)))  # named as in metrics.json
    weights = run_dir / "weights"
    if weights.is_dir():
        tracker.log_artifacts(run_id, weights, "weights")
    for path in iter_artifacts(run_dir, ARTIFACT_PATTERNS):
        tracker.log_artifact(run_id, path)
    # "complete" marks a run that trained every epoch: only such a run can make a later,
    # unchanged scheduled run "up to date" (a reproduction of 3 epochs must not).
    tags = {COMPLETE_TAG: "true" if complete else "false", RUN_DIR_TAG: str(run_dir)}
    verdict = diagnose_run(run_dir)
    if verdict is not None:
        tags[DATA_WAIT_TAG] = verdict.text
    tracker.set_tags(run_id, tags)
    if registry is not None and complete:
        try:
            registration = register_run(tracker, run_id, run_dir, registry, metrics, warn)
        except TrackingError as exc:
            if exc.transient:
                raise  # finished later, with the rest
            warn(f"the model of run {run_id} is not registered: {exc}")  # the training itself is fine
        else:
            if registration is not None:
                say(registration.note)
    tracker.end_run(run_id, "FINISHED")
    return metrics


def record_stop(
    tracker: "Tracker", run_id: str, name: str, run_dir: Path, exc: BaseException, warn: Callable[[str], None]
) -> None:
    """End the run KILLED (interrupted, terminated) or FAILED with why in ``trainyard.error``; once per exception.

    An interruption is also noted in :data:`LAST_INTERRUPTION`, for the CLI's one line.
    """
    if getattr(exc, "trainyard_recorded", False):
        return
    interrupted = interruption_signal(exc) is not None
    text = failure_text(exc, run_dir)
    tracker.record_failure(run_id, text, "KILLED" if interrupted else "FAILED", warn)
    if interrupted:
        LAST_INTERRUPTION.clear()
        LAST_INTERRUPTION.update(
            run_id=run_id, run_name=name, run_dir=str(run_dir), note=text, recorded=str(time.monotonic())
        )
    try:
        exc.trainyard_recorded = True  # type: ignore[attr-defined]
    except AttributeError:
        pass


# The run the last interruption in this process stopped, and when (time.monotonic()), for the
# CLI's one line and its watchdog. Process state rather than an attribute of the exception: under
# a flow, Prefect turns SIGTERM into its own TerminationSignal and then re-sends the signal to
# the CLI's handler, which raises a fresh Interrupted.
LAST_INTERRUPTION: dict[str, str] = {}


@dataclass(frozen=True)
class Unfinished:
    """A trained run whose MLflow record could not be finished: what `trainyard sync` needs."""

    run_id: str
    run_dir: str
    tracking: str  # the store, password redacted; sync finishes only against the same store
    complete: bool
    since: float  # unix time the flow gave up waiting
    reason: str
    registry: dict[str, Any] | None = None  # a RegistryPlan: what the finish registers


def finish_or_defer(
    tracker: "Tracker",
    run_id: str,
    run_dir: Path,
    complete: bool,
    base_dir: Path,
    wait: float,
    warn: Callable[[str], None],
    registry: RegistryPlan | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, float | int]:
    """:func:`finish_run`, waiting up to ``wait`` s for an unreachable server; then journal it and raise."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            return finish_run(tracker, run_id, run_dir, complete, warn, registry, say)
        except TrackingError as exc:
            if not exc.transient:
                raise
            if time.monotonic() >= deadline:
                entry = Unfinished(
                    run_id,
                    str(run_dir),
                    tracker.shown,
                    complete,
                    time.time(),
                    str(exc),
                    asdict(registry) if registry else None,
                )
                path = record_unfinished(base_dir, entry)
                raise TrackingError(
                    f"the training finished (outputs in {run_dir}) but MLflow at {tracker.shown} stayed "
                    f"unreachable for {wait:.0f} s, so run {run_id} is not finished yet; nothing is lost: "
                    f"`trainyard sync` (or the next `trainyard run` / `trainyard doctor`) finishes it from "
                    f"{run_dir} once the server is back ({path.name} in {path.parent})",
                    transient=True,
                ) from None
            if not told:
                warn(f"MLflow at {tracker.shown} is unreachable; waiting up to {wait:.0f} s to finish run {run_id}")
                told = True
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


def record_unfinished(base_dir: Path, entry: Unfinished) -> Path:
    folder = base_dir / JOURNAL
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry.run_id}.json"
    write_atomic(path, (json.dumps(asdict(entry), indent=2) + "\n").encode())
    return path


def unfinished(base_dir: Path) -> list[tuple[Path, Unfinished]]:
    """Journal entries, oldest first; an unreadable one is reported by name, not skipped silently."""
    folder = base_dir / JOURNAL
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append((path, Unfinished(**json.loads(path.read_text()))))
        except (ValueError, TypeError) as exc:
            raise TrackingError(f"{path} is not a trainyard sync record ({exc}); remove it") from None
    return sorted(out, key=lambda item: item[1].since)


@dataclass(frozen=True)
class SyncReport:
    finished: list[str]  # run ids finished from their run directories
    elsewhere: list[str]  # records for another tracking store, left for a sync against it
    reaped: list[Reaped]  # RUNNING runs whose owner was gone, now KILLED

    def lines(self) -> list[str]:
        out = [f"finished MLflow run {run_id} from its run directory" for run_id in self.finished]
        out += [f"left {text}" for text in self.elsewhere]
        out += [f"marked MLflow run {r.run_id} ({r.name}) KILLED: {r.reason}" for r in self.reaped]
        return out


def sync(tracker: "Tracker", base_dir: Path, experiment: str, warn: Callable[[str], None]) -> SyncReport:
    """Finish every journaled run of this tracking store, then mark runs whose owner died KILLED."""
    finished, elsewhere = [], []
    for path, entry in unfinished(base_dir):
        if entry.tracking != tracker.shown:
            elsewhere.append(f"run {entry.run_id}: it belongs to {entry.tracking}, not {tracker.shown}")
            continue
        run_dir = Path(entry.run_dir)
        if not run_dir.is_dir():
            raise TrackingError(
                f"cannot finish MLflow run {entry.run_id}: its run directory {run_dir} is gone; "
                f"end it in the MLflow UI and remove {path}"
            )
        plan = RegistryPlan(**entry.registry) if entry.registry else None
        finish_run(tracker, entry.run_id, run_dir, entry.complete, warn, plan, warn)
        path.unlink()
        finished.append(entry.run_id)
    return SyncReport(finished, elsewhere, reap_stale_runs(tracker, experiment))
