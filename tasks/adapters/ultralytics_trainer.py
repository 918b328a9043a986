"""Ultralytics seam: the one module that imports ultralytics.

It runs inside the training process (a child of the flow, or a container), never in the
flow itself: a crash, OOM or CUDA error then kills the child, not the orchestration, and
the Docker runner can run the very same entry point (``python -m tasks.adapters.ultralytics_trainer JOB.json``).

Tracking: Ultralytics switches on its own MLflow callback whenever mlflow is installed
and the user's Ultralytics settings allow it; that callback opens its own run in its own
experiment (named after ``project``), logs params that clash with ours and ends the
active run. We remove it (and the other third-party integrations) from the trainer; the
flow logs each epoch into the run it created, so there is exactly one run. This process never
imports mlflow (seconds of start-up): it appends each epoch to ``epochs.jsonl`` in the run
directory, exactly (results.csv rounds to 6 digits), and the flow follows that file.
We do this per trainer instead of flipping Ultralytics' settings: a user who points
$YOLO_CONFIG_DIR at their own settings keeps them, and settings persist across projects.

Multi-GPU: with ``device: "0,1"`` Ultralytics trains in fresh interpreters started by
``torch.distributed.run``, which rebuild the trainer from its class (pickled by reference)
and its ``args``; nothing of this process's memory reaches them. So the trainer is a
module-level class that finds its job through $TRAINYARD_JOB, the same way in one process
or in a DDP worker; only rank 0 writes epochs.

Resume: a killed training continues from ``weights/last.pt`` with Ultralytics' own resume.
Per epoch Ultralytics appends the results.csv row, then saves last.pt, then fires
``on_fit_epoch_end`` (where we append to epochs.jsonl). So every epoch the file (and MLflow)
holds is in last.pt, and resuming never logs an epoch twice; a row written after the last checkpoint is cut
from results.csv before resuming, because that epoch is trained again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from tasks.job import (
    EPOCHS_FILE,
    JOB_ENV,
    JOB_FILE,
    LAST,
    OUTCOME_FILE,
    PARTIAL_SUFFIX,
    STOP_FILE,
    OutOfMemory,
    TrainJob,
    WAIT_FLAG,
    TrainOutcome,
    append_epoch,
    data_root,
    resumable_checkpoint,
    resume_point,
    trim_results,
)

if TYPE_CHECKING:  # ultralytics costs seconds to import; only the training process needs it
    from ultralytics.models.yolo.detect import DetectionTrainer

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

# Train arguments Ultralytics takes from the caller on resume (BaseTrainer.check_resume);
# every other one comes from the checkpoint, so the schedule is the interrupted one.
_RESUME_OVERRIDES = frozenset(
    {
        "imgsz",
        "batch",
        "device",
        "close_mosaic",
        "augmentations",
        "save_period",
        "workers",
        "cache",
        "patience",
        "time",
        "freeze",
        "val",
        "plots",
        "channels_last",
        "distill_model",
    }
)


def train_yolo(job: TrainJob, job_path: Path | None = None) -> TrainOutcome:
    """Train (or, with ``job.resume``, continue) with Ultralytics; return what outcome.json says.

    ``job_path`` is the job.json ``job`` was read from (DDP workers read it too); without
    one it is written to the run directory. Each finished epoch is appended to the run
    directory's epochs.jsonl (epoch 1-based), from whichever process trains.
    """
    from tasks.errors import TrainingError

    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Not rewritten when given: in a container the runner's job.json belongs to the host user.
    job_path = job_path or job.write(run_dir / JOB_FILE)
    (run_dir / OUTCOME_FILE).unlink(missing_ok=True)
    for stale in (run_dir / "weights").glob(f"*{PARTIAL_SUFFIX}"):
        stale.unlink()
    if not job.resume:  # a training from scratch: an earlier attempt's epochs are not this one's
        (run_dir / EPOCHS_FILE).unlink(missing_ok=True)
    args = dict(job.args)
    model_ref = args.pop("model")
    if job.resume:
        ckpt = resumable_checkpoint(run_dir / LAST)
        if ckpt is None:
            raise TrainingError(
                f"cannot resume the training in {run_dir}: {LAST} is missing, unreadable, or "
                "from a training that finished; start a new run"
            )
        done = int(ckpt["epoch"]) + 1
        train_args = ckpt.get("train_args") or {}
        trim_results(run_dir / "results.csv", done)
        planned = int(train_args.get("epochs") or args.get("epochs") or 0)
        if done >= min(planned, job.stop_after or planned):
            return _finish_trained(job, ckpt, done)
        del ckpt
        saved_to = Path(str(train_args.get("save_dir") or run_dir))
        if saved_to.resolve() != run_dir.resolve():  # Ultralytics would carry on writing there
            raise TrainingError(f"cannot resume the training in {run_dir}: its {LAST} belongs to {saved_to}")
        model_ref = str(run_dir / LAST)
        kwargs: dict[str, Any] = {
            "resume": True,
            "data": job.data_yaml,
            **{k: v for k, v in args.items() if k in _RESUME_OVERRIDES},
        }
    else:
        kwargs = {"data": job.data_yaml, "project": str(run_dir.parent), "name": run_dir.name, "exist_ok": True, **args}
    _amp_check_never_downloads()
    from ultralytics import YOLO

    with _environ(JOB_ENV, str(job_path)):
        model = YOLO(model_ref)
        try:
            model.train(trainer=trainer_class(), **kwargs)
        except BatchSwitch:
            return train_yolo(*_switched(job))
        except BaseException as exc:
            if _out_of_memory(exc) and _is_main_rank():
                _record_oom(job, getattr(model, "trainer", None), exc)
            raise
    outcome = TrainOutcome.read(run_dir)
    if outcome is None:
        raise TrainingError(f"the training in {run_dir} ended without writing {OUTCOME_FILE}")
    return outcome


class BatchSwitch(Exception):
    """Raised as an epoch of ``job.batch_schedule`` starts: the replay of an out-of-memory recovery.

    The training stops where the recovered one ran out of memory and resumes from last.pt with
    the smaller batch, as the recovery did (same checkpoint, same resume), so a reproduction
    trains what the original trained.
    """


def _switched(job: TrainJob) -> tuple[TrainJob, Path]:
    """The job that resumes after a :class:`BatchSwitch`, written beside the first one."""
    (_epoch, batch), rest = job.batch_schedule[0], job.batch_schedule[1:]
    done = resume_point(Path(job.run_dir)) or 0
    switched = replace(
        job,
        resume=True,
        args={**job.args, "batch": batch},
        batch_schedule=rest,
        logged_through=max(done, job.logged_through),
    )
    return switched, switched.write(Path(job.run_dir) / f"job-batch-{batch}.json")


def _out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory, as torch raises it or as its text says."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc)
    return "out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text


def _record_oom(job: TrainJob, trainer: Any, exc: BaseException) -> None:
    """Leave the epoch and batch of an out-of-memory in the run directory: the flow's retry halves the batch."""
    run_dir = Path(job.run_dir)
    epoch = int(getattr(trainer, "epoch", -1)) + 1 if trainer is not None else 0
    if epoch <= 0:
        epoch = (resume_point(run_dir) or 0) + 1
    batch = getattr(trainer, "batch_size", None) or job.args.get("batch")
    if not isinstance(batch, int) or batch < 1:
        return  # an automatic batch (-1 or a memory fraction) the training had not settled yet
    what = " ".join(str(exc).split())[:300] or type(exc).__name__
    OutOfMemory(epoch=epoch, batch=batch, what=what).write(run_dir)


