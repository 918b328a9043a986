"""`trainyard runs` / `trainyard compare`: the params that differ and the final metrics, in a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from tasks.adapters.mlflow_tracking import RunRecord
from tasks.compare import compare_table, differing_params, runs_table
from tests.conftest import local_store


def _run(run_id: str, name: str, lr0: str, mAP: float) -> RunRecord:
    params = {"train.lr0": lr0, "train.epochs": "5", "data.source": f"/data/{run_id}"}
    tags = {"trainyard.data_hash": "6db155e7e2f5.dir", "trainyard.params_hash": run_id * 4}
    return RunRecord(run_id, name, "FINISHED", "1", params, tags, {"mAP50-95": mAP, "mAP50": mAP * 2})


def test_only_params_that_differ_are_columns() -> None:
    runs = [_run("aaaa1111", "yolo11n ep5 lr0=0.01", "0.01", 0.31), _run("bbbb2222", "yolo11n ep5", "0.002", 0.25)]
    assert differing_params(runs) == ["train.lr0"]  # not epochs (same), not data.source (a location)
    text = runs_table(runs)
    assert "lr0" in text.splitlines()[0] and "epochs" not in text.splitlines()[0]
    assert "0.3100" in text and "yolo11n ep5 lr0=0.01" in text and "aaaa1111" in text
    side = compare_table(runs)
    assert "train.lr0" in side and "mAP50-95" in side and "0.2500" in side


def test_the_commands_read_a_real_store(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    params, tracker = local_store(tmp_path, tiny_dataset, monkeypatch, "cmp")
    ids = []
    for lr0, score in (("0.01", 0.4), ("0.002", 0.3)):
        run_id = tracker.start_run("cmp", f"yolo11n ep2 lr0={lr0}", tags={}, params={"train.lr0": lr0})
        tracker.log_metrics(run_id, {"mAP50-95": score}, step=2)
        tracker.end_run(run_id)
        ids.append(run_id)
    assert main(["runs", "--params", str(params)]) == 0
    out = capsys.readouterr().out
    assert "yolo11n ep2 lr0=0.01" in out and "yolo11n ep2 lr0=0.002" in out and "0.4000" in out
    assert main(["compare", *ids, "--params", str(params)]) == 0
    out = capsys.readouterr().out
    assert "train.lr0" in out and out.count("open ") == 2
