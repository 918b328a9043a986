"""The training job and what it leaves in its run directory: plain data, no third-party imports.

A job is written as ``job.json`` into the run directory and read by the training process
(``python -m tasks.adapters.ultralytics_trainer JOB.json``), in a child process or a container.
The run directory then holds ``results.csv``, ``epochs.jsonl``, ``weights/last.pt`` and
``best.pt`` and ``outcome.json``; the helpers here read those (a checkpoint without torch), decide whether a
killed training can resume, and trim what a resumed one would write twice.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

OUTCOME_FILE = "outcome.json"
JOB_FILE = "job.json"
JOB_ENV = "TRAINYARD_JOB"  # path of the job.json a trainer (DDP workers included) trains
LAST = Path("weights") / "last.pt"
PARTIAL_SUFFIX = ".partial"  # suffix of a checkpoint being written; renamed into place when complete
# One JSON line per trained epoch, {"epoch": n, "metrics": {Ultralytics key: value}}, appended by the
# training process after the epoch's checkpoint; the flow follows it into MLflow (tasks/live_logging.py).
# results.csv holds the same numbers printed to 6 significant digits; this file holds them exactly,
# which `trainyard reproduce` needs to call two trainings bit-identical.
EPOCHS_FILE = "epochs.jsonl"
OOM_TAG = "trainyard.oom_recoveries"  # each out-of-memory recovery of a run: "epoch 3: batch 16 -> 8; ..."
OOM_FILE = "oom.json"  # left by a training that ran out of memory: the epoch and batch it had (OutOfMemory)
# Written by the flow when a sweep prunes the trial (tasks/live_logging.py); the trainer stops after
# the epoch it is in, and the run finishes incomplete. A file, so a training in a container sees it.
STOP_FILE = "stop-requested"
WAIT_FLAG = "--wait"  # the training entry point's "start now, read the job's path from stdin" (LocalRunner.warm_up)


@dataclass(frozen=True)
class TrainJob:
    """Everything the training process needs; written as JSON so a container can read it."""

    run_dir: str  # output directory: weights/, results.csv, plots, outcome.json
    data_yaml: str  # the staged dataset's data.yaml
    args: dict[str, Any] = field(default_factory=dict)  # Ultralytics train arguments, verbatim
    stop_after: int | None = None  # stop after this many epochs, keeping the schedule of args["epochs"]
    resume: bool = False  # continue from run_dir/weights/last.pt (see resume_point) instead of starting over
    logged_through: int = 0  # epochs 1..N are already in the MLflow run: never logged again (epochs.jsonl skips them)
    oom_min_batch: int = 1  # runner.oom_min_batch: an out-of-memory retry never halves the batch below this
    # [[epoch, batch], ...]: from that epoch on, that batch, by pausing before it and resuming from last.pt
    # as an out-of-memory recovery did (`trainyard reproduce` replays the recoveries of the run it reproduces)
    batch_schedule: list[list[int]] = field(default_factory=list)

    def write(self, path: Path) -> Path:
        # Fields at their default are left out: a job that needs nothing new stays readable by
        # an older training image (`trainyard reproduce` runs a run's recorded image digest).
        fresh = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        data = {k: v for k, v in asdict(self).items() if k not in fresh or v != fresh[k]}
        path.write_text(json.dumps(data, indent=2, sort_keys=True))
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


def prepare_run_dir(path: Path, warn: Callable[[str], None] | None = None) -> Path:
    """Create ``path`` empty. An earlier trainyard run there is cleared (Ultralytics appends to
    an existing results.csv, which would mix two runs); any other non-empty folder is refused.

    An earlier run that could still resume (its last.pt holds an unfinished training) is never
    deleted: it is moved aside to ``<path>.interrupted-N`` and ``warn`` says where.
    """
    if path.exists() and any(path.iterdir()):
        if not (path / JOB_FILE).exists() and not (path / "results.csv").exists():
            from tasks.errors import RunnerError

            raise RunnerError(f"run directory {path} is not empty and holds no earlier trainyard run; choose another")
        done = resume_point(path)
        if done is not None:
            aside = next(
                p for p in (path.with_name(f"{path.name}.interrupted-{n}") for n in range(1, 10_000)) if not p.exists()
            )
            path.rename(aside)
            if warn is not None:
                warn(
                    f"{path} held an interrupted training (checkpoint after epoch {done}) of other inputs; "
                    f"kept it as {aside}"
                )
        else:
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def epochs_done(run_dir: Path) -> int:
    """Epochs results.csv records as finished (0 when there is none)."""
    path = run_dir / "results.csv"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:] if line.strip()]
    return len(lines)


def failure_text(exc: BaseException, run_dir: Path) -> str:
    """What ``trainyard.error`` says about why a training stopped (no password of any URL in it)."""
    from tasks.errors import interruption_signal
    from tasks.redact import redact

    signal_name = interruption_signal(exc)
    if signal_name is not None:
        done = epochs_done(run_dir)
        where = f"after epoch {done}" if done else "before its first epoch ended"
        then = (
            f"resumes it from {run_dir / LAST}" if resume_point(run_dir) is not None else "trains it again from epoch 1"
        )
        return f"interrupted by {signal_name} {where}; rerunning the same command {then}"
    return redact(str(exc) or type(exc).__name__)


def resume_point(run_dir: Path) -> int | None:
    """How many epochs ``run_dir/weights/last.pt`` holds (1-based), if a training can resume from it.

    None when there is nothing to resume: no last.pt, an unreadable or truncated one, or the
    checkpoint of a finished training (Ultralytics strips its optimizer and sets epoch -1).
    A count equal to the planned epochs means every epoch was trained and only the final
    validation is missing; ``train_yolo`` with ``resume=True`` then does just that.
    """
    ckpt = resumable_checkpoint(run_dir / LAST)
    return None if ckpt is None else int(ckpt["epoch"]) + 1


def resumable_checkpoint(path: Path) -> dict[str, Any] | None:
    ckpt = read_checkpoint(path)
    if ckpt is None or ckpt.get("optimizer") is None:
        return None
    epoch = ckpt.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return None
    return ckpt


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The plain data of a ``torch.save`` checkpoint (epoch, train_args, ...), or None if unreadable.

    Read without torch or ultralytics: this runs in the flow process, where importing
    ultralytics would patch Pillow's Image.open process-wide (its HEIF hook), and a whole
    checkpoint would be loaded for two numbers. Tensors and models come back as placeholders.
    A file cut short has lost the zip directory at its end, so it reads as None.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            ckpt = _PlainUnpickler(io.BytesIO(archive.read(name))).load()
    except Exception:  # missing, truncated, not a checkpoint: nothing to resume from
        return None
    return ckpt if isinstance(ckpt, dict) else None


class _Opaque:
    """Whatever a checkpoint pickles beyond plain data (tensors, modules, numpy scalars)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Opaque":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _PlainUnpickler(pickle.Unpickler):
    # No global of the file is ever looked up or called: reading a checkpoint runs no code from it.
    _PLAIN = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(module, name) if (module, name) in self._PLAIN else _Opaque

    def persistent_load(self, pid: Any) -> Any:  # torch's tensor storages, kept in other zip entries
        return _Opaque()


