"""Run names a person can tell apart in the MLflow runs table, and the run's description."""

from __future__ import annotations

from pathlib import Path

from tasks.params import load_params
from tasks.run_naming import description, readable_name
from tests.tasks.test_params import TYPICAL, write
from tests.tasks.test_repro_key import KEY


def test_names_start_with_what_differs_between_runs(tmp_path: Path) -> None:
    path = write(tmp_path, TYPICAL)
    plain = readable_name(load_params(path))
    assert plain.startswith("yolo11n ep")
    tuned = readable_name(load_params(path, ("train.lr0=0.01", "train.epochs=5", "train.imgsz=64")))
    assert tuned == "yolo11n ep5 lr0=0.01 img64"  # the lr as written, not 0.010000000000000002
    assert len({plain, tuned, readable_name(load_params(path, ("train.lr0=0.02",)))}) == 3


def test_reproductions_and_replays_say_so_first(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, TYPICAL))
    tags = {"trainyard.reproduces": "abcdef0123", "trainyard.reproduces_name": "yolo11n ep5 lr0=0.01"}
    assert readable_name(params, tags) == "repro-of-yolo11n ep5 lr0=0.01"
    assert readable_name(params, tags, stop_after=3) == "replay3-of-yolo11n ep5 lr0=0.01"


def test_the_description_names_data_key_and_outcome_without_passwords(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, TYPICAL), ("data.endpoint_url=http://k:s3cret@minio:9000",))
    text = description(params, KEY, "s3://bucket/data", outcome="trained 5 epochs")
    assert KEY.data_hash in text and KEY.digest[:16] in text and text.startswith("**trained 5 epochs**")
    assert "s3cret" not in text
