"""Is a training starved of data? The verdict from the time its loop waited for batches.

The training process measures, per epoch, how long its training loop blocked in the data
loader's ``next()`` (``perf/data_wait_s``) against the loop's whole time
(``perf/train_loop_s``), and the images it consumed (``tasks/adapters/ultralytics_trainer.py``).
Those four ``perf/*`` numbers go to MLflow with the epoch. This module turns them into one
verdict for the run's summary, its Prefect artifact and its ``trainyard.data_wait`` tag.

Thresholds (share of the training loop's time spent waiting for the next batch):

* ``>= STARVED_PCT`` (20 %): **data-starved**. The accelerator idles a fifth of the time or
  more; the fix is in the data path, not the model: more loader workers, a RAM cache, or
  staged data on local SSD/tmpfs instead of network storage.
* ``>= NOTICEABLE_PCT`` (5 %): noticeable, said but not called starved.
* below: not data-starved.

The first epoch is left out when there are later ones: it pays for starting the loader's
worker processes and for cold caches once. A GPU computes asynchronously, so "compute" here
is the loop's own time between batches as the host sees it (the loss read-back every step
makes the host wait for the GPU), which is what the data loader has to keep up with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tasks.job import EPOCHS_FILE, TrainOutcome, read_epochs

STARVED_PCT = 20.0
NOTICEABLE_PCT = 5.0
TAG = "trainyard.data_wait"
STARVED = "data-starved:"  # how a starved verdict's text begins
# Per-epoch metric names, as the training process writes them into epochs.jsonl.
WAIT_S = "perf/data_wait_s"
LOOP_S = "perf/train_loop_s"
WAIT_PCT = "perf/data_wait_pct"
IMAGES_PER_S = "perf/images_per_s"
# Filesystems whose reads cross the network: staging onto local disk is the first fix there.
_NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "9p"})


@dataclass(frozen=True)
class DataWaitVerdict:
    starved: bool
    wait_pct: float  # share of the training loop's time spent waiting for batches
    images_per_s: float
    epochs: int  # how many epochs the figures are over
    text: str  # one line for the summary, the tag and the terminal


def diagnose(
    epochs: Mapping[int, Mapping[str, float]], runtime: Mapping[str, Any] | None = None
) -> DataWaitVerdict | None:
    """The verdict over ``epochs`` (epoch -> metrics with the ``perf/*`` keys); None when none were measured.

    ``runtime`` is what the training process reported about where it ran (outcome.json):
    ``workers``, ``cache`` and ``data_fs``/``data_dir`` name the knobs in the advice.
    """
    timed = sorted(e for e, m in epochs.items() if m.get(LOOP_S, 0.0) > 0.0 and WAIT_S in m)
    if not timed:
        return None
    if len(timed) > 1:
        timed = timed[1:]
    wait = sum(epochs[e][WAIT_S] for e in timed)
    loop = sum(epochs[e][LOOP_S] for e in timed)
    images = sum(epochs[e].get(IMAGES_PER_S, 0.0) * epochs[e][LOOP_S] for e in timed)
    pct = 100.0 * wait / loop
    rate = images / loop
    over = f"{len(timed)} epoch{'s' if len(timed) != 1 else ''}"
    figures = f"{pct:.0f} % of step time waiting for batches, {rate:.1f} images/s over {over}"
    if pct >= STARVED_PCT:
        return DataWaitVerdict(
            True, pct, rate, len(timed), f"{STARVED} {figures}{_setup(runtime)} — {_advice(runtime)}"
        )
    if pct >= NOTICEABLE_PCT:
        return DataWaitVerdict(
            False, pct, rate, len(timed), f"some data wait: {figures} (data-starved from {STARVED_PCT:.0f} %)"
        )
    return DataWaitVerdict(False, pct, rate, len(timed), f"not data-starved: {figures}")


def diagnose_run(run_dir: Path) -> DataWaitVerdict | None:
    """:func:`diagnose` for a run directory: its epochs.jsonl and outcome.json."""
    epochs, _ = read_epochs(run_dir / EPOCHS_FILE)
    outcome = TrainOutcome.read(run_dir)
    return diagnose(epochs, outcome.runtime if outcome is not None else None)


def _setup(runtime: Mapping[str, Any] | None) -> str:
    if not runtime:
        return ""
    parts = []
    if "workers" in runtime:
        parts.append(f"workers={runtime['workers']}")
    if "cache" in runtime:
        parts.append(f"cache={runtime['cache']}")
    if runtime.get("data_dir"):
        fs = f" ({runtime['data_fs']})" if runtime.get("data_fs") else ""
        parts.append(f"data on {runtime['data_dir']}{fs}")
    return f" ({', '.join(parts)})" if parts else ""


def _advice(runtime: Mapping[str, Any] | None) -> str:
    runtime = runtime or {}
    advice = []
    if str(runtime.get("data_fs", "")) in _NETWORK_FS:
        advice.append("stage the data to local SSD or tmpfs (stage.root) instead of network storage")
    advice.append("raise train.workers")
    if str(runtime.get("cache", "False")) in ("False", "false", "None", ""):
        advice.append("set train.cache=ram (or disk)")
    if not advice[0].startswith("stage"):
        advice.append("or stage to tmpfs")
    return ", ".join(advice)
