"""The trainyard CLI: one clear message and a non-zero exit on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from tests.conftest import copy_dataset, local_store, write_params


def test_validate_lists_every_problem_with_file_and_line(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    labels = sorted((data / "labels" / "val").glob("*.txt"))
    labels[0].write_text("0 0.5 0.5 0.2\n")
    labels[1].write_text("1 1.7 0.5 0.2 0.2\n")
    report = tmp_path / "report.json"
    code = main(["validate", "--data", str(data), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("trainyard: error: dataset") and "2 problems" in err
    assert f"labels/val/{labels[0].name}:1:" in err and f"labels/val/{labels[1].name}:1:" in err
    assert json.loads(report.read_text())["problem_count"] == 2


def test_validate_ok_prints_counts(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--data", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out and "train 16 images" in out and "val 8 images" in out


def test_run_rejects_a_typo_before_starting_anything(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = write_params(
        tmp_path / "params.yaml", tiny_dataset, tracking_uri=None, experiment="x", stage_root=tmp_path / "stage"
    )
    code = main(["run", "--params", str(params), "--set", "train.epoch=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.epoch" in err and "did you mean 'train.epochs'" in err and "--set train.epoch=3" in err
    assert not (tmp_path / "stage").exists() and not (tmp_path / "runs").exists()


def test_run_refuses_weights_it_would_have_to_download(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = write_params(
        tmp_path / "params.yaml",
        tiny_dataset,
        tracking_uri=None,
        experiment="x",
        stage_root=tmp_path / "stage",
        model="yolo11n.pt",
    )
    code = main(["train", "--params", str(params), "--run-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "yolo11n.pt" in err and "never downloads" in err


def test_evaluate_without_a_run_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--run-dir", str(tmp_path / "nothing")]) == 2  # a usage error (README exit codes)
    assert "trainyard train --run-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_ui_serves_the_local_store(tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import subprocess

    from tests.conftest import VENV_BIN, free_port, wait_http

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = write_params(
        tmp_path / "params.yaml", tiny_dataset, tracking_uri=None, experiment="x", stage_root=tmp_path / "stage"
    )
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "trainyard"), "ui", "--params", str(params), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180, proc=proc)
        assert (tmp_path / "mlflow.db").exists()  # the store beside params.yaml, as documented
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_doctor_passes_locally_and_fails_with_the_fix_when_mlflow_is_down(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import free_port

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = write_params(
        tmp_path / "params.yaml", tiny_dataset, tracking_uri=None, experiment="x", stage_root=tmp_path / "stage"
    )
    assert main(["doctor", "--params", str(params)]) == 0
    out = capsys.readouterr().out
    assert "ok    data source" in out and "gpus (nvml)" in out and out.rstrip().endswith("ready")
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["doctor", "--params", str(params), "--set", f"tracking.uri={dead}"]) == 4  # tracking
    captured = capsys.readouterr()
    assert "FAIL  mlflow" in captured.out and dead in captured.out and "fix:" in captured.out
    assert "required check(s) failed: mlflow" in captured.err


def test_sync_finishes_what_an_outage_left_and_says_so(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from tasks.run_finish import Unfinished, record_unfinished

    params, tracker = local_store(tmp_path, tiny_dataset, monkeypatch, "x")
    assert main(["sync", "--params", str(params)]) == 0
    assert "nothing to sync" in capsys.readouterr().out
    run_id = tracker.start_run("x", "r", tags={}, params={})
    run_dir = tmp_path / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "results.csv").write_text("epoch,train/box_loss\n1,2.0\n2,1.0\n")
    record_unfinished(tmp_path, Unfinished(run_id, str(run_dir), tracker.shown, True, time.time(), "down"))
    assert main(["sync", "--params", str(params)]) == 0
    assert f"finished MLflow run {run_id}" in capsys.readouterr().out
    assert tracker.get_run(run_id).status == "FINISHED"


def test_ui_refuses_a_taken_port_with_a_hint(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = write_params(
        tmp_path / "params.yaml", tiny_dataset, tracking_uri=None, experiment="x", stage_root=tmp_path / "stage"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--params", str(params), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port}" in err and "--port" in err


@pytest.mark.slow
def test_ui_says_its_url_once_it_answers_and_sigterm_stops_its_server(tmp_path: Path, tiny_dataset: Path) -> None:
    import os
    import signal
    import socket
    import subprocess
    import time

    from tests.conftest import VENV_BIN, free_port

    params = write_params(
        tmp_path / "params.yaml", tiny_dataset, tracking_uri=None, experiment="x", stage_root=tmp_path / "stage"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [str(VENV_BIN / "trainyard"), "ui", "--params", str(params), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines = []
    while not any(line.startswith("MLflow UI on") for line in lines) and len(lines) < 50:
        lines.append(proc.stdout.readline().decode())  # mlflow's own start-up lines come first
    assert lines[-1].startswith(f"MLflow UI on http://127.0.0.1:{port}"), lines  # printed once it answers
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    time.sleep(1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # nothing left listening


def test_promote_moves_champion_and_refuses_other_data_with_the_fix(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    params, tracker = local_store(tmp_path, tiny_dataset, monkeypatch, "x")
    runs = []
    for data in ("a.dir", "b.dir"):
        run_id = tracker.start_run("x", data, tags={}, params={})
        version = tracker.register_version("x", (tmp_path / data).as_uri(), run_id, {"trainyard.data_hash": data})
        tracker.set_alias("x", "candidate", version)
        runs.append(run_id)
    assert main(["promote", "--params", str(params), runs[0]]) == 0
    assert "x version 1 is champion now" in capsys.readouterr().out
    assert main(["promote", "--params", str(params), "candidate"]) == 2  # version 2: trained on b.dir
    err = capsys.readouterr().err
    assert "b.dir" in err and "a.dir" in err and "--force" in err and "Traceback" not in err
    assert main(["promote", "--params", str(params), "candidate", "--force"]) == 0
    assert tracker.alias_version("x", "champion").run_id == runs[1]  # type: ignore[union-attr]
    # an alias stands for its run where a run id is expected; a typo says what is valid
    assert main(["reproduce", "--params", str(params), "chmpion"]) == 2
    assert "neither an MLflow run id" in capsys.readouterr().err
