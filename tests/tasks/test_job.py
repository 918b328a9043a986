"""tasks.job: what a retry does with what the failed attempt left in the run directory (no torch, no training)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

from tasks.job import LAST, TrainJob, is_retry, plan_retry, resume_point, worth_retrying


def write_checkpoint(run_dir: Path, epoch: int, optimizer: object = "state") -> None:
    """A file shaped like torch.save's zip: what resume_point reads, without torch."""
    path = run_dir / LAST
    path.parent.mkdir(parents=True, exist_ok=True)
    data = io.BytesIO()
    pickle.dump({"epoch": epoch, "optimizer": optimizer, "train_args": {"epochs": 10}}, data)
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
