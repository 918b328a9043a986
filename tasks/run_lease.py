"""Who owns a RUNNING MLflow run, and what happens to one whose owner died.

The flow that opens a run stamps it with its host and pid and refreshes a heartbeat tag while
the training lasts. A run left RUNNING by a process that was killed (``kill -9``, a preempted
node, a lost pod) is then recognisable: on the same host its pid is gone, anywhere else its
heartbeat is older than the lease. The next `trainyard run`, `trainyard sync` or
`trainyard doctor` marks it KILLED with the reason, and a rerun of the same training resumes
it (same MLflow run, same run directory, from ``weights/last.pt``) instead of opening a second.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tasks.adapters.mlflow_tracking import ERROR_TAG
from tasks.job import resume_point
from tasks.repro_key import COMPLETE_TAG

if TYPE_CHECKING:
    from tasks.adapters.mlflow_tracking import RunRecord, Tracker

HEARTBEAT_TAG = "trainyard.heartbeat"  # unix seconds of the owner's last sign of life
HOST_TAG = "trainyard.host"
PID_TAG = "trainyard.pid"
RUN_DIR_TAG = "trainyard.run_dir"
KEY_TAG = "trainyard.key"
REPRODUCES_TAG = "trainyard.reproduces"
HEARTBEAT_EVERY = 30.0  # seconds between heartbeats
LEASE = 150.0  # five missed heartbeats: the owner is gone (a tracking outage longer than this may look alike)


def owner_tags(run_dir: Path, now: float | None = None) -> dict[str, str]:
    """Tags that say which process owns a run and where it trains, set when the run is opened."""
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        HEARTBEAT_TAG: f"{time.time() if now is None else now:.0f}",
        RUN_DIR_TAG: str(run_dir),
    }


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def stale_reason(
    tags: dict[str, str], now: float, host: str | None = None, alive: Callable[[int], bool] = pid_alive
) -> str | None:
    """Why a RUNNING run's owner is gone, or None while it may still be alive.

    Runs without a heartbeat (not opened by this trainyard, or by another tool) are left alone.
    """
    beat = tags.get(HEARTBEAT_TAG, "")
    try:
        last = float(beat)
    except ValueError:
        return None
    owner_host, pid = tags.get(HOST_TAG, "?"), tags.get(PID_TAG, "")
    ago = max(0, int(now - last))
    if owner_host == (host or socket.gethostname()) and pid.isdigit() and not alive(int(pid)):
        return f"its process (pid {pid} on {owner_host}) ended without ending the run; last heartbeat {ago} s before"
    if now - last > LEASE:
        return f"no heartbeat from pid {pid or '?'} on {owner_host} for {ago} s (lease {LEASE:.0f} s)"
    return None


@dataclass(frozen=True)
class Reaped:
    run_id: str
    name: str
    reason: str


def reap_stale_runs(tracker: "Tracker", experiment: str, now: float | None = None) -> list[Reaped]:
    """Mark every RUNNING run of ``experiment`` whose owner is gone KILLED, with the reason in trainyard.error."""
    now = time.time() if now is None else now
    reaped = []
    for run in tracker.runs_with_status(experiment, "RUNNING"):
        reason = stale_reason(run.tags, now)
        if reason is None:
            continue
        tracker.set_tags(run.run_id, {ERROR_TAG: f"orchestrator lost: {reason}; marked KILLED by trainyard"})
        tracker.end_run(run.run_id, "KILLED")
        reaped.append(Reaped(run.run_id, run.name, reason))
    return reaped


def resumable_run(runs: "list[RunRecord]", key_digest: str, run_dir: Path | None) -> "RunRecord | None":
    """The newest interrupted run of this very training whose run directory holds a checkpoint to resume.

    ``runs``: KILLED runs, newest first. The same training means the same reproduction key
    (data, params, code, environment, seed), not a reproduction, not already complete, and,
    when the caller fixed ``run_dir``, the same directory.
    """
    for run in runs:
        tags = run.tags
        if tags.get(KEY_TAG) != key_digest or REPRODUCES_TAG in tags or tags.get(COMPLETE_TAG) == "true":
            continue
        where = tags.get(RUN_DIR_TAG)
        if not where or (run_dir is not None and Path(where).resolve() != run_dir.resolve()):
            continue
        if resume_point(Path(where)) is not None:
            return run
    return None


class Heartbeat:
    """Refreshes the run's heartbeat tag from a thread while the training lasts (a context manager).

    A failed beat (tracking server away) is skipped; the lease allows five in a row.
    """

    def __init__(self, tracker: "Tracker", run_id: str, every: float = HEARTBEAT_EVERY) -> None:
        self.tracker, self.run_id, self.every = tracker, run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="trainyard-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _beat(self) -> None:
        from tasks.errors import TrackingError

        while not self._stop.wait(self.every):
            try:
                self.tracker.set_tags(self.run_id, {HEARTBEAT_TAG: f"{time.time():.0f}"})
            except TrackingError:
                pass


class RunDirLock:
    """Exclusive ownership of a run directory for one training (a context manager).

    Two trainings in one directory would interleave their results.csv and checkpoints (and one
    would "resume" the other's last.pt). The lock is ``flock`` on ``.<name>.lock`` beside the
    directory, so a killed owner (even ``kill -9``) releases it with its last file descriptor;
    the file names the owner for the refusal message.
    """

    def __init__(self, run_dir: Path, run_id: str = "") -> None:
        self.run_dir, self.run_id = run_dir, run_id
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunDirLock":
        import json

        from tasks.errors import RunnerError
        from tasks.file_locks import try_exclusive

        fd = try_exclusive(self.path)
        if fd is None:
            try:
                owner = json.loads(self.path.read_bytes() or b"{}")
            except (OSError, ValueError):
                owner = {}
            since = owner.get("since")
            when = time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
            raise RunnerError(
                f"run directory {self.run_dir} is in use by another training (pid {owner.get('pid', '?')} on "
                f"{owner.get('host', '?')}, MLflow run {owner.get('run_id') or '?'}, since {when}); wait for it "
                "to end or choose another --run-dir"
            ) from None
        self._fd = fd
        self.claim(self.run_id)
        return self

    def claim(self, run_id: str) -> None:
        """Name the owner in the lock file: this process and its MLflow run (known only after locking
        a fresh run's directory), for another training's refusal message."""
        import json

        if self._fd is not None:
            self.run_id = run_id
            record = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id, "since": time.time()}
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, json.dumps(record).encode(), 0)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file stays (unlinking it would race a waiter)
            self._fd = None
