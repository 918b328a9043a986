"""tasks.job: what a retry does with what the failed attempt left in the run directory (no torch, no training)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest

from tasks.errors import TrainingError
from tasks.job import (
    LAST,
    OOM_FILE,
    OutOfMemory,
    TrainJob,
    is_retry,
    note_out_of_memory,
    plan_retry,
    recovery_schedule,
    resume_point,
    worth_retrying,
)


def write_checkpoint(run_dir: Path, epoch: int, optimizer: object = "state", batch: int = 16) -> None:
    """A file shaped like torch.save's zip: what resume_point reads, without torch."""
    path = run_dir / LAST
    path.parent.mkdir(parents=True, exist_ok=True)
    data = io.BytesIO()
    pickle.dump({"epoch": epoch, "optimizer": optimizer, "train_args": {"epochs": 10, "batch": batch}}, data)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("last/data.pkl", data.getvalue())


def _job(run_dir: Path) -> TrainJob:
    return TrainJob(run_dir=str(run_dir), data_yaml=str(run_dir / "data.yaml"), args={"epochs": 10})


def test_a_first_attempt_is_no_retry(tmp_path: Path) -> None:
    assert not is_retry(tmp_path) and not worth_retrying(False, tmp_path)


def test_a_retry_with_a_checkpoint_resumes_after_its_epoch(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, epoch=2)  # 0-based: three epochs done
    (tmp_path / "results.csv").write_text("epoch,x\n1,0\n2,0\n3,0\n4,0\n")
    assert is_retry(tmp_path) and resume_point(tmp_path) == 3 and worth_retrying(False, tmp_path)
    attempt = plan_retry(_job(tmp_path), logged_through=3, resumed_before=[1])
    assert attempt.job.resume and attempt.job.logged_through == 3
    assert attempt.resumed_after == [1, 3] and "after epoch 3" in attempt.note
    assert (tmp_path / "results.csv").exists()  # trimmed by the trainer on resume, not here


def test_a_retry_without_a_checkpoint_starts_over_on_a_clean_directory(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text("epoch,x\n1,0\n")
    (tmp_path / "weights").mkdir()
    (tmp_path / "job.json").write_text("{}")
    assert is_retry(tmp_path) and not worth_retrying(False, tmp_path) and worth_retrying(True, tmp_path)
    attempt = plan_retry(_job(tmp_path), logged_through=1, resumed_before=[])
    assert not attempt.job.resume and attempt.job.logged_through == 1 and attempt.resumed_after == []
    assert "training again from epoch 1" in attempt.note
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "weights").exists()
    assert (tmp_path / "job.json").exists()


def test_a_finished_checkpoint_is_nothing_to_resume(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, epoch=-1, optimizer=None)  # Ultralytics strips a finished training's checkpoint
    assert resume_point(tmp_path) is None


def _gpu_job(run_dir: Path, floor: int = 1) -> TrainJob:
    return TrainJob(run_dir=str(run_dir), data_yaml="d.yaml", args={"epochs": 10, "batch": 16}, oom_min_batch=floor)


def test_out_of_memory_in_epoch_3_resumes_with_half_the_batch_and_says_so(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, epoch=1)  # epochs 1-2 done
    OutOfMemory(epoch=3, batch=16, what="CUDA out of memory. Tried to allocate 2.00 GiB").write(tmp_path)
    attempt = plan_retry(_gpu_job(tmp_path), logged_through=2, resumed_before=[])
    assert attempt.job.resume and attempt.job.args == {"epochs": 10, "batch": 8}
    assert attempt.recovery == "epoch 3: batch 16 -> 8" and attempt.resumed_after == [2]
    assert "out of memory in epoch 3 at batch 16" in attempt.note and "with batch 8" in attempt.note
    assert not (tmp_path / OOM_FILE).exists()  # consumed: a later, unrelated retry does not halve again


def test_a_later_retry_keeps_the_batch_a_recovery_lowered(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, epoch=4, batch=8)  # trained on at batch 8 after a recovery, then killed
    attempt = plan_retry(_gpu_job(tmp_path), logged_through=5, resumed_before=[2])
    assert attempt.job.args["batch"] == 8 and attempt.recovery is None


def test_halving_stops_at_runner_oom_min_batch(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, epoch=1, batch=4)
    OutOfMemory(epoch=3, batch=4, what="CUDA out of memory").write(tmp_path)
    with pytest.raises(TrainingError, match=r"epoch 3 at batch 4 .*below runner.oom_min_batch \(4\)") as info:
        plan_retry(_gpu_job(tmp_path, floor=4), logged_through=2, resumed_before=[])
    assert not info.value.resumable and "lower train.imgsz" in str(info.value)


def test_a_container_oomkilled_is_recorded_once_with_the_batch_it_had(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, epoch=5)
    note_out_of_memory(_gpu_job(tmp_path), "the container was OOMKilled")
    assert OutOfMemory.read(tmp_path) == OutOfMemory(epoch=7, batch=16, what="the container was OOMKilled")
    OutOfMemory(epoch=6, batch=16, what="CUDA out of memory").write(tmp_path)  # the training's own record wins
    note_out_of_memory(_gpu_job(tmp_path), "the container was OOMKilled")
    assert OutOfMemory.read(tmp_path) == OutOfMemory(epoch=6, batch=16, what="CUDA out of memory")


def test_the_recoveries_tag_reads_back_as_a_batch_schedule() -> None:
    assert recovery_schedule("epoch 3: batch 16 -> 8; epoch 5: batch 8 -> 4") == [[3, 8], [5, 4]]
    assert recovery_schedule("epoch 3: batch 16 -> 8 (replayed)") == [[3, 8]]
    assert recovery_schedule("") == []
