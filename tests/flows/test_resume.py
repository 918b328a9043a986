"""A training process SIGKILLed mid-run is retried by the flow, resuming into the same MLflow run."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tasks.adapters.mlflow_tracking import Tracker
from tests.conftest import flow_params

pytestmark = pytest.mark.slow

EPOCHS = 4
HISTORY_KEYS = ("train/box_loss", "metrics/mAP50B", "metrics/mAP50-95B", "lr/pg0")


def _rows(results_csv: Path) -> int:
    try:
        with results_csv.open() as f:
            return max(0, sum(1 for _ in f) - 1)
    except FileNotFoundError:
        return 0


class Killer(threading.Thread):
    """SIGKILLs the training process once, after it has finished ``after`` epochs (bounded wait)."""

    def __init__(self, runs_dir: Path, after: int, timeout: float = 300) -> None:
        super().__init__(daemon=True)
        self.runs_dir, self.after, self.timeout = runs_dir, after, timeout
        self.killed_pid: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            for proc in psutil.Process().children(recursive=True):
                try:
                    cmd = proc.cmdline()
                except psutil.Error:
                    continue
                if "tasks.adapters.ultralytics_trainer" not in cmd:
                    continue
                # its run directory: named by the job's path, or the only one (a process started ahead, --wait)
                if cmd[-1].endswith(".json"):
                    run_dirs = [Path(cmd[-1]).parent]
                else:
                    run_dirs = [job.parent for job in self.runs_dir.glob("*/job.json")]
                # mid-epoch: the epoch after `after` has started (its checkpoint is not written yet)
                if any(_rows(run_dir / "results.csv") >= self.after for run_dir in run_dirs):
                    time.sleep(0.3)
                    os.kill(proc.pid, signal.SIGKILL)
                    self.killed_pid = proc.pid
                    return
            time.sleep(0.1)


def train_killed(params: Path, after: int) -> Any:
    """The train flow, with its training process SIGKILLed once after ``after`` epochs."""
    from flows.train import train_flow

    killer = Killer(params.parent / "runs", after=after)
    killer.start()
    try:
        result = train_flow(params_path=str(params), overrides=["runner.retry_delay=1"])
    finally:
        killer.stop.set()
        killer.join(timeout=5)
    assert killer.killed_pid is not None, "the training was never killed: the test proved nothing"
    return result


def test_killed_training_resumes_into_the_same_mlflow_run(
    tmp_path: Path, mlflow_server: str, prefect_api: None, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = flow_params(tmp_path, monkeypatch, mlflow_server, tiny_dataset, "resume", epochs=EPOCHS)
    result = train_killed(params, after=2)

    assert result.outcome == "trained"
    assert len(result.resumed_after) == 1 and 1 <= result.resumed_after[0] < EPOCHS
    tracker = Tracker(mlflow_server)
    runs = tracker.search_runs("resume")
    assert [r.run_id for r in runs] == [result.run_id], "a resumed training must not open a second run"
    run = runs[0]
    assert run.status == "FINISHED"
    assert run.tags["trainyard.resumed_after"] == str(result.resumed_after[0])
    for key in HISTORY_KEYS:
        steps = [step for step, _ in tracker.metric_history(run.run_id, key)]
        assert steps == list(range(1, EPOCHS + 1)), f"{key}: steps {steps} (gaps or duplicates)"
    with (Path(result.run_dir) / "results.csv").open() as f:
        epochs = [int(float(row["epoch"])) for row in csv.DictReader(f, skipinitialspace=True)]
    assert epochs == list(range(1, EPOCHS + 1))
    assert result.metrics["epochs"] == EPOCHS
    assert "weights/best.pt" in tracker.list_artifacts(run.run_id, "weights")


def test_a_training_killed_before_its_first_checkpoint_starts_over_cleanly(
    tmp_path: Path, mlflow_server: str, prefect_api: None, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = flow_params(tmp_path, monkeypatch, mlflow_server, tiny_dataset, "restart", epochs=2)
    result = train_killed(params, after=0)  # as soon as the process exists: it is still importing
    assert result.outcome == "trained" and result.resumed_after == []
    tracker = Tracker(mlflow_server)
    assert [r.run_id for r in tracker.search_runs("restart")] == [result.run_id]
    assert [s for s, _ in tracker.metric_history(result.run_id, "train/box_loss")] == [1, 2]
