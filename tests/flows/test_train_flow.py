"""The train flow end to end: real Prefect API, real MLflow server, real YOLO11 training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tasks.errors import DatasetError, TrackingError
from tasks.params import load_params, params_hash
from tasks.adapters.mlflow_tracking import Tracker
from tasks.adapters.git_dvc import code_version, dvc_dir_md5
from tests.conftest import copy_dataset, free_port, write_params

pytestmark = pytest.mark.slow

EPOCH_METRICS = (
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
    "metrics/precisionB",
    "metrics/recallB",
    "metrics/mAP50B",
    "metrics/mAP50-95B",
    "lr/pg0",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, prefect_api: None, tiny_dataset: Path):
    """One real 2-epoch training through the flow; several tests read what it left behind."""
    from flows.train import train_flow

    mp = pytest.MonkeyPatch()
    work = tmp_path_factory.mktemp("flow")
    # Ultralytics disables its own MLflow callback under pytest and reads the user's
    # settings: give the training process a fresh config (integrations on) and hide
    # pytest from it, so this test sees what a user's machine would do.
    (work / "ultralytics").mkdir()
    mp.setenv("YOLO_CONFIG_DIR", str(work / "ultralytics"))
    mp.delenv("PYTEST_CURRENT_TEST", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # samples within a seconds-long training
    data = copy_dataset(tiny_dataset, work / "data")
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    params = write_params(
        work / "params.yaml", data, tracking_uri=mlflow_server, experiment="flow-test", stage_root=work / "stage"
    )
    try:
        result = train_flow(params_path=str(params), overrides=["train.epochs=2"])
    finally:
        mp.undo()
    return {
        "result": result,
        "work": work,
        "data": data,
        "before": before,
        "params": params,
        "tracker": Tracker(mlflow_server),
    }


def test_exactly_one_run_with_params_as_in_params_yaml(trained: dict) -> None:
    tracker: Tracker = trained["tracker"]
    runs = tracker.search_runs("flow-test")
    assert [r.run_id for r in runs] == [trained["result"].run_id]
    run = runs[0]
    assert run.status == "FINISHED"
    expected = load_params(trained["params"], ["train.epochs=2"]).flat()
    # Only our flattened params: Ultralytics' own MLflow callback would have added bare
    # keys like "epochs" or a second run in an experiment of its own.
    assert run.params == expected
    # Ultralytics names its experiment after `project` (our runs/ folder) or /Shared/Ultralytics.
    names = {e.name for e in tracker.client.search_experiments()}
    assert not [n for n in names if "/" in n or "ultralytics" in n.lower()], names


def test_every_epoch_logged_with_step_equal_epoch(trained: dict) -> None:
    tracker: Tracker = trained["tracker"]
    run_id = trained["result"].run_id
    for key in EPOCH_METRICS:
        steps = [step for step, _ in tracker.metric_history(run_id, key)]
        assert steps == [1, 2], f"{key}: {steps}"
    final = tracker.get_run(run_id).metrics
    assert "final/mAP50" in final and "final/mAP50-95" in final


def test_artifacts_weights_results_plots_and_resolved_params(trained: dict) -> None:
    tracker: Tracker = trained["tracker"]
    artifacts = set(tracker.list_artifacts(trained["result"].run_id))
    for name in ("weights/best.pt", "weights/last.pt", "results.csv", "args.yaml", "params.yaml", "metrics.json"):
        assert name in artifacts, sorted(artifacts)
    assert any(a.endswith(".png") for a in artifacts), sorted(artifacts)


def test_reproduction_key_tags_are_correct(trained: dict) -> None:
    tracker: Tracker = trained["tracker"]
    tags = tracker.get_run(trained["result"].run_id).tags
    assert tags["trainyard.data_hash"] == dvc_dir_md5(trained["data"])
    assert tags["trainyard.params_hash"] == params_hash(load_params(trained["params"], ["train.epochs=2"]))
    code = code_version(Path(__file__).resolve().parent)
    assert tags["trainyard.code_commit"] == (code.commit or "none")
    assert tags["trainyard.code_dirty"] in {"true", "false"}
    assert tags["trainyard.env_digest"].startswith("sha256:") and len(tags["trainyard.env_digest"]) == 71
    assert tags["trainyard.seed"] == "0"
    assert tags["trainyard.overrides"] == "train.epochs=2"


def test_run_dir_metrics_json_and_source_untouched(trained: dict) -> None:
    run_dir = Path(trained["result"].run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"mAP50", "mAP50-95", "precision", "recall", "epochs"} <= set(metrics)
    assert metrics["epochs"] == 2
    # Ultralytics writes labels.cache beside the labels: it must land in the staged copy
    data: Path = trained["data"]
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == trained["before"]
    assert list((trained["work"] / "stage").rglob("*.cache")), "the staged copy should hold labels.cache"


def test_broken_dataset_stops_before_any_run(
    tmp_path: Path, mlflow_server: str, prefect_api: None, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.train import train_flow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    label = sorted((data / "labels" / "train").glob("*.txt"))[0]
    label.write_text("7 0.5 0.5 0.2 0.2\n")
    params = write_params(
        tmp_path / "params.yaml",
        data,
        tracking_uri=mlflow_server,
        experiment="flow-fail",
        stage_root=tmp_path / "stage",
    )
    with pytest.raises(DatasetError) as info:
        train_flow(params_path=str(params))
    assert f"labels/train/{label.name}:1: class id 7" in str(info.value)
    assert Tracker(mlflow_server).search_runs("flow-fail") == []
    assert not (tmp_path / "runs").exists()


def test_tracking_server_down_is_one_clear_error(
    tmp_path: Path, prefect_api: None, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.train import train_flow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    params = write_params(
        tmp_path / "params.yaml", tiny_dataset, tracking_uri=dead, experiment="x", stage_root=tmp_path / "stage"
    )
    started = time.monotonic()
    with pytest.raises(TrackingError) as info:  # the flow's preflight is `trainyard doctor`
        train_flow(params_path=str(params))
    assert dead in str(info.value) and "not reachable" in str(info.value) and "mlflow" in str(info.value)
    assert time.monotonic() - started < 120  # not MLflow's minutes of silent retries
    assert not (tmp_path / "runs").exists()


def test_the_runs_table_can_tell_runs_apart(trained: dict) -> None:
    """Name, description, dataset input and system metrics: what the MLflow UI's runs table and run page show."""
    tracker: Tracker = trained["tracker"]
    result = trained["result"]
    run = tracker.get_run(result.run_id)
    assert run.name == "yolo11n ep2"  # model + what the --set changed; the hashes stay in tags
    note = run.tags["mlflow.note.content"]
    assert run.tags["trainyard.data_hash"] in note and note.startswith("**trained 2 epochs: mAP50-95")
    assert tracker.datasets(result.run_id) == [("data", run.tags["trainyard.data_hash"])]
    system = [k for k in run.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
