"""Real-world layouts train end to end: validate, stage, 1 epoch through the flow, one MLflow run.

A representative handful of tests/tasks/test_dataset_layouts.py (which checks all of them up
to Ultralytics' own loader): a Roboflow export, absolute image lists reaching a folder outside
the dataset's, a polygon-labelled set, and a COCO-style yaml named by its file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.adapters.mlflow_tracking import Tracker
from tests.conftest import write_params
from tests.tasks.test_dataset_layouts import LAYOUTS

pytestmark = pytest.mark.slow

TRAINED = (
    "roboflow-export",
    "data-outside-absolute-list",
    "polygon-labels",
    "coco-txt-lists-absolute",
    "source-is-the-yaml",
)


@pytest.mark.parametrize("layout", [lay for lay in LAYOUTS if lay.id in TRAINED], ids=lambda lay: lay.id)
def test_layout_trains_one_epoch_into_one_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_server: str, prefect_api: None, layout: object
) -> None:
    from flows.train import train_flow

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    source = layout.build(tmp_path / "src")  # type: ignore[attr-defined]
    experiment = f"layouts-{layout.id}"  # type: ignore[attr-defined]
    params = write_params(
        tmp_path / "params.yaml",
        source,
        tracking_uri=mlflow_server,
        experiment=experiment,
        stage_root=tmp_path / "stage",
        epochs=1,
        imgsz=32,
        plots=False,
        batch=4,
    )

    result = train_flow(params_path=str(params))

    tracker = Tracker(mlflow_server)
    runs = tracker.search_runs(experiment)
    assert [r.run_id for r in runs] == [result.run_id]
    run = runs[0]
    assert run.status == "FINISHED"
    report = json.loads((Path(result.run_dir) / "validation.json").read_text())
    assert report["ok"] and run.tags["trainyard.images_train"] == str(report["splits"]["train"]["images"])
    assert run.tags["trainyard.data_warnings"] == str(report["warning_count"])
    assert "validation.json" in set(tracker.list_artifacts(result.run_id))
    # what trained is the staged copy the data hash names, never the source
    staged = tmp_path / "stage" / result.key["trainyard.data_hash"].removesuffix(".dir")
    trained_yaml = (Path(result.run_dir) / "data.yaml").read_text()
    assert str(staged) in trained_yaml and str(source) not in trained_yaml
    rows = (Path(result.run_dir) / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + epoch 1
