"""Skip unchanged work: same data, params and environment as a finished run -> "up to date", no training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.adapters.mlflow_tracking import Tracker
from tests.conftest import flow_params

pytestmark = pytest.mark.slow


def _summaries(flow_run_ids: list[str]) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["trainyard-train"])))
    by_run = {str(a.flow_run_id): str(a.data) for a in found}
    return [by_run[i] for i in flow_run_ids]


def _flow_run_count() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(limit=200))


def test_unchanged_inputs_are_up_to_date_and_force_or_a_change_retrains(
    tmp_path: Path,
    mlflow_server: str,
    prefect_api: None,
    tiny_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flows.train import train_flow

    params = str(flow_params(tmp_path, monkeypatch, mlflow_server, tiny_dataset, "up-to-date", epochs=1))
    data = tmp_path / "data"
    tracker = Tracker(mlflow_server)

    # a replay of fewer epochs (what `trainyard reproduce --epochs` makes) is not a finished model
    partial = train_flow(params_path=params, overrides=["train.epochs=2"], stop_after=1)
    first = train_flow(params_path=params, overrides=["train.epochs=2"])
    assert first.outcome == "trained" and first.run_id != partial.run_id

    again = train_flow(params_path=params, overrides=["train.epochs=2"], return_state=True)
    second = again.result()
    assert second.outcome == "up to date"
    assert second.run_id == first.run_id
    assert second.metrics["mAP50"] == pytest.approx(first.metrics["mAP50"])
    assert second.run_dir == first.run_dir
    assert len(tracker.search_runs("up-to-date")) == 2, "an unchanged run must not open an MLflow run"
    [summary] = _summaries([str(again.state_details.flow_run_id)])
    assert "**up to date**" in summary and first.run_id in summary

    # `trainyard run` answers the same before starting Prefect at all: no flow run, no Prefect API
    from flows.cli import main

    flow_runs = _flow_run_count()
    assert main(["run", "--params", params, "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and first.run_id in out and "mAP50-95" in out
    assert _flow_run_count() == flow_runs
    # ... and without mlflow, Prefect, torch or Ultralytics in the process (seconds of start-up each)
    probe = (
        "import sys; from flows.cli import main; code = main(sys.argv[1:]);"
        "print('imported:', [m for m in ('mlflow', 'prefect', 'torch', 'ultralytics') if m in sys.modules]);"
        "sys.exit(code)"
    )
    cmd = [sys.executable, "-c", probe, "run", "--params", params, "--set", "train.epochs=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stdout
    assert "up to date" in proc.stdout and first.run_id in proc.stdout

    changed = train_flow(params_path=params, overrides=["train.epochs=2", "train.lr0=0.003"])
    assert changed.outcome == "trained" and changed.run_id != first.run_id
    forced = train_flow(params_path=params, overrides=["train.epochs=2"], force=True)
    assert forced.outcome == "trained" and forced.run_id not in (first.run_id, changed.run_id)
    assert len(tracker.search_runs("up-to-date")) == 4

    # new labels: the data hash changes, so the next unforced run trains again
    label = next((data / "labels" / "train").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    relabelled = train_flow(params_path=params, overrides=["train.epochs=2"])
    assert relabelled.outcome == "trained" and relabelled.key["trainyard.data_hash"] != first.key["trainyard.data_hash"]
