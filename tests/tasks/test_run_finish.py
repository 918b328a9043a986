"""Finishing a run later: the journal an outage leaves, and `trainyard sync` working through it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tasks.adapters.mlflow_tracking import Tracker
from tasks.errors import TrackingError
from tasks.run_finish import (
    JOURNAL,
    LAST_INTERRUPTION,
    Unfinished,
    finish_or_defer,
    record_stop,
    record_unfinished,
    sync,
    unfinished,
)
from tests.conftest import free_port

RESULTS = "epoch,time,train/box_loss,metrics/mAP50-95(B)\n1,1.0,2.5,0.1\n2,2.0,2.0,0.2\n3,3.0,1.5,0.3\n"


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "results.csv").write_text(RESULTS)
    return run_dir


def test_a_server_that_stays_away_leaves_a_journal_entry_without_its_password(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    dead = Tracker(f"http://ci:s3cret@127.0.0.1:{free_port()}")
    said: list[str] = []
    started = time.monotonic()
    with pytest.raises(TrackingError) as info:
        finish_or_defer(dead, "abc", run_dir, True, tmp_path, wait=1, warn=said.append)
    assert time.monotonic() - started < 60  # seconds, not MLflow's default minutes
    assert info.value.transient and "trainyard sync" in str(info.value) and "s3cret" not in str(info.value)
    [(path, entry)] = unfinished(tmp_path)
    assert path == tmp_path / JOURNAL / "abc.json" and entry.run_dir == str(run_dir) and entry.complete
    assert "s3cret" not in path.read_text() and entry.tracking.startswith("http://ci:***@127.0.0.1:")


def test_sync_finishes_a_journaled_run_with_every_epoch_once(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("e", "r", tags={}, params={})
    tracker.log_metrics(run_id, {"train/box_loss": 2.5}, step=1)  # live logging got epoch 1 out
    record_unfinished(tmp_path, Unfinished(run_id, str(run_dir), tracker.shown, True, time.time(), "down"))
    report = sync(tracker, tmp_path, "e", lambda text: None)
    assert report.finished == [run_id] and not unfinished(tmp_path)
    run = tracker.get_run(run_id)
    assert run.status == "FINISHED" and run.tags["trainyard.complete"] == "true"
    assert [s for s, _ in tracker.metric_history(run_id, "train/box_loss")] == [1, 2, 3]
    assert "results.csv" in tracker.list_artifacts(run_id)


def test_sync_leaves_records_of_another_tracking_store_alone(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    record_unfinished(tmp_path, Unfinished("x", str(tmp_path), "http://other:5000", True, time.time(), "down"))
    report = sync(tracker, tmp_path, "e", lambda text: None)
    assert report.finished == [] and "http://other:5000" in report.elsewhere[0] and unfinished(tmp_path)


def test_a_broken_journal_entry_is_named(tmp_path: Path) -> None:
    (tmp_path / JOURNAL).mkdir(parents=True)
    (tmp_path / JOURNAL / "bad.json").write_text(json.dumps({"run_id": "x"}))
    with pytest.raises(TrackingError, match="bad.json"):
        unfinished(tmp_path)


@pytest.mark.parametrize(
    ("error", "status", "text"),
    [
        (KeyboardInterrupt(), "KILLED", "interrupted by SIGINT before its first epoch ended"),
        (RuntimeError("boom"), "FAILED", "boom"),
    ],
)
def test_a_stopped_training_ends_its_run_once_with_why(
    tmp_path: Path, error: BaseException, status: str, text: str
) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("bookkeeping", "r", tags={}, params={})
    warnings: list[str] = []
    LAST_INTERRUPTION.clear()
    record_stop(tracker, run_id, "r", tmp_path, error, warnings.append)
    run = tracker.get_run(run_id)
    assert run.status == status and run.tags["trainyard.error"].startswith(text) and warnings == []
    assert (LAST_INTERRUPTION.get("run_id") == run_id) == (status == "KILLED")  # what the CLI's line names
    tracker.set_tags(run_id, {"trainyard.error": "kept"})
    record_stop(tracker, run_id, "r", tmp_path, error, warnings.append)  # the flow sees it again: no second record
    assert tracker.get_run(run_id).tags["trainyard.error"] == "kept"
