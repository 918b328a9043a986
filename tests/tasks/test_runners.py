"""The local runner: failures surface as one TrainingError that says what happened."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.errors import TrainingError
from tasks.runners import LocalRunner, make_runner
from tasks.training_output import last_frame
from tasks.job import JOB_FILE, TrainJob


def test_a_crashing_training_reports_exit_code_and_its_last_lines(tmp_path: Path) -> None:
    job = TrainJob(
        run_dir=str(tmp_path / "run"),
        data_yaml=str(tmp_path / "missing" / "data.yaml"),
        args={"model": "yolo11n.yaml", "epochs": 1, "imgsz": 32, "device": "cpu"},
    )
    lines: list[str] = []
    with pytest.raises(TrainingError) as info:
        LocalRunner(interactive=False).run(job, {}, lines.append)
    msg = str(info.value)
    assert "exited with code 1" in msg and str(tmp_path / "run") in msg
    assert "missing" in msg  # Ultralytics' own complaint about the data path is shown
    assert lines, "output should have been streamed to the log sink"
    assert (tmp_path / "run" / JOB_FILE).exists()


def test_a_warmed_up_training_process_takes_the_job_and_reports_as_a_fresh_one(tmp_path: Path) -> None:
    job = TrainJob(
        run_dir=str(tmp_path / "run"),
        data_yaml=str(tmp_path / "missing" / "data.yaml"),
        args={"model": "yolo11n.yaml", "epochs": 1, "imgsz": 32, "device": "cpu"},
    )
    runner = LocalRunner(interactive=False)
    runner.warm_up()  # as the flow does, before it opens the MLflow run
    warmed = runner._warm
    assert warmed is not None and warmed.poll() is None
    lines: list[str] = []
    with pytest.raises(TrainingError) as info:
        runner.run(job, {}, lines.append)
    assert warmed.returncode == 1, "the job ran in the process started ahead"
    assert "exited with code 1" in str(info.value) and "missing" in str(info.value)


def test_a_warmed_up_process_that_gets_no_job_is_stopped(tmp_path: Path) -> None:
    runner = LocalRunner(interactive=False)
    runner.warm_up()
    warmed = runner._warm
    assert warmed is not None
    runner.discard()  # the flow found the run up to date
    assert warmed.returncode is not None and runner._warm is None


def test_a_killed_training_is_reported_as_probably_out_of_memory(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'Epoch 1/3'\nkill -9 $$\n")
    fake_python.chmod(0o755)
    job = TrainJob(run_dir=str(tmp_path / "run"), data_yaml="unused", args={"model": "yolo11n.yaml"})
    with pytest.raises(TrainingError) as info:
        LocalRunner(python=str(fake_python), interactive=False).run(job, {}, lambda line: None)
    assert "SIGKILL" in str(info.value) and "out-of-memory" in str(info.value)
    assert "Epoch 1/3" in str(info.value)


def test_progress_bar_redraws_collapse_to_the_final_frame() -> None:
    raw = "  1/2  0% 0/6\r  1/2 50% 3/6\r  1/2 100% 6/6\x1b[K\n"
    assert last_frame(raw) == "  1/2 100% 6/6"


def test_unknown_runner_kind_names_the_valid_ones() -> None:
    from tasks.errors import RunnerError

    with pytest.raises(RunnerError, match="valid: local"):
        make_runner("kubernetes")