def trainer_class() -> type["DetectionTrainer"]:
    """``TrainyardTrainer``: built on first use, so importing this module does not import ultralytics."""
    cls = globals().get("TrainyardTrainer")
    if cls is None:
        cls = globals()["TrainyardTrainer"] = _build_trainer_class()
    return cls


def __getattr__(name: str) -> Any:
    # PEP 562: `tasks.adapters.ultralytics_trainer.TrainyardTrainer` resolves like a module-level class, which is how a
    # DDP worker finds it when it unpickles the trainer class by reference.
    if name == "TrainyardTrainer":
        return trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_trainer_class() -> type["DetectionTrainer"]:
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import DEFAULT_CFG

    _amp_check_never_downloads()  # also here: a DDP worker (its rank 0 checks AMP) starts with this class

    class TrainyardTrainer(DetectionTrainer):
        """Ultralytics' detection trainer with one MLflow run, atomic checkpoints and ``stop_after``."""

        def __init__(
            self,
            cfg: Any = DEFAULT_CFG,
            overrides: dict[str, Any] | None = None,
            _callbacks: dict[str, list[Callable[..., Any]]] | None = None,
        ) -> None:
            self.trainyard_job = _job_from_env()
            self.trainyard_logged: set[int] = set()
            self.trainyard_final_eval = False
            super().__init__(cfg, overrides, _callbacks)
            _strip_foreign_callbacks(self.callbacks)
            for event, hook in (("on_fit_epoch_end", _log_epoch), ("on_train_end", _write_outcome)):
                if hook not in self.callbacks[event]:  # a DDP worker gets them with the pickled callbacks
                    self.add_callback(event, hook)

        def run_callbacks(self, event: str) -> None:
            # Integrations are added inside Ultralytics' own __init__ (and again in each DDP
            # worker), which already fires on_pretrain_routine_start: strip them before any event.
            _strip_foreign_callbacks(self.callbacks)
            schedule = self.trainyard_job.batch_schedule
            if event == "on_train_epoch_start" and schedule and not self.ddp:
                # the epoch a recovery resumed at, reached by training (not by resuming at it)
                if self.epoch + 1 == schedule[0][0] and self.epoch > self.start_epoch:
                    raise BatchSwitch(f"epoch {self.epoch + 1}: batch {self.batch_size} -> {schedule[0][1]}")
            super().run_callbacks(event)

        def train(self) -> None:
            if not self.ddp or self.resume:
                super().train()
                return
            # Ultralytics empties save_dir before a DDP launch unless it resumes; ours already
            # holds job.json and data.yaml (and is a bind mount in a container, which rmtree
            # cannot remove). prepare_run_dir gave us a clean one.
            self.resume = True
            try:
                super().train()
            finally:
                self.resume = False

        def save_model(self) -> bool:
            # Ultralytics overwrites last.pt in place: a kill mid-write would leave neither the
            # old checkpoint nor the new one. Write beside it and rename (atomic); best.pt first,
            # so last.pt never names an epoch whose best.pt update was lost.
            last, best = self.last, self.best
            self.last, self.best = (
                last.with_name(last.name + PARTIAL_SUFFIX),
                best.with_name(best.name + PARTIAL_SUFFIX),
            )
            try:
                saved = bool(super().save_model())
                for part, final in ((self.best, best), (self.last, last)):
                    if part.exists():
                        os.replace(part, final)
            finally:
                for part in (self.best, self.last):
                    part.unlink(missing_ok=True)
                self.last, self.best = last, best
            return saved

        def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train") -> Any:
            loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
            return BatchClock(loader) if mode == "train" else loader

        def final_eval(self) -> None:
            # Ultralytics re-fires on_fit_epoch_end for the validation of best.pt, as a fake
            # epoch N+1; those numbers are the run's final metrics, not an epoch.
            self.trainyard_final_eval = True
            super().final_eval()

    TrainyardTrainer.__module__ = __name__
    TrainyardTrainer.__qualname__ = "TrainyardTrainer"
    return TrainyardTrainer