def clear_training_outputs(run_dir: Path) -> None:
    """Remove what an attempt that left no checkpoint wrote, so a fresh start does not append to it.

    Ultralytics appends to an existing results.csv; the job, data.yaml and params.yaml stay.
    """
    (run_dir / "results.csv").unlink(missing_ok=True)
    (run_dir / OUTCOME_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "weights", ignore_errors=True)


def append_epoch(run_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
    """Add one trained epoch to ``epochs.jsonl``: one write of one whole line, so a reader sees it all or not at all."""
    line = json.dumps({"epoch": epoch, "metrics": metrics}, separators=(",", ":")) + "\n"
    with (run_dir / EPOCHS_FILE).open("a", encoding="utf-8") as f:
        f.write(line)


def read_epochs(path: Path, offset: int = 0) -> tuple[dict[int, dict[str, float]], int]:
    """The epochs in an ``epochs.jsonl`` from byte ``offset`` on, and the offset after the last whole line.

    A line still being written (no newline yet) waits for the next read; a line that is not
    valid JSON is skipped. A later line for the same epoch wins.
    """
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return {}, 0
    end = data.rfind(b"\n") + 1
    epochs: dict[int, dict[str, float]] = {}
    for raw in data[:end].splitlines():
        try:
            entry = json.loads(raw)
            epochs[int(entry["epoch"])] = {str(k): float(v) for k, v in entry["metrics"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return epochs, offset + end


def trim_results(results_csv: Path, epochs: int) -> int:
    """Keep only epochs 1..``epochs`` of results.csv (and no half-written line); return rows dropped.

    Ultralytics appends to results.csv on resume, so a row written after the checkpoint
    (the kill came between the two) would otherwise appear twice.
    """
    if not results_csv.exists():
        return 0
    lines = results_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    if not lines:
        return 0
    keep = [lines[0]] if lines[0].endswith("\n") else []
    for line in lines[1:]:
        head = line.split(",", 1)[0].strip()
        try:
            complete = line.endswith("\n") and float(head) <= epochs
        except ValueError:
            complete = False
        if complete:
            keep.append(line)
    dropped = len(lines) - len(keep)
    if not keep:  # Ultralytics writes the header only when it creates the file
        results_csv.unlink()
    elif dropped:
        write_atomic(results_csv, "".join(keep).encode("utf-8"))
    return dropped


def data_root(data_yaml: Path) -> Path:
    """The dataset folder a training data.yaml points at (its ``path:``, else its own folder)."""
    import yaml

    return Path((yaml.safe_load(data_yaml.read_text()) or {}).get("path") or data_yaml.parent)


def write_atomic(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + PARTIAL_SUFFIX)
    part.write_bytes(data)
    os.replace(part, path)


@dataclass(frozen=True)
class OutOfMemory:
    """What a training that ran out of GPU (or container) memory leaves in ``run_dir/oom.json``."""

    epoch: int  # the 1-based epoch it was training
    batch: int  # the batch size it had then
    what: str  # the error, one line

    def write(self, run_dir: Path) -> None:
        write_atomic(run_dir / OOM_FILE, json.dumps(asdict(self)).encode())

    @classmethod
    def read(cls, run_dir: Path) -> "OutOfMemory | None":
        try:
            return cls(**json.loads((run_dir / OOM_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


@dataclass(frozen=True)
class Attempt:
    """How a training attempt starts in a run directory an earlier attempt may have left behind."""

    job: TrainJob
    resumed_after: list[int]  # epochs after which this run resumed, this attempt included
    note: str  # what to tell the user
    recovery: str | None = None  # an out-of-memory recovery, for the run's record: "epoch 3: batch 16 -> 8"


def is_retry(run_dir: Path) -> bool:
    """Whether an earlier attempt of this training left anything in ``run_dir``."""
    return resume_point(run_dir) is not None or (run_dir / "results.csv").exists() or (run_dir / "weights").exists()


def plan_retry(job: TrainJob, logged_through: int, resumed_before: list[int]) -> Attempt:
    """A retry resumes from last.pt, or starts over when there is none.

    ``logged_through``: the last epoch the MLflow run already holds (never logged twice);
    ``resumed_before``: epochs of earlier resumes (the run's ``trainyard.resumed_after`` tag).
    A retry without a checkpoint clears what the failed attempt wrote, since Ultralytics
    would append to its results.csv.
    """
    run_dir = Path(job.run_dir)
    ckpt = resumable_checkpoint(run_dir / LAST)
    done = None if ckpt is None else int(ckpt["epoch"]) + 1
    oom = OutOfMemory.read(run_dir)
    (run_dir / OOM_FILE).unlink(missing_ok=True)
    if ckpt is not None and done is not None:
        # a batch an earlier out-of-memory recovery lowered stays lowered (the retry starts from params' job)
        batch = (ckpt.get("train_args") or {}).get("batch")
        if isinstance(batch, int) and isinstance(job.args.get("batch"), int) and 0 < batch < job.args["batch"]:
            job = replace(job, args={**job.args, "batch": batch})
        if oom is not None:
            return _halve_batch(job, oom, done, logged_through, resumed_before)
        note = f"resuming the training from {run_dir / LAST} after epoch {done}"
        return Attempt(replace(job, resume=True, logged_through=logged_through), [*resumed_before, done], note)
    clear_training_outputs(run_dir)
    return Attempt(
        replace(job, logged_through=logged_through),
        list(resumed_before),
        "the previous attempt left no checkpoint to resume from; training again from epoch 1",
    )


def recovery_schedule(recoveries: str) -> list[list[int]]:
    """The batch schedule an ``OOM_TAG`` value describes: "epoch 3: batch 16 -> 8" -> [[3, 8]]."""
    import re

    return [[int(e), int(b)] for e, b in re.findall(r"epoch (\d+): batch \d+ -> (\d+)", recoveries)]


def note_out_of_memory(job: TrainJob, what: str) -> None:
    """Record a memory kill the training process could not record itself (a container OOMKilled).

    Kept when the training already left its own record (its CUDA error names the epoch exactly).
    """
    run_dir = Path(job.run_dir)
    batch = job.args.get("batch")
    if OutOfMemory.read(run_dir) is None and isinstance(batch, int) and batch > 0:
        OutOfMemory(epoch=(resume_point(run_dir) or 0) + 1, batch=batch, what=what).write(run_dir)


def _halve_batch(job: TrainJob, oom: OutOfMemory, done: int, logged_through: int, resumed_before: list[int]) -> Attempt:
    """After an out-of-memory in epoch N: resume from last.pt with half the batch, not below ``oom_min_batch``.

    Ultralytics itself halves the batch only within the first epoch, on one GPU; from the
    second epoch on an OOM ends the training. ``batch`` is one of the arguments Ultralytics
    takes from the caller on resume, so the rest of the schedule is the interrupted one.
    """
    from tasks.errors import TrainingError

    half = oom.batch // 2
    if half < max(1, job.oom_min_batch):
        raise TrainingError(
            f"the training ran out of memory in epoch {oom.epoch} at batch {oom.batch} ({oom.what}); halving it "
            f"would go below runner.oom_min_batch ({job.oom_min_batch}): lower train.imgsz, use a smaller model "
            "or a GPU with more memory, or lower runner.oom_min_batch"
        )
    recovery = f"epoch {oom.epoch}: batch {oom.batch} -> {half}"
    note = (
        f"out of memory in epoch {oom.epoch} at batch {oom.batch}: resuming from {Path(job.run_dir) / LAST} "
        f"after epoch {done} with batch {half}"
    )
    resumed = replace(job, args={**job.args, "batch": half}, resume=True, logged_through=logged_through)
    return Attempt(resumed, [*resumed_before, done], note, recovery)


def worth_retrying(killed: bool, run_dir: Path) -> bool:
    """A killed process (OOM killer, preemption, a lost container) or one that left a checkpoint is worth
    a retry; a training that failed before its first epoch (bad arguments, missing files) would fail again."""
    return killed or resume_point(run_dir) is not None
