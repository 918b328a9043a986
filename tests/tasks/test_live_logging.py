"""The flow follows a training's epochs.jsonl into MLflow: each epoch once, in order, whole lines only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from tasks.adapters.mlflow_tracking import EpochLogger, Tracker
from tasks.job import EPOCHS_FILE, append_epoch
from tasks.live_logging import EpochFollower, live_logging
from tests.conftest import free_port
from tests.tasks.adapters.test_nvml import FakeNvml


def _history(tracker: Tracker, run_id: str) -> list[tuple[int, float]]:
    return tracker.metric_history(run_id, "train/box_loss")


def test_epochs_are_logged_once_each_as_the_file_grows(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("e", "r", tags={}, params={})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    follower = EpochFollower(EpochLogger(tracker, run_id, print), run_dir, logged_through=1)
    assert follower.read_new() == []  # no file yet: the training has not finished an epoch

    append_epoch(run_dir, 1, {"train/box_loss": 9.0})  # already in the run (a resumed training)
    append_epoch(run_dir, 2, {"train/box_loss": 0.123456789012})
    with (run_dir / EPOCHS_FILE).open("a") as f:
        f.write('{"epoch": 3, "metrics": {"train/box')  # being written: waits for its newline
    assert follower.read_new() == [2]
    with (run_dir / EPOCHS_FILE).open("a") as f:
        f.write('_loss": 0.1}}\n')
    assert follower.read_new() == [3]
    assert follower.read_new() == []

    (run_dir / EPOCHS_FILE).write_text("")  # a training from scratch replaced the file
    append_epoch(run_dir, 2, {"train/box_loss": 5.0})  # already sent: not again
    append_epoch(run_dir, 4, {"train/box_loss": 0.05})
    assert follower.read_new() == [4]
    assert follower.stop(timeout=30) == []
    assert _history(tracker, run_id) == [(2, 0.123456789012), (3, 0.1), (4, 0.05)]


def test_live_logging_follows_a_training_while_it_runs(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("e", "r", tags={}, params={})
    with live_logging(tracker, run_id, tmp_path, 0, print):
        append_epoch(tmp_path, 1, {"train/box_loss": 1.0})
        deadline = time.monotonic() + 30
        while not _history(tracker, run_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _history(tracker, run_id) == [(1, 1.0)], "an epoch reaches MLflow while the training still runs"
        append_epoch(tmp_path, 2, {"train/box_loss": 0.5})
    assert _history(tracker, run_id) == [(1, 1.0), (2, 0.5)]  # the last one is not lost at the end


def test_a_dead_server_costs_the_end_of_a_training_seconds_and_keeps_the_epochs(tmp_path: Path) -> None:
    dead = Tracker(f"http://127.0.0.1:{free_port()}")
    follower = EpochFollower(EpochLogger(dead, "run", print), tmp_path).start()
    append_epoch(tmp_path, 1, {"train/box_loss": 1.0})
    started = time.monotonic()
    assert follower.stop(timeout=1) == [1]  # left in epochs.jsonl for the finish's back-fill
    assert time.monotonic() - started < 10


def _wait_for(check: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.1)
    return check()


def test_gpu_telemetry_samples_the_jobs_gpu_only_and_sums_up_each_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # We have no GPU: NVML is faked (two GPUs; the job was given GPU 1); MLflow and its monitor are real.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("e", "r", tags={}, params={})
    said: list[str] = []
    with live_logging(tracker, run_id, tmp_path, 0, said.append, gpus=["1"], nvml=FakeNvml()):
        assert _wait_for(lambda: bool(tracker.metric_history(run_id, "system/gpu_1_utilization_percentage")))
        append_epoch(tmp_path, 1, {"train/box_loss": 1.0})
        assert _wait_for(lambda: bool(tracker.metric_history(run_id, "perf/gpu_utilization_mean")))
    metrics = tracker.client.get_run(run_id).data.metrics
    assert not [k for k in metrics if k.startswith("system/gpu_0")], "another job's GPU was sampled"
    for name in ("memory_usage_megabytes", "power_usage_watts", "temperature_celsius", "throttled"):
        assert f"system/gpu_1_{name}" in metrics, name
    assert "system/cpu_utilization_percentage" in metrics  # MLflow's own monitors are kept
    ((step, mean),) = tracker.metric_history(run_id, "perf/gpu_utilization_mean")
    assert step == 1 and 11 <= mean <= metrics["perf/gpu_utilization_p95"]
    assert metrics["perf/gpu_memory_peak_mb"] == (11 << 30) / 1e6
    assert not [s for s in said if "GPU" in s]


def test_without_a_driver_gpu_telemetry_is_off_and_says_so_once(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("e", "r", tags={}, params={})
    said: list[str] = []
    with live_logging(tracker, run_id, tmp_path, 0, said.append, gpus=["0"], nvml=FakeNvml(gpus=0)):
        append_epoch(tmp_path, 1, {"train/box_loss": 1.0})
    assert [s for s in said if "GPU" in s] == [
        "GPU telemetry is off for this run: the job's GPUs ['0'] cannot be read (Invalid Argument)"
    ]
    assert tracker.metric_history(run_id, "train/box_loss") == [(1, 1.0)]
    said.clear()
    with live_logging(tracker, run_id, tmp_path, 1, said.append, gpus=[]):  # a CPU training: nothing to say
        pass
    assert not [s for s in said if "GPU" in s]


def test_a_pruned_trial_gets_the_stop_file_with_the_sweeps_reason_once(tmp_path: Path) -> None:
    """The sweep tags the run; the flow's follower, asking every watch_every s, tells the trainer by a file."""
    from tasks.job import STOP_FILE

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("e", "r", tags={}, params={})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    asked: list[float] = []

    def watch() -> str | None:
        asked.append(time.monotonic())
        return tracker.get_run(run_id).tags.get("trainyard.sweep.prune")

    follower = EpochFollower(EpochLogger(tracker, run_id, print), run_dir, poll=0.05, watch=watch, watch_every=0.1)
    follower.start()
    time.sleep(0.5)
    assert not (run_dir / STOP_FILE).exists() and len(asked) >= 2  # asked, and nothing to stop for yet
    tracker.set_tags(run_id, {"trainyard.sweep.prune": "pruned after epoch 3: below the median"})
    deadline = time.monotonic() + 10
    while not (run_dir / STOP_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    count = len(asked)
    time.sleep(0.3)
    follower.stop(timeout=10)
    assert (run_dir / STOP_FILE).read_text() == "pruned after epoch 3: below the median\n"
    assert len(asked) == count  # once told, it stops asking MLflow
