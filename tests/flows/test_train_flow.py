"""The train flow end to end: real Prefect API, real MLflow server, real YOLO11 training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tasks.data_wait import IMAGES_PER_S, LOOP_S, TAG as DATA_WAIT_TAG, WAIT_PCT, WAIT_S
from tasks.errors import DatasetError, TrackingError
from tasks.params import load_params, params_hash
from tasks.adapters.mlflow_tracking import Tracker
from tasks.adapters.git_dvc import code_version, dvc_dir_md5
from tests.conftest import copy_dataset, free_port, like_a_users_machine, write_params

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
    like_a_users_machine(mp, work)
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
    params = load_params(trained["params"], ["train.epochs=2"])
    # The params table holds the Ultralytics arguments under their own names, nothing else (Ultralytics'
    # own MLflow callback would add its trainer's ~100 args, or a second run in an experiment of its own)
    assert run.params == params.mlflow_params()
    assert run.params["epochs"] == "2" and run.params["model"] == "yolo11n.yaml" and "data.source" not in run.params
    # trainyard's own settings are tags, out of the way of the comparison
    assert run.tags["trainyard.params.stage.root"] == str(trained["work"] / "stage")
    assert {k for k in run.tags if k.startswith("trainyard.params.")} == set(params.settings_tags())
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
    metrics_json = json.loads((Path(trained["result"].run_dir) / "metrics.json").read_text())
    # best.pt's values, under metrics.json's names, logged once at the last epoch
    for key in ("mAP50", "mAP50-95", "precision", "recall", "epochs"):
        assert final[key] == pytest.approx(metrics_json[key]), key
        assert tracker.metric_history(run_id, key) == [(2, final[key])], key


def test_data_wait_is_logged_per_epoch_and_the_demo_is_not_data_starved(trained: dict) -> None:
    tracker: Tracker = trained["tracker"]
    run_id = trained["result"].run_id
    for key in (WAIT_S, LOOP_S, WAIT_PCT, IMAGES_PER_S):
        assert [step for step, _ in tracker.metric_history(run_id, key)] == [1, 2], key
    assert all(0 <= pct < 100 for _, pct in tracker.metric_history(run_id, WAIT_PCT))
    (run,) = tracker.search_runs("flow-test")
    verdict = run.tags[DATA_WAIT_TAG]
    assert verdict.startswith(("not data-starved: ", "some data wait: ")), verdict
    assert "images/s over 1 epoch" in verdict  # epoch 1 (loader start-up) left out


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


def test_best_pt_is_a_registered_pyfunc_model_with_alias_candidate(trained: dict) -> None:
    import mlflow
    import pandas as pd

    tracker: Tracker = trained["tracker"]
    run_id = trained["result"].run_id
    run = tracker.client.get_run(run_id)
    assert run.outputs.model_outputs, "the run has no logged model (the runs table's Models column)"
    [version] = tracker.run_versions("flow-test", run_id)  # named after the experiment
    assert "candidate" in version.aliases
    assert version.tags["trainyard.data_hash"] == run.data.tags["trainyard.data_hash"]
    assert version.tags["trainyard.key"] == run.data.tags["trainyard.key"]
    assert float(version.tags["trainyard.mAP50-95"]) == pytest.approx(run.data.metrics["mAP50-95"], abs=1e-5)
    assert run.data.tags["trainyard.model_version"] == f"flow-test/{version.version}"
    # the logged model names its version: the runs table's Models column shows "flow-test v1" from it
    logged = tracker.client.get_logged_model(run.outputs.model_outputs[0].model_id)
    linked = json.loads(logged.tags["mlflow.modelVersions"])
    assert [(e["name"], str(e["version"])) for e in linked] == [("flow-test", version.version)]
    assert tracker.alias_version("flow-test", "champion") is None  # promote: manual

    mlflow.set_tracking_uri(tracker.uri)  # also exports MLFLOW_TRACKING_URI: unset below, later tests read it
    try:
        model = mlflow.pyfunc.load_model("models:/flow-test@candidate")
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert model.metadata.signature.inputs.input_names() == ["image"]
    images = sorted((trained["data"] / "images" / "val").iterdir())[:2]
    out = model.predict(pd.DataFrame({"image": [str(p) for p in images]}), params={"conf": 0.001})
    assert list(out.columns) == ["image", "class_id", "class_name", "confidence", "x1", "y1", "x2", "y2"]
    assert set(out["image"]) <= {0, 1} and (out["confidence"] >= 0.001).all()
    # the input example MLflow stored (base64 PNG) is a valid input
    example = model.input_example
    assert isinstance(model.predict(example), pd.DataFrame)
