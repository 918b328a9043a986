"""The runner seam: where and how the training process runs.

A runner takes a :class:`~tasks.job.TrainJob` plus the environment variables that
connect it to the flow's MLflow run, runs ``python -m tasks.adapters.ultralytics_trainer job.json`` somewhere,
streams its output, and raises :class:`TrainingError` if it fails. The local runner uses
a child process of the current interpreter; the Docker runner (its own module) runs the
same command in a container started by image digest, behind the same interface.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Protocol

from tasks.adapters.torch_environment import Environment, local_environment
from tasks.errors import RunnerError, TrainingError
from tasks.job import JOB_FILE, TrainJob
from tasks.params import ContainerParams
from tasks.training_output import LogSink, last_frame, last_lines, training_env

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


class LocalRunner:
    """Trains in a child process of this interpreter (no Docker needed)."""

    kind = "local"

    def __init__(self, python: str = sys.executable, interactive: bool | None = None) -> None:
        self.python = python
        # In a terminal the child inherits it, so Ultralytics' progress bars render; in CI or
        # under a Prefect worker the output is captured line by line and sent to the logger.
        self.interactive = _is_terminal() if interactive is None else interactive
        self._environment: Environment | None = None

    def environment(self) -> Environment:
        if self._environment is None:
            self._environment = local_environment(self.python)
        return self._environment

    def run(self, job: TrainJob, env: Mapping[str, str], log: LogSink) -> None:
        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        job_path = job.write(run_dir / JOB_FILE)
        child_env = {**os.environ, **training_env(), **env}
        cmd = [self.python, "-m", "tasks.adapters.ultralytics_trainer", str(job_path)]
        tail: collections.deque[str] = collections.deque(maxlen=30)
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=str(_project_root()),
                env=child_env,
                stdout=None if self.interactive else subprocess.PIPE,
                stderr=None if self.interactive else subprocess.STDOUT,
            )
        except OSError as exc:
            raise RunnerError(f"could not start the training process {self.python}: {exc.strerror}") from None
        try:
            if proc.stdout is not None:
                for raw in proc.stdout:  # bytes: text mode would turn every \r redraw into a line
                    line = last_frame(raw.decode("utf-8", errors="replace"))
                    if line:
                        tail.append(line)
                        log(line)
            code = proc.wait()
        except BaseException:
            # Ctrl-C or a cancelled flow: stop the child, never leave it training on its own.
            _stop(proc)
            raise
        if code != 0:
            raise TrainingError(_failure_message(code, list(tail), run_dir), killed=code < 0 or code in _KILLED)


def _failure_message(code: int, tail: list[str], run_dir: Path) -> str:
    if code in _KILLED:
        why = "was killed (SIGKILL) - most often the out-of-memory killer; lower train.batch or train.imgsz"
    elif code < 0:
        why = f"was stopped by signal {-code}"
    else:
        why = f"exited with code {code}"
    return f"training process {why}; output in {run_dir}{last_lines(tail)}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
