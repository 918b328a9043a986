"""A training's epochs and system metrics into its MLflow run, live, from the flow's process.

The training process only appends each epoch to ``epochs.jsonl`` (tasks.job); the flow, which
has MLflow imported and its store open anyway, follows that file and logs every new epoch
within about a second. So the training process never imports mlflow nor opens the store a
second time (about 3 s of a 3-epoch demo, measured by bench/overhead.py), and a training in a
container logs live even when its tracking store is a SQLite file the container cannot see.

Epochs are sent from a thread in order, retried with backoff while the server is away
(:class:`EpochLogger`); what is still unsent when the training ends stays in the file, and the
run's finish back-fills it (tasks/run_finish.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from tasks.job import EPOCHS_FILE, STOP_FILE, read_epochs

if TYPE_CHECKING:
    from tasks.adapters.mlflow_tracking import EpochLogger, Tracker

POLL_SECONDS = 1.0  # how often the file is read: an epoch takes seconds at the least
FLUSH_SECONDS = 5.0  # how long the end of a training waits for MLflow to take the last epochs
WATCH_SECONDS = 2.0  # how often a sweep trial asks MLflow whether it was pruned


class EpochFollower:
    """Reads ``run_dir/epochs.jsonl`` as it grows and queues each epoch after ``logged_through`` once."""

    def __init__(
        self,
        sink: "EpochLogger",
        run_dir: Path,
        logged_through: int = 0,
        poll: float = POLL_SECONDS,
        extra: Callable[[], dict[str, float]] | None = None,
        watch: Callable[[], str | None] | None = None,
        watch_every: float = WATCH_SECONDS,
    ) -> None:
        self.sink, self.path, self.poll = sink, run_dir / EPOCHS_FILE, poll
        self.extra = extra  # figures the flow measured during the epoch (GPU telemetry), added to it
        # asked every ``watch_every`` s: a reason to stop the training (a sweep pruned it), or None
        self.watch, self.watch_every, self._watched = watch, watch_every, 0.0
        self.stop_file = run_dir / STOP_FILE
        self.sent: set[int] = set(range(1, logged_through + 1))
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trainyard-epochs", daemon=True)

    def start(self) -> "EpochFollower":
        self._thread.start()
        return self

    def read_new(self) -> list[int]:
        """Queue the epochs written since the last read; return them."""
        try:
            if self.path.stat().st_size < self._offset:
                self._offset = 0  # a training from scratch replaced the file
        except FileNotFoundError:
            self._offset = 0
            return []
        epochs, self._offset = read_epochs(self.path, self._offset)
        new = sorted(e for e in epochs if e not in self.sent)
        for epoch in new:
            extra = self.extra() if self.extra is not None else {}
            self.sink.put(epoch, {**epochs[epoch], **extra})
            self.sent.add(epoch)
        return new

    def stop(self, timeout: float = FLUSH_SECONDS) -> list[int]:
        """Read the file one last time and wait up to ``timeout`` s for MLflow; return the epochs left unsent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.read_new()
        return self.sink.close(timeout)

    def check_stop(self) -> str | None:
        """Ask ``watch``; on a reason, write it to the run directory's stop file (the trainer stops after its epoch)."""
        if self.watch is None:
            return None
        reason = self.watch()
        if reason:
            self.stop_file.write_text(reason + "\n")
            self.watch = None  # asked once is enough
        return reason

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            self.read_new()
            if self.watch is not None and time.monotonic() - self._watched >= self.watch_every:
                self._watched = time.monotonic()
                self.check_stop()


@contextlib.contextmanager
def live_logging(
    tracker: "Tracker",
    run_id: str,
    run_dir: Path,
    logged_through: int,
    say: Callable[[str], None],
    gpus: Sequence[str] | None = (),
    nvml: Any = None,
    watch: Callable[[], str | None] | None = None,
) -> Iterator[EpochFollower]:
    """While the block runs a training into ``run_dir``: its epochs and system metrics to ``run_id``.

    ``gpus``: the job's GPUs as NVML selectors (tasks.gpu_scope; ``()`` for a CPU training, None
    for all of the host's). Only those are sampled, into MLflow's system metrics and, per epoch,
    ``perf/gpu_utilization_mean``/``_p95`` and ``perf/gpu_memory_peak_mb``. Without a readable GPU
    the telemetry is off and ``say`` tells so once. ``nvml`` replaces pynvml (tests). ``watch``:
    see :class:`EpochFollower` (a sweep trial's "was I pruned?").
    """
    from tasks.adapters.mlflow_tracking import EpochLogger, system_metrics
    from tasks.adapters.nvml import GpuSampler

    sampler: GpuSampler | None = None
    if gpus is None or len(gpus):
        opened = GpuSampler.open(None if gpus is None else list(gpus), nvml)
        if isinstance(opened, str):
            say(f"GPU telemetry is off for this run: {opened}")
        else:
            sampler = opened
    extra = sampler.epoch_summary if sampler is not None else None
    follower = EpochFollower(
        EpochLogger(tracker, run_id, say), run_dir, logged_through, extra=extra, watch=watch
    ).start()
    try:
        with system_metrics(run_id, tracker.uri, say, gpu=sampler):
            yield follower
    finally:
        follower.stop()
        if sampler is not None:
            sampler.close()
