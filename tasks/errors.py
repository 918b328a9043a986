"""The one exception tree of trainyard.

Every error a user can cause or meet derives from :class:`TrainyardError`, so the CLI
can print its message on one line and exit non-zero without a traceback, while real
bugs (anything else) still show their traceback.

    TrainyardError
    ├── ParamsError          params.yaml or a --set override is malformed
    ├── UsageError           a command-line argument names something that is not there
    ├── DatasetError         the dataset is missing or broken (validation problems)
    ├── DataSourceError      the data source cannot be read or staged
    │   └── TransientSourceError   ... for a reason a later retry may not meet
    ├── VersioningError      DVC / git could not answer (hashes, dvc add)
    ├── TrackingError        the MLflow tracking server or store failed
    ├── PreflightError       a required `trainyard doctor` check failed before anything ran
    ├── RunnerError          the training child process (or container) could not run
    │   └── TrainingError    training started but failed (non-zero exit, OOM, ...)
    ├── DeploymentError      prefect.yaml, a work-pool template or a rendered job manifest is invalid
    └── SweepError           a sweep's study database, work pool or deployment is unusable

    Interrupted (a KeyboardInterrupt, not a TrainyardError)   SIGINT or SIGTERM stopped the work

Exit codes, the same for every command (README "Exit codes"; ``EXIT_CODES`` below).
"""

from __future__ import annotations


# code -> meaning: the one table the README prints and every command follows.
EXIT_CODES: dict[int, str] = {
    0: "success (reproduce: identical or within tolerance)",
    1: "unexpected error: a bug; the traceback is in the log file named on the terminal",
    2: "bad params.yaml / --set / prefect.yaml / work-pool template, or bad command-line usage",
    3: "data: the source is missing or unreadable, the dataset is invalid, or a DVC/git version is unavailable",
    4: "tracking: the MLflow server or store is unreachable or refused a write (`trainyard sync` finishes later)",
    5: "training: the training process or container failed or could not start",
    6: "environment: Docker, the GPU runtime, the training image or stage.root is not ready (`trainyard doctor`)",
    7: "reproduce: the reproduction differs from the original run",
    8: "sweep: the study's database, work pool or deployment is unusable, or every trial failed",
    130: "interrupted by Ctrl-C (SIGINT); the MLflow run is marked KILLED and resumes on the next run",
    143: "stopped by SIGTERM; the MLflow run is marked KILLED and resumes on the next run",
}


class TrainyardError(Exception):
    """Base class: a problem the user can act on; the message says what and where."""

    exit_code: int = 1
    transient: bool = False  # True when the same call may succeed a moment later

    def __init__(self, *args: object) -> None:
        # One place for it: no error a user sees, logs or records carries a URL's password
        # (MLflow and requests put the full URL into their messages).
        from tasks.redact import redact

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ParamsError(TrainyardError):
    """params.yaml or an override names an unknown key or holds a value of the wrong type."""

    exit_code = 2


class UsageError(TrainyardError):
    """A command-line argument is wrong (a run directory without results, a bad --limit)."""

    exit_code = 2


class DatasetError(TrainyardError):
    """The dataset failed validation; ``problems`` holds every finding, not just the first."""

    exit_code = 3

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems or [])


class DataSourceError(TrainyardError):
    """The data source (local/NAS path, later S3 or DVC) could not be read or staged."""

    exit_code = 3


class TransientSourceError(DataSourceError):
    """The source failed in a way that may pass on a retry (server restarting, timeouts)."""

    transient = True


class VersioningError(TrainyardError):
    """git or DVC could not give the answer we need (commit, dataset hash, dvc add)."""

    exit_code = 3


class TrackingError(TrainyardError):
    """The MLflow tracking store could not be reached or refused a write.

    ``transient``: the server could not be reached (it may be back in a moment); a refusal
    (a run that does not exist, a deleted experiment) is not.
    """

    exit_code = 4

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class PreflightError(TrainyardError):
    """A required preflight check (Docker, GPU runtime, image, MLflow, data source) failed."""

    exit_code = 6


class RunnerError(TrainyardError):
    """The training process or container could not be started."""

    exit_code = 5


class TrainingError(RunnerError):
    """Training started but did not finish successfully.

    ``killed``: the process or container was killed (a signal, the OOM killer), not a Python
    error; ``out_of_memory``: it was a container's memory limit (OOMKilled); ``resumable``: set
    by the flow when a retry can resume from the run's last.pt.
    """

    def __init__(self, message: str, killed: bool = False, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.killed = killed
        self.out_of_memory = out_of_memory
        self.resumable = False


class DeploymentError(TrainyardError):
    """A deployment definition (prefect.yaml, a work-pool job template, a rendered manifest) is invalid."""

    exit_code = 2


class SweepError(TrainyardError):
    """A sweep cannot go on: its study's database is unreachable or belongs to another search, or a
    trial's work pool or deployment is missing."""

    exit_code = 8


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM: stop the training, mark its MLflow run KILLED, exit 130 / 143.

    A KeyboardInterrupt, so everything that already cleans up after Ctrl-C (the runners stop
    their child or container, the MLflow run is ended) does the same for SIGTERM.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interruption_signal(exc: BaseException) -> str | None:
    """ "SIGINT" / "SIGTERM" when ``exc`` is an interruption rather than a failure, else None.

    Ctrl-C arrives as KeyboardInterrupt (or our :class:`Interrupted`); under a Prefect flow,
    SIGTERM arrives as Prefect's ``TerminationSignal`` (matched by name: tasks/ does not import Prefect).
    """
    if isinstance(exc, Interrupted):
        return exc.signal_name
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    if type(exc).__name__ == "TerminationSignal":
        return "SIGTERM"
    return None
