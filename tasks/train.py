"""Ultralytics seam: the one module that imports ultralytics.

It runs inside the training process (a child of the flow, or a container), never in the
flow itself: a crash, OOM or CUDA error then kills the child, not the orchestration, and
the Docker runner can run the very same entry point (``python -m tasks.train JOB.json``).

Tracking: Ultralytics switches on its own MLflow callback whenever mlflow is installed
and the user's Ultralytics settings allow it; that callback opens its own run in its own
experiment (named after ``project``), logs params that clash with ours and ends the
active run. We remove it (and the other third-party integrations) from the trainer and
log each epoch ourselves into the run the flow created, so there is exactly one run.
We do this per trainer instead of flipping Ultralytics' settings, because settings are
persisted in the user's home and would change their other projects.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

# Ultralytics' callback modules whose callbacks trainyard removes from its trainers.
_FOREIGN_CALLBACK_MODULES = (
    "ultralytics.utils.callbacks.mlflow",
    "ultralytics.utils.callbacks.clearml",
    "ultralytics.utils.callbacks.comet",
    "ultralytics.utils.callbacks.dvc",
    "ultralytics.utils.callbacks.neptune",
    "ultralytics.utils.callbacks.raytune",
    "ultralytics.utils.callbacks.tensorboard",
    "ultralytics.utils.callbacks.wb",
    "ultralytics.utils.callbacks.platform",
    "ultralytics.utils.callbacks.hub",
    "ultralytics.utils.events",
)

OUTCOME_FILE = "outcome.json"
JOB_FILE = "job.json"


@dataclass(frozen=True)
class TrainJob:
    """Everything the training process needs; written as JSON so a container can read it."""

    run_dir: str  # output directory: weights/, results.csv, plots, outcome.json
    data_yaml: str  # the staged dataset's data.yaml
    args: dict[str, Any] = field(default_factory=dict)  # Ultralytics train arguments, verbatim
    stop_after: int | None = None  # stop after this many epochs, keeping the schedule of args["epochs"]

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, path: Path) -> "TrainJob":
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class TrainOutcome:
    """What the training process reports back through outcome.json."""

    epochs: int
    best: str | None
    last: str | None
    final_metrics: dict[str, float]  # the final validation of best.pt, Ultralytics' keys
    runtime: dict[str, Any] = field(default_factory=dict)  # where it ran: uid, container, data mount

    @classmethod
    def read(cls, run_dir: Path) -> "TrainOutcome | None":
        path = run_dir / OUTCOME_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def prepare_run_dir(path: Path) -> Path:
    """Create ``path`` empty. An earlier trainyard run there is cleared (Ultralytics appends to
    an existing results.csv, which would mix two runs); any other non-empty folder is refused.
    """
    if path.exists() and any(path.iterdir()):
        if not (path / JOB_FILE).exists() and not (path / "results.csv").exists():
            from tasks.errors import RunnerError

            raise RunnerError(f"run directory {path} is not empty and holds no earlier trainyard run; choose another")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


EpochCallback = Callable[[int, dict[str, float]], None]


def train_yolo(job: TrainJob, on_epoch: EpochCallback | None = None) -> TrainOutcome:
    """Train with Ultralytics; call ``on_epoch(epoch, metrics)`` once per finished epoch (1-based)."""
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect import DetectionTrainer

    run_dir = Path(job.run_dir)
    args = dict(job.args)
    model_ref = args.pop("model")
    logged: set[int] = set()

    class TrainyardTrainer(DetectionTrainer):  # type: ignore[misc]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            _strip_foreign_callbacks(self.callbacks)
            self.trainyard_final_eval = False
            self.add_callback("on_fit_epoch_end", _epoch_hook)

        def final_eval(self) -> None:
            # Ultralytics re-fires on_fit_epoch_end for the validation of best.pt, as a fake
            # epoch N+1; those numbers are the run's final metrics, not an epoch.
            self.trainyard_final_eval = True
            super().final_eval()

    def _epoch_hook(trainer: Any) -> None:
        epoch = int(trainer.epoch) + 1
        if trainer.trainyard_final_eval or epoch in logged:
            return
        logged.add(epoch)
        metrics = {
            **trainer.label_loss_items(trainer.tloss, prefix="train"),
            **trainer.metrics,
            **trainer.lr,
        }
        metrics.pop("fitness", None)
        if job.stop_after is not None and epoch >= job.stop_after:
            # A replay of the first N epochs must keep the LR schedule of the full run, so
            # `epochs` stays as recorded and training stops here instead.
            trainer.stop = True
        if on_epoch is None:
            return
        try:
            on_epoch(epoch, {k: float(v) for k, v in metrics.items()})
        except Exception as exc:  # tracking must never kill a training; the flow backfills
            warnings.warn(f"trainyard: could not log epoch {epoch}: {exc}", stacklevel=1)

    model = YOLO(model_ref)
    model.train(
        trainer=TrainyardTrainer,
        data=job.data_yaml,
        project=str(run_dir.parent),
        name=run_dir.name,
        exist_ok=True,
        **args,
    )
    trainer = model.trainer
    final = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    outcome = TrainOutcome(
        epochs=len(logged) or int(trainer.epoch) + 1,
        best=str(trainer.best) if Path(trainer.best).exists() else None,
        last=str(trainer.last) if Path(trainer.last).exists() else None,
        final_metrics=final,
        runtime=runtime_facts(job),
    )
    (run_dir / OUTCOME_FILE).write_text(json.dumps(asdict(outcome), indent=2))
    return outcome


def data_root(data_yaml: Path) -> Path:
    """The dataset folder a training data.yaml points at (its ``path:``, else its own folder)."""
    import yaml

    return Path((yaml.safe_load(data_yaml.read_text()) or {}).get("path") or data_yaml.parent)


def runtime_facts(job: TrainJob) -> dict[str, Any]:
    """Where the training ran, for the record (and for proving a container's isolation)."""
    import tempfile

    root = data_root(Path(job.data_yaml))
    try:
        with tempfile.TemporaryFile(dir=root):
            data_writable = True
    except OSError:
        data_writable = False
    return {
        "uid": os.getuid(),
        "in_container": Path("/.dockerenv").exists(),
        "data_dir": str(root),
        "data_dir_writable": data_writable,
    }


def _strip_foreign_callbacks(callbacks: dict[str, list[Callable[..., Any]]]) -> None:
    for event, funcs in callbacks.items():
        callbacks[event] = [f for f in funcs if getattr(f, "__module__", "") not in _FOREIGN_CALLBACK_MODULES]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the training process: ``python -m tasks.train RUN_DIR/job.json``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m tasks.train JOB.json", file=sys.stderr)
        return 2
    job = TrainJob.read(Path(argv[0]))
    on_epoch: EpochCallback | None = None
    run_id = os.environ.get("MLFLOW_RUN_ID")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if run_id and uri:
        from tasks.track import Tracker

        tracker = Tracker(uri)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            tracker.log_metrics(run_id, metrics, step=epoch)

    train_yolo(job, on_epoch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
