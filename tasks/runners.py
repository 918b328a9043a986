"""The runner seam: where and how the training process runs.

A runner takes a :class:`~tasks.job.TrainJob` (plus any environment variables the training
needs), runs ``python -m tasks.adapters.ultralytics_trainer job.json`` somewhere, streams its
output, and raises :class:`TrainingError` if it fails. The training reaches no tracking server:
it records its epochs in the run directory and the flow logs them (tasks/live_logging.py). The local runner uses
a child process of the current interpreter; the Docker runner (its own module) runs the
same command in a container started by image digest, behind the same interface.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Mapping, Protocol

from tasks.adapters.torch_environment import Environment, local_environment
from tasks.errors import Interrupted, RunnerError, TrainingError
from tasks.job import JOB_FILE, WAIT_FLAG, TrainJob
from tasks.params import ContainerParams
from tasks.training_output import LogSink, last_frame, last_lines, training_env

STOP_GRACE = 10.0  # seconds a stopped training gets between SIGTERM and SIGKILL

# Exit codes that mean "killed by the kernel", most often the OOM killer on a CPU box.
_KILLED = {-signal.SIGKILL, 128 + signal.SIGKILL}


class Runner(Protocol):
    """Runs one training job to completion."""

    kind: str

    def environment(self) -> Environment:
        """The digest that goes into the reproduction key (image digest or interpreter digest)."""
        ...

    def run(self, job: TrainJob, env: Mapping[str, str], log: LogSink) -> None:
        """Run the job; stream output lines to ``log``; raise TrainingError on failure."""
        ...

    def warm_up(self) -> None:
        """Start what the next :meth:`run` needs, if that can overlap with the flow's own start-up."""
        ...

    def discard(self) -> None:
        """Stop what :meth:`warm_up` started, when no training follows."""
        ...