def _job_from_env() -> TrainJob:
    path = os.environ.get(JOB_ENV)
    if not path:
        from tasks.errors import RunnerError

        raise RunnerError(
            f"${JOB_ENV} is not set: the trainyard trainer needs the job.json it trains "
            "(run `python -m tasks.adapters.ultralytics_trainer JOB.json`)"
        )
    return TrainJob.read(Path(path))


def _is_main_rank() -> bool:
    # torch.distributed.run gives each DDP worker RANK and WORLD_SIZE (read as Ultralytics reads
    # them); only rank 0 holds the epoch's metrics
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "-1") in ("-1", "0")


def _log_epoch(trainer: Any) -> None:
    job: TrainJob = trainer.trainyard_job
    epoch = int(trainer.epoch) + 1
    if trainer.trainyard_final_eval or not _is_main_rank():
        return
    if job.stop_after is not None and epoch >= job.stop_after:
        # A replay of the first N epochs must keep the LR schedule of the full run, so
        # `epochs` stays as recorded and training stops here instead (rank 0 broadcasts it).
        trainer.stop = True
    if (Path(job.run_dir) / STOP_FILE).exists():  # a sweep pruned this trial (rank 0 broadcasts it too)
        trainer.stop = True
    if epoch in trainer.trainyard_logged or epoch <= job.logged_through:
        return
    trainer.trainyard_logged.add(epoch)
    metrics = {
        **trainer.label_loss_items(trainer.tloss, prefix="train"),
        **(trainer.metrics or {}),
        **trainer.lr,
    }
    metrics.pop("fitness", None)
    clock = getattr(trainer, "train_loader", None)
    if isinstance(clock, BatchClock):
        metrics.update(clock.epoch_metrics())
    try:
        append_epoch(Path(job.run_dir), epoch, {k: float(v) for k, v in metrics.items()})
    except (OSError, TypeError, ValueError) as exc:  # never kills a training: the flow backfills from results.csv
        warnings.warn(f"trainyard: could not record epoch {epoch}: {exc}", stacklevel=1)


