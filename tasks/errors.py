"""The one exception tree of trainyard.

Every error a user can cause or meet derives from :class:`TrainyardError`, so the CLI
can print its message on one line and exit non-zero without a traceback, while real
bugs (anything else) still show their traceback.

    TrainyardError
    ├── ParamsError          params.yaml or a --set override is malformed
    ├── DatasetError         the dataset is missing or broken (validation problems)
    ├── DataSourceError      the data source cannot be read or staged
    │   └── TransientSourceError   ... for a reason a later retry may not meet
    ├── VersioningError      DVC / git could not answer (hashes, dvc add)
    ├── TrackingError        the MLflow tracking server or store failed
    ├── PreflightError       a required `trainyard doctor` check failed before anything ran
    ├── RunnerError          the training child process (or container) could not run
    │   └── TrainingError    training started but failed (non-zero exit, OOM, ...)
    └── DeploymentError      prefect.yaml, a work-pool template or a rendered job manifest is invalid
"""

from __future__ import annotations


class TrainyardError(Exception):
    """Base class: a problem the user can act on; the message says what and where."""

    exit_code: int = 1
    transient: bool = False  # True when the same call may succeed a moment later


class ParamsError(TrainyardError):
    """params.yaml or an override names an unknown key or holds a value of the wrong type."""

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


class TrackingError(TrainyardError):
    """The MLflow tracking store could not be reached or refused a write."""

    exit_code = 4


class PreflightError(TrainyardError):
    """A required preflight check (Docker, GPU runtime, image, MLflow, data source) failed."""

    exit_code = 6


class RunnerError(TrainyardError):
    """The training process or container could not be started."""

    exit_code = 5


class TrainingError(RunnerError):
    """Training started but did not finish successfully.

    ``killed``: the process or container was killed (a signal, the OOM killer), not a Python
    error; ``resumable``: set by the flow when a retry can resume from the run's last.pt.
    """

    def __init__(self, message: str, killed: bool = False) -> None:
        super().__init__(message)
        self.killed = killed
        self.resumable = False


class DeploymentError(TrainyardError):
    """A deployment definition (prefect.yaml, a work-pool job template, a rendered manifest) is invalid."""

    exit_code = 2
