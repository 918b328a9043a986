"""The MLflow seam against a real `mlflow server`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks.errors import TrackingError
from tasks.adapters.mlflow_tracking import Tracker, backfill_epochs, metric_name, read_results_csv, resolve_tracking_uri
from tasks.job import append_epoch
from tests.conftest import free_port

RESULTS = """\
                  epoch,                   time,         train/box_loss,   metrics/mAP50(B),   lr/pg0
                      1,                 2.1357,                 3.1,               0.01,      0.001
                      2,                 4.2001,                 2.9,               0.05,      0.002
                      3,                 6.3000,                 2.7,               0.10,      0.003
"""


def test_metric_names_follow_ultralytics_mlflow_convention() -> None:
    assert metric_name("metrics/mAP50-95(B)") == "metrics/mAP50-95B"
    assert metric_name("train/box_loss") == "train/box_loss"


def test_results_csv_is_read_as_numbers_without_wall_time(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text(RESULTS)
    rows = read_results_csv(tmp_path / "results.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and "time" not in rows[0]
    assert rows[2]["metrics/mAP50(B)"] == pytest.approx(0.10)


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path)[0] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("http://a:5000", tmp_path) == ("http://a:5000", "params.yaml tracking.uri")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://b:5000")
    assert resolve_tracking_uri("http://a:5000", tmp_path)[0] == "http://b:5000"


@pytest.mark.slow
def test_backfill_logs_exactly_the_missing_epochs(tmp_path: Path, mlflow_server: str) -> None:
    tracker = Tracker(mlflow_server)
    run_id = tracker.start_run("track-test", "backfill", tags={"t": "1"}, params={"train.epochs": "3"})
    tracker.log_metrics(run_id, {"train/box_loss": 3.1, "metrics/mAP50(B)": 0.01, "lr/pg0": 0.001}, step=1)
    (tmp_path / "results.csv").write_text(RESULTS)
    # epochs.jsonl holds epoch 3 exactly; results.csv rounds it to 6 digits (and is all there is of epoch 2)
    append_epoch(tmp_path, 3, {"train/box_loss": 2.7000000001, "metrics/mAP50(B)": 0.1000000003, "lr/pg0": 0.003})
    assert backfill_epochs(tracker, run_id, tmp_path) == 2
    assert tracker.metric_history(run_id, "metrics/mAP50(B)") == [(1, 0.01), (2, 0.05), (3, 0.1000000003)]
    assert backfill_epochs(tracker, run_id, tmp_path) == 0  # idempotent
    tracker.end_run(run_id)
    record = tracker.get_run(run_id)
    assert record.status == "FINISHED" and record.params == {"train.epochs": "3"} and record.name == "backfill"


def test_unreachable_server_fails_fast_with_the_uri(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match="not reachable") as info:
        Tracker(dead).ping()
    assert dead in str(info.value) and time.monotonic() - started < 10


def test_the_epoch_logger_never_holds_up_training_and_keeps_order(tmp_path: Path) -> None:
    import time

    from tasks.adapters.mlflow_tracking import EpochLogger
    from tests.conftest import free_port

    dead = EpochLogger(Tracker(f"http://127.0.0.1:{free_port()}"), "run", lambda text: None)
    started = time.monotonic()
    for epoch in (1, 2, 3):
        dead.put(epoch, {"train/box_loss": 1.0 / epoch})
    assert time.monotonic() - started < 0.5  # put() only queues
    assert dead.close(timeout=1) == [1, 2, 3]  # left to the back-fill from results.csv

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("e", "r", tags={}, params={})
    live = EpochLogger(tracker, run_id, lambda text: None)
    for epoch in (1, 2, 3):
        live.put(epoch, {"train/box_loss": 1.0 / epoch})
    assert live.close(timeout=30) == []
    assert [s for s, _ in tracker.metric_history(run_id, "train/box_loss")] == [1, 2, 3]


def test_an_unknown_run_is_not_worth_a_retry_and_a_dead_server_is(tmp_path: Path) -> None:
    from tests.conftest import free_port

    with pytest.raises(TrackingError) as missing:
        Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run("deadbeef")
    assert not missing.value.transient and "deadbeef" in str(missing.value)
    with pytest.raises(TrackingError) as down:
        Tracker(f"http://127.0.0.1:{free_port()}").get_run("deadbeef")
    assert down.value.transient


@pytest.mark.slow
def test_three_first_runs_on_a_fresh_store_do_not_race_its_migrations(tmp_path: Path) -> None:
    import sqlite3
    import subprocess
    import sys

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import sys; from tasks.adapters.mlflow_tracking import Tracker; "
        "print(Tracker(sys.argv[1]).start_run('e' + sys.argv[2], 'r', tags={}, params={}))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, store, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(3)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode()[-2000:] for _, err in results]
    tables = [row[0] for row in sqlite3.connect(tmp_path / "mlflow.db").execute("select name from sqlite_master")]
    assert not [t for t in tables if t.startswith("_alembic_tmp")]
    assert (
        len(Tracker(store).search_runs("e0") + Tracker(store).search_runs("e1") + Tracker(store).search_runs("e2")) == 3
    )


def test_a_local_store_keeps_artifacts_beside_it_not_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "cwd"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's own default would be ./mlruns here
    tracker = Tracker(f"sqlite:///{store / 'mlflow.db'}")
    run_id = tracker.start_run("x", "r", tags={}, params={})
    (tmp_path / "note.txt").write_text("hi")
    tracker.log_artifact(run_id, tmp_path / "note.txt")
    assert list(elsewhere.iterdir()) == []
    assert list((store / "mlartifacts").rglob("note.txt"))