def _write_outcome(trainer: Any) -> None:
    job: TrainJob = trainer.trainyard_job
    outcome = TrainOutcome(
        epochs=int(trainer.epoch) + 1,
        best=str(trainer.best) if Path(trainer.best).exists() else None,
        last=str(trainer.last) if Path(trainer.last).exists() else None,
        final_metrics={k: float(v) for k, v in (trainer.metrics or {}).items()},
        runtime={**runtime_facts(job), **_loader_facts(trainer)},
    )
    (Path(job.run_dir) / OUTCOME_FILE).write_text(json.dumps(asdict(outcome), indent=2))


def _loader_facts(trainer: Any) -> dict[str, Any]:
    """The data loader's settings as they were in effect (Ultralytics may lower ``workers``)."""
    loader = getattr(trainer, "train_loader", None)
    facts: dict[str, Any] = {"cache": str(getattr(trainer.args, "cache", ""))}
    if loader is not None and hasattr(loader, "num_workers"):
        facts["workers"] = int(loader.num_workers)
    return facts


class BatchClock:
    """The training data loader, timed: how long the training loop waited in ``next()`` for each batch.

    Everything else is the wrapped loader's (``reset``, ``close``, ``dataset``, ``sampler``,
    ``num_workers``, ``len``): Ultralytics uses it as it would the loader itself. Figures are
    per pass over the loader, i.e. per epoch, and read by ``_log_epoch`` after the pass.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.wait_s = self.loop_s = 0.0
        self.images = 0

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (copy/unpickle): never recurse
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        clock = time.perf_counter
        self.wait_s = self.loop_s = 0.0
        self.images = 0
        batches = iter(self.loader)
        start = clock()
        while True:
            asked = clock()
            self.loop_s = asked - start  # also right when the loop stops early (time limit, stop)
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.wait_s += clock() - asked
            self.images += _batch_images(batch)
            yield batch

    def epoch_metrics(self) -> dict[str, float]:
        if self.loop_s <= 0.0:
            return {}
        return {
            "perf/data_wait_s": self.wait_s,
            "perf/train_loop_s": self.loop_s,
            "perf/data_wait_pct": 100.0 * self.wait_s / self.loop_s,
            "perf/images_per_s": self.images / self.loop_s,
        }


def _batch_images(batch: Any) -> int:
    images = batch.get("img") if isinstance(batch, dict) else None
    try:
        return len(images) if images is not None else 0
    except TypeError:
        return 0


def _finish_trained(job: TrainJob, ckpt: dict[str, Any], epochs: int) -> TrainOutcome:
    """Every epoch is in last.pt: the kill came during Ultralytics' closing steps. Do those.

    Validate best.pt as Ultralytics' final_eval does, record the outcome, and only then strip
    the optimizer from the checkpoints, so a kill on the way still finds last.pt resumable.
    """
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import strip_optimizer

    run_dir = Path(job.run_dir)
    weights = run_dir / "weights"
    best = weights / "best.pt"
    train_args = dict(ckpt.get("train_args") or {})
    batch = train_args.get("batch", 16)
    results = YOLO(str(best if best.exists() else weights / "last.pt")).val(
        data=job.data_yaml,
        imgsz=train_args.get("imgsz", 640),
        batch=batch * 2 if batch >= 1 else 16,
        device=_first_device(job.args.get("device", train_args.get("device"))),
        plots=bool(train_args.get("plots", True)),
        project=str(run_dir.parent),
        name=run_dir.name,
        exist_ok=True,
    )
    outcome = TrainOutcome(
        epochs=epochs,
        best=str(best) if best.exists() else None,
        last=str(weights / "last.pt"),
        final_metrics={k: float(v) for k, v in results.results_dict.items() if k != "fitness"},
        runtime=runtime_facts(job),
    )
    (run_dir / OUTCOME_FILE).write_text(json.dumps(asdict(outcome), indent=2))
    for path in (best, weights / "last.pt"):
        if path.exists():
            part = path.with_name(path.name + PARTIAL_SUFFIX)
            strip_optimizer(path, str(part))
            os.replace(part, path)
    return outcome


def _first_device(device: Any) -> Any:
    # validation runs on one device; "0,1" / [0, 1] would ask Ultralytics for a DDP validation
    if isinstance(device, (list, tuple)):
        return device[0] if device else None
    if isinstance(device, str) and "," in device:
        return device.split(",")[0].strip()
    return device


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
        "data_fs": _filesystem_of(root),
    }


def _filesystem_of(path: Path) -> str:
    """The filesystem type ``path`` is on, as this process sees it (/proc/self/mounts; "" where unknown)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    target = str(path.resolve())
    best, kind = "", ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind


