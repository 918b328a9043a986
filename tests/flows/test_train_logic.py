"""The train flow's retry logic with a fake runner at the runner seam (fast: no Prefect API, no training).

The task function runs as plain Python (``.fn``); the tracker is a real MLflow store on SQLite.
The real runners and a real killed training are covered by test_resume.py and test_docker_flow.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.logging import disable_run_logger

from flows.train import OOM_TAG, RESUMED_TAG, retry_if_resumable, train_task
from tasks.adapters.mlflow_tracking import Tracker
from tasks.adapters.torch_environment import Environment
from tasks.errors import TrainingError
from tasks.job import OutOfMemory, TrainJob
from tests.tasks.test_job import write_checkpoint


class FakeRunner:
    """Runs nothing: each call plays the next scripted attempt against the run directory."""

    kind = "fake"

    def __init__(self, *attempts: Callable[[Path], None]) -> None:
        self.attempts = list(attempts)
        self.jobs: list[TrainJob] = []

    def environment(self) -> Environment:
        return Environment(kind="fake", digest="sha256:fake", details={})

    def run(self, job: TrainJob, env: dict[str, str], log: Callable[[str], None]) -> None:
        self.jobs.append(job)
        self.attempts.pop(0)(Path(job.run_dir))


def killed_after(epoch: int) -> Callable[[Path], None]:
    def attempt(run_dir: Path) -> None:
        (run_dir / "results.csv").write_text("epoch,x\n" + "".join(f"{e},0\n" for e in range(1, epoch + 1)))
        write_checkpoint(run_dir, epoch - 1)
        raise TrainingError("training process was killed (SIGKILL)", killed=True)

    return attempt


def crashed_before_any_epoch(run_dir: Path) -> None:
    raise TrainingError("training process exited with code 1")


def finishes(run_dir: Path) -> None:
    (run_dir / "results.csv").write_text("epoch,x\n1,0\n2,0\n3,0\n4,0\n")


@pytest.fixture
def run(tmp_path: Path) -> tuple[Tracker, str, str, TrainJob]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    run_id = tracker.start_run("logic", "r", tags={}, params={})
    out = tmp_path / "run"
    out.mkdir()
    return tracker, uri, run_id, TrainJob(run_dir=str(out), data_yaml=str(out / "data.yaml"), args={"epochs": 4})


def _state(error: BaseException) -> Any:
    return type("State", (), {"data": error})()


def test_a_killed_training_is_retried_and_resumes_without_logging_an_epoch_twice(run: Any) -> None:
    tracker, uri, run_id, job = run
    runner = FakeRunner(killed_after(2), finishes)
    with disable_run_logger():
        with pytest.raises(TrainingError) as info:
            train_task.fn(runner, job, uri, run_id)
        assert info.value.resumable and retry_if_resumable(None, None, _state(info.value))
        tracker.log_metrics(run_id, {"train/box_loss": 1.0}, step=1)  # what live logging got through
        resumed = train_task.fn(runner, job, uri, run_id)
    first, second = runner.jobs
    assert not first.resume and second.resume and second.logged_through == 1
    assert resumed == [2] and tracker.get_run(run_id).tags[RESUMED_TAG] == "2"


def test_a_training_that_fails_before_its_first_checkpoint_is_not_retried(run: Any) -> None:
    _tracker, uri, run_id, job = run
    with disable_run_logger(), pytest.raises(TrainingError) as info:
        train_task.fn(FakeRunner(crashed_before_any_epoch), job, uri, run_id)
    assert not info.value.resumable and not retry_if_resumable(None, None, _state(info.value))


def test_a_retry_without_a_checkpoint_starts_over_in_a_clean_directory(run: Any) -> None:
    tracker, uri, run_id, job = run
    out = Path(job.run_dir)
    (out / "results.csv").write_text("epoch,x\n1,0\n")  # a killed first attempt that saved no checkpoint
    runner = FakeRunner(finishes)
    with disable_run_logger():
        assert train_task.fn(runner, job, uri, run_id) == []
    assert not runner.jobs[0].resume and RESUMED_TAG not in tracker.get_run(run_id).tags


def out_of_memory_in(epoch: int, batch: int, oomkilled: bool = False) -> Callable[[Path], None]:
    """A training out of memory as ``epoch`` starts: its CUDA error recorded by the trainer, or a container OOMKilled."""

    def attempt(run_dir: Path) -> None:
        write_checkpoint(run_dir, epoch - 2, batch=batch)
        if oomkilled:
            raise TrainingError("the training container ran out of memory (OOMKilled)", killed=True, out_of_memory=True)
        OutOfMemory(epoch=epoch, batch=batch, what="CUDA out of memory").write(run_dir)
        raise TrainingError("training process exited with code 1")

    return attempt


def test_out_of_memory_twice_halves_the_batch_twice_and_each_recovery_is_recorded(run: Any) -> None:
    tracker, uri, run_id, job = run
    job = TrainJob(run_dir=job.run_dir, data_yaml=job.data_yaml, args={"epochs": 6, "batch": 16}, oom_min_batch=2)
    runner = FakeRunner(out_of_memory_in(3, 16), out_of_memory_in(5, 8, oomkilled=True), finishes)
    with disable_run_logger():
        for _ in range(2):
            with pytest.raises(TrainingError) as info:
                train_task.fn(runner, job, uri, run_id)  # Prefect retries the task with the same arguments
            assert info.value.resumable
        train_task.fn(runner, job, uri, run_id)
    assert [j.args["batch"] for j in runner.jobs] == [16, 8, 4]
    assert tracker.get_run(run_id).tags[OOM_TAG] == "epoch 3: batch 16 -> 8; epoch 5: batch 8 -> 4"
