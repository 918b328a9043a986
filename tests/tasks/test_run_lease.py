"""Who owns a RUNNING run: stale runs are recognised and marked KILLED; an interrupted training resumes its own run."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from tasks.adapters.mlflow_tracking import RunRecord, Tracker
from tasks.job import failure_text, prepare_run_dir
from tasks.run_lease import (
    HEARTBEAT_TAG,
    HOST_TAG,
    LEASE,
    PID_TAG,
    RUN_DIR_TAG,
    owner_tags,
    reap_stale_runs,
    resumable_run,
    stale_reason,
)
from tests.tasks.test_job import write_checkpoint

HOST = socket.gethostname()


def _tags(pid: int, beat: float, host: str = HOST) -> dict[str, str]:
    return {HOST_TAG: host, PID_TAG: str(pid), HEARTBEAT_TAG: f"{beat:.0f}"}


def test_a_live_owner_keeps_its_run_and_a_dead_one_loses_it_at_once() -> None:
    now = time.time()
    assert stale_reason(_tags(os.getpid(), now), now) is None
    reason = stale_reason(_tags(4242, now - 5), now, alive=lambda pid: False)
    assert reason is not None and "pid 4242" in reason and HOST in reason


def test_an_owner_on_another_host_is_judged_by_its_heartbeat_lease() -> None:
    now = time.time()
    assert stale_reason(_tags(1, now - LEASE + 10, host="elsewhere"), now) is None
    reason = stale_reason(_tags(1, now - LEASE - 10, host="elsewhere"), now)
    assert reason is not None and "no heartbeat" in reason and "elsewhere" in reason


def test_runs_without_a_heartbeat_are_left_alone() -> None:
    assert stale_reason({}, time.time()) is None  # another tool's run, or an older trainyard's


def test_reaping_marks_only_orphaned_runs_killed_with_the_reason(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    alive = tracker.start_run("e", "alive", tags=owner_tags(tmp_path / "a"), params={})
    orphan = tracker.start_run("e", "orphan", tags={**owner_tags(tmp_path / "b"), PID_TAG: "999999999"}, params={})
    reaped = reap_stale_runs(tracker, "e")
    assert [r.run_id for r in reaped] == [orphan]
    assert tracker.get_run(alive).status == "RUNNING"
    run = tracker.get_run(orphan)
    assert run.status == "KILLED" and "orchestrator lost" in run.tags["trainyard.error"]


def _record(run_id: str, run_dir: Path, key: str = "k", **tags: str) -> RunRecord:
    return RunRecord(run_id, run_id, "KILLED", "1", {}, {"trainyard.key": key, RUN_DIR_TAG: str(run_dir), **tags}, {})


def test_an_interrupted_run_of_the_same_training_with_a_checkpoint_is_resumed(tmp_path: Path) -> None:
    with_ckpt, without = tmp_path / "a", tmp_path / "b"
    write_checkpoint(with_ckpt, epoch=1)
    without.mkdir()
    runs = [_record("new", without), _record("old", with_ckpt)]
    assert resumable_run(runs, "k", None) is runs[1]
    assert resumable_run(runs, "other key", None) is None
    assert resumable_run(runs, "k", tmp_path / "elsewhere") is None  # the caller fixed another run dir
    assert resumable_run([_record("r", with_ckpt, **{"trainyard.reproduces": "x"})], "k", None) is None
    assert resumable_run([_record("c", with_ckpt, **{"trainyard.complete": "true"})], "k", None) is None


def test_a_run_dir_holding_a_resumable_checkpoint_is_moved_aside_not_wiped(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "dvc"
    write_checkpoint(run_dir, epoch=3)
    (run_dir / "results.csv").write_text("epoch,x\n1,0\n")
    said: list[str] = []
    prepare_run_dir(run_dir, said.append)
    aside = tmp_path / "runs" / "dvc.interrupted-1"
    assert not any(run_dir.iterdir()) and (aside / "weights" / "last.pt").exists()
    assert len(said) == 1 and str(aside) in said[0] and "epoch 4" in said[0]


def test_the_error_tag_of_an_interrupted_run_says_how_to_go_on(tmp_path: Path) -> None:
    from tasks.errors import Interrupted

    (tmp_path / "results.csv").write_text("epoch,x\n1,0\n2,0\n")
    write_checkpoint(tmp_path, epoch=1)
    text = failure_text(Interrupted(2), tmp_path)
    assert text.startswith("interrupted by SIGINT after epoch 2") and "resumes it from" in text
    (tmp_path / "weights" / "last.pt").unlink()
    assert "trains it again from epoch 1" in failure_text(Interrupted(15), tmp_path)
    assert failure_text(RuntimeError("bad http://u:pw@h/x"), tmp_path) == "bad http://u:***@h/x"


def test_a_run_dir_is_owned_by_one_training_and_the_refusal_names_the_owner(tmp_path: Path) -> None:
    import pytest

    from tasks.errors import RunnerError
    from tasks.run_lease import RunDirLock

    run_dir = tmp_path / "runs" / "dvc"
    with RunDirLock(run_dir) as first:
        first.claim("abc123")
        with pytest.raises(RunnerError) as info:
            with RunDirLock(run_dir):
                pass
        message = str(info.value)
        assert str(run_dir) in message and f"pid {os.getpid()}" in message and "abc123" in message
    with RunDirLock(run_dir):  # released on exit (and by the kernel when its owner dies)
        pass