def _strip_foreign_callbacks(callbacks: dict[str, list[Callable[..., Any]]]) -> None:
    for event, funcs in callbacks.items():
        callbacks[event] = [f for f in funcs if getattr(f, "__module__", "") not in _FOREIGN_CALLBACK_MODULES]


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _amp_check_never_downloads() -> None:
    """Make Ultralytics' AMP check (this process only) load its model from disk or not at all.

    On a GPU ``check_amp`` compares FP32 with AMP results of a small model (yolo26n.pt in
    WEIGHTS_DIR), downloading it when missing, YOLO_OFFLINE=1 or not, and takes a
    ConnectionError as "offline": AMP on. So the check keeps all it decides before (off on
    CPU/MPS and on GPUs known to fail) and runs in full when the model is on disk; otherwise
    its model loader raises that ConnectionError without trying the network. Idempotent.
    """
    import ultralytics
    import ultralytics.engine.trainer as engine
    from ultralytics.utils import LOGGER

    check_amp = engine.check_amp
    if getattr(check_amp, "trainyard_offline", False):
        return

    def offline_check_amp(model: Any) -> bool:
        from ultralytics.utils import WEIGHTS_DIR  # where check_amp looks, read as it reads it

        real_yolo = ultralytics.YOLO
        before = vars(ultralytics).get("YOLO")  # absent: Ultralytics imports its models lazily

        def yolo_from_disk(weights: Any, *args: Any, **kwargs: Any) -> Any:
            for path in (Path(weights), Path(WEIGHTS_DIR) / Path(weights).name):
                if path.is_file():
                    return real_yolo(str(path), *args, **kwargs)
            LOGGER.info(
                f"AMP: check skipped, {Path(weights).name} not downloaded: trainyard never downloads weights "
                f"(put it in {WEIGHTS_DIR} for the full check); AMP stays on"
            )
            raise ConnectionError(f"{Path(weights).name} is not on disk")

        vars(ultralytics)["YOLO"] = yolo_from_disk  # check_amp does `from ultralytics import YOLO`
        try:
            return bool(check_amp(model))
        finally:
            if before is None:
                vars(ultralytics).pop("YOLO", None)
            else:
                vars(ultralytics)["YOLO"] = before

    offline_check_amp.trainyard_offline = True  # type: ignore[attr-defined]
    engine.check_amp = offline_check_amp


WAIT_SECONDS = 300.0  # a process started ahead that gets no job in this long exits (the flow went another way)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the training process: ``python -m tasks.adapters.ultralytics_trainer RUN_DIR/job.json``,
    or ``... --wait`` to import torch and Ultralytics first and read the job's path from stdin."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == [WAIT_FLAG]:
        return _wait_for_job()
    if len(argv) != 1:
        print("usage: python -m tasks.adapters.ultralytics_trainer JOB.json", file=sys.stderr)
        return 2
    job_path = Path(argv[0]).resolve()
    train_yolo(TrainJob.read(job_path), job_path)
    return 0


def _wait_for_job() -> int:
    """Pay the training's start-up (torch, Ultralytics: about 3 s of CPU) while the flow still opens its
    MLflow run, then train the job named on stdin; end quietly on EOF or after WAIT_SECONDS without one."""
    import select

    _amp_check_never_downloads()  # imports Ultralytics' trainer, and torch with it
    import ultralytics.models.yolo.detect  # noqa: F401 - what the training imports next, before the job is known

    ready, _, _ = select.select([sys.stdin], [], [], WAIT_SECONDS)
    line = sys.stdin.readline().strip() if ready else ""
    return main([line]) if line else 0


if __name__ == "__main__":
    # Run as the importable `tasks.adapters.ultralytics_trainer`, not as `__main__`: DDP workers unpickle the trainer
    # class and its callbacks by their module's name.
    from tasks.adapters.ultralytics_trainer import main as _main

    sys.exit(_main())
