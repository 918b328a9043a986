"""`trainyard reproduce`: real trainings, a real MLflow server and Prefect API; CPU runs are bit-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.cli import main as cli
from tasks.errors import DataSourceError, TrackingError
from tasks.adapters.mlflow_tracking import Tracker
from tests.conftest import copy_dataset, write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, prefect_api: None, tiny_dataset: Path):
    from flows.train import train_flow

    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path_factory.mktemp("repro")
    data = copy_dataset(tiny_dataset, work / "data")
    params = write_params(
        work / "params.yaml",
        Path("data"),
        tracking_uri=mlflow_server,
        experiment="repro",
        stage_root=work / "stage",
        epochs=2,
        plots=False,
    )
    try:
        result = train_flow(params_path=str(params))
    finally:
        mp.undo()
    return {"run_id": result.run_id, "params": params, "work": work, "data": data, "tracker": Tracker(mlflow_server)}


@pytest.fixture
def no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_wiped_cache_then_reproduce_is_identical(original: dict, no_env_uri: None) -> None:
    from flows.reproduce import reproduce_flow

    shutil.rmtree(original["work"] / "stage")  # the exact data version must be found again (from the source)
    result = reproduce_flow(run_id=original["run_id"], params_path=str(original["params"]))
    assert result.verdict.kind == "identical", result.verdict.summary()
    assert result.verdict.changed_inputs == [] and result.verdict.epochs == 2
    tracker: Tracker = original["tracker"]
    run = tracker.get_run(result.run_id)
    assert run.tags["trainyard.reproduces"] == original["run_id"] and run.tags["trainyard.verdict"] == "identical"
    assert "reproduction.md" in tracker.list_artifacts(result.run_id)


def test_replay_of_the_first_epoch_keeps_the_schedule(original: dict, no_env_uri: None) -> None:
    from flows.reproduce import reproduce_flow

    result = reproduce_flow(run_id=original["run_id"], params_path=str(original["params"]), epochs=1)
    assert result.verdict.kind == "identical" and result.verdict.epochs == 1
    steps = [s for s, _ in original["tracker"].metric_history(result.run_id, "lr/pg0")]
    assert steps == [1]


def test_changed_params_differ_and_are_named_with_a_nonzero_exit(
    original: dict, no_env_uri: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(
        [
            "reproduce",
            original["run_id"],
            "--params",
            str(original["params"]),
            "--epochs",
            "1",
            "--set",
            "train.box=3.0",
        ]
    )  # the box-loss gain: epoch 1 losses must move
    out = capsys.readouterr().out
    assert code == 7, out
    assert "differs" in out and "first difference: epoch 1" in out and "changed inputs: params_hash" in out


def test_changed_code_commit_is_named(original: dict, no_env_uri: None) -> None:
    from flows.reproduce import reproduce_flow

    tracker: Tracker = original["tracker"]
    real = tracker.get_run(original["run_id"]).tags["trainyard.code_commit"]
    tracker.set_tags(original["run_id"], {"trainyard.code_commit": "0" * 40})
    try:
        result = reproduce_flow(run_id=original["run_id"], params_path=str(original["params"]), epochs=1)
    finally:
        tracker.set_tags(original["run_id"], {"trainyard.code_commit": real})
    assert result.verdict.kind == "identical" and "code_commit" in result.verdict.changed_inputs


def test_edited_label_with_no_cached_copy_names_the_missing_version(original: dict, no_env_uri: None) -> None:
    from flows.reproduce import reproduce_flow

    recorded = original["tracker"].get_run(original["run_id"]).tags["trainyard.data_hash"]
    shutil.rmtree(original["work"] / "stage", ignore_errors=True)
    label = sorted((original["data"] / "labels" / "train").glob("*.txt"))[0]
    before = label.read_text()
    label.write_text(before + "0 0.5 0.5 0.2 0.2\n")
    try:
        with pytest.raises(DataSourceError) as info:
            reproduce_flow(run_id=original["run_id"], params_path=str(original["params"]), epochs=1)
    finally:
        label.write_text(before)
    msg = str(info.value)
    assert recorded in msg and "stage cache" in msg and "now holds" in msg


def test_unknown_run_and_run_without_a_key_are_clear_errors(original: dict, no_env_uri: None) -> None:
    from flows.reproduce import reproduce_flow

    with pytest.raises(TrackingError, match="no MLflow run"):
        reproduce_flow(run_id="0" * 32, params_path=str(original["params"]))
    tracker: Tracker = original["tracker"]
    bare = tracker.start_run("repro-bare", "by hand", tags={}, params={})
    with pytest.raises(TrackingError, match="no reproduction key"):
        reproduce_flow(run_id=bare, params_path=str(original["params"]))