class LocalRunner:
    """Trains in a child process of this interpreter (no Docker needed)."""

    kind = "local"

    def __init__(self, python: str = sys.executable, interactive: bool | None = None) -> None:
        self.python = python
        # In a terminal the child inherits it, so Ultralytics' progress bars render; in CI or
        # under a Prefect worker the output is captured line by line and sent to the logger.
        self.interactive = _is_terminal() if interactive is None else interactive
        self._environment: Environment | None = None
        self._warm: subprocess.Popen[bytes] | None = None

    def environment(self) -> Environment:
        if self._environment is None:
            self._environment = local_environment(self.python)
        return self._environment

    def warm_up(self) -> None:
        """Start the training process ahead of its job: it imports torch and Ultralytics (about 3 s) while
        the flow imports mlflow and opens the run (bench/overhead.py measures the difference)."""
        if self._warm is None or self._warm.poll() is not None:
            self._warm = self._start([WAIT_FLAG], stdin=subprocess.PIPE)

    def discard(self) -> None:
        proc, self._warm = self._warm, None
        if proc is not None:
            _stop(proc)  # it holds no state yet: no need to wait for its imports to finish
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

    def _start(
        self, args: list[str], env: Mapping[str, str] | None = None, stdin: int | None = None
    ) -> subprocess.Popen[bytes]:
        child_env = {**os.environ, **training_env(), **(env or {})}
        cmd = [self.python, "-m", "tasks.adapters.ultralytics_trainer", *args]
        try:
            return subprocess.Popen(
                cmd,
                cwd=str(_project_root()),
                env=child_env,
                stdin=stdin,
                stdout=None if self.interactive else subprocess.PIPE,
                stderr=None if self.interactive else subprocess.STDOUT,
                # Its own process group: a Ctrl-C reaches this process, which stops the training
                # (and its dataloader / DDP workers) as a whole, instead of each dying mid-write
                # with its own traceback.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise RunnerError(f"could not start the training process {self.python}: {exc.strerror}") from None

    def _handed(self, job_path: Path) -> subprocess.Popen[bytes] | None:
        """The warmed-up process, given ``job_path``; None when there is none (or it is gone)."""
        proc, self._warm = self._warm, None
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return None
        try:
            proc.stdin.write(f"{job_path}\n".encode())
            proc.stdin.close()
        except OSError:  # it died meanwhile: start afresh
            _stop(proc)
            return None
        return proc

    def run(self, job: TrainJob, env: Mapping[str, str], log: LogSink) -> None:
        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        job_path = job.write(run_dir / JOB_FILE)
        tail: collections.deque[str] = collections.deque(maxlen=30)
        # a warmed-up process has its environment already: it takes only jobs that add nothing to it
        proc = None if env else self._handed(job_path)
        if proc is None:
            self.discard()
            proc = self._start([str(job_path)], env)
        try:
            # The main thread never blocks for long: a signal that the kernel hands to another
            # thread runs its Python handler (Ctrl-C -> Interrupted) only when the main thread
            # next runs bytecode, so a plain wait() would hold a Ctrl-C until the training ended.
            lines: queue.Queue[bytes | None] = queue.Queue()
            if proc.stdout is not None:
                threading.Thread(target=_pump, args=(proc.stdout, lines), name="trainyard-output", daemon=True).start()
            else:
                lines.put(None)
            while True:
                try:
                    raw = lines.get(timeout=_POLL)
                except queue.Empty:
                    _stop_if_asked()
                    continue
                if raw is None:
                    break
                line = last_frame(raw.decode("utf-8", errors="replace"))
                if line:
                    tail.append(line)
                    log(line)
            while (code := _poll_wait(proc)) is None:
                _stop_if_asked()
        except BaseException:
            # Ctrl-C or a cancelled flow: stop the child, never leave it training on its own.
            _stop(proc)
            raise
        if code != 0:
            raise TrainingError(_failure_message(code, list(tail), run_dir), killed=code < 0 or code in _KILLED)


_POLL = 0.25  # seconds between checks for a Ctrl-C while the training runs

# Set when this process stops every training it runs at once: trainings in other threads (a
# sweep's trials) see no Ctrl-C of their own, so each runner raises it in its thread.
_STOP_ALL: list[int] = []


def stop_local_trainings(signum: int = signal.SIGINT) -> None:
    """Make every LocalRunner.run of this process, in any thread, stop its training as on ``signum``."""
    _STOP_ALL.append(signum)


def _stop_if_asked() -> None:
    if _STOP_ALL:
        raise Interrupted(_STOP_ALL[0])


def _pump(stream: IO[bytes], lines: "queue.Queue[bytes | None]") -> None:
    for raw in stream:  # bytes: text mode would turn every \r redraw into a line
        lines.put(raw)
    lines.put(None)


def _poll_wait(proc: subprocess.Popen[bytes]) -> int | None:
    try:
        return proc.wait(timeout=_POLL)
    except subprocess.TimeoutExpired:
        return None


def _failure_message(code: int, tail: list[str], run_dir: Path) -> str:
    if code in _KILLED:
        why = "was killed (SIGKILL) - most often the out-of-memory killer; lower train.batch or train.imgsz"
    elif code < 0:
        why = f"was stopped by signal {-code}"
    else:
        why = f"exited with code {code}"
    return f"training process {why}; output in {run_dir}{last_lines(tail)}"


def _stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
    """SIGTERM the training's process group, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the flow process dies (kill -9, OOM, a lost pod).

    Without it an orphaned training goes on writing into a run directory that the rerun is
    about to resume from. Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _is_terminal() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


def _project_root() -> Path:
    # tasks/ lives at the project root; the child imports `tasks` from there even when
    # trainyard is not installed (e.g. straight from a checkout)
    return Path(__file__).resolve().parent.parent


def make_runner(kind: str, container: ContainerParams | None = None) -> Runner:
    """The runner for ``runner.kind``; ``container`` is params.yaml's container section."""
    if kind == "local":
        return LocalRunner()
    if kind == "docker":
        from tasks.adapters.docker_engine import DockerRunner  # the docker SDK only when it is used

        c = container or ContainerParams()
        if not c.image:
            raise RunnerError(
                "runner.kind is docker but container.image is not set (valid form: name:tag or name@sha256:...)"
            )
        return DockerRunner(
            c.image,
            gpus=str(c.gpus),
            shm_size=c.shm_size,
            ipc=c.ipc or None,
            require_digest=c.require_digest,
            pull=c.pull,
        )
    raise RunnerError(f"runner.kind {kind!r} is not available; valid: local, docker")
