"""Integrity under concurrency and hostile input, end to end through the `trainyard` command:
one training per run directory, no password anywhere a run writes, no process left by a killed CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tasks.adapters.mlflow_tracking import Tracker, read_results_csv
from tests.conftest import VENV_BIN
from tests.flows.test_bad_days import KillableMlflow, _cli, _project, _wait_for, _wait_for_epochs
from tests.flows.test_bad_days import killable_mlflow as killable_mlflow  # the fixture, used by name

pytestmark = pytest.mark.slow

MARKER = "Zq7markerPW"  # a password no file should ever hold


def test_two_trainings_never_share_a_run_directory(tmp_path: Path, tiny_dataset: Path) -> None:
    _project(tmp_path, tiny_dataset, None)
    run_dir = tmp_path / "shared"
    long = 80  # still training when the second one starts (its Prefect API alone takes seconds)
    first = _cli(tmp_path, "train", "--run-dir", str(run_dir), "--set", f"train.epochs={long}", log="first.log")
    _wait_for_epochs(run_dir / "results.csv", 1, first)
    second = _cli(tmp_path, "train", "--run-dir", str(run_dir), "--set", "train.epochs=3", log="second.log")
    assert second.wait(timeout=300) == 5
    refusal = (tmp_path / "second.log").read_text(errors="replace")
    assert f"run directory {run_dir} is in use by another training (pid {first.pid}" in refusal
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text(errors="replace")[-3000:]
    epochs = [int(row["epoch"]) for row in read_results_csv(run_dir / "results.csv")]
    assert epochs == list(range(1, long + 1))  # the first training's, untouched
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r.status for r in tracker.search_runs("bad-days")] == ["FINISHED"]  # the refused one opened none


def test_no_password_of_any_url_is_written_anywhere(
    tmp_path: Path, tiny_dataset: Path, killable_mlflow: KillableMlflow
) -> None:
    _project(tmp_path, tiny_dataset, None)
    secret_uri = killable_mlflow.uri.replace("http://", f"http://ci:{MARKER}@")
    out = (tmp_path / "cli.log").open("wb")
    env = _env_with(tmp_path, MLFLOW_TRACKING_URI=secret_uri)
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "trainyard"),
            "run",
            "--params",
            str(tmp_path / "params.yaml"),
            "--set",
            f"data.endpoint_url=http://key:{MARKER}@127.0.0.1:9",
            "--set",
            "train.epochs=1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.wait(timeout=600) == 0, (tmp_path / "cli.log").read_text(errors="replace")[-3000:]
    assert "ci:***@127.0.0.1" in (tmp_path / "cli.log").read_text(errors="replace")
    tracker = Tracker(killable_mlflow.uri)
    [run] = tracker.search_runs("bad-days")
    assert run.tags["trainyard.params.data.endpoint_url"] == "http://key:***@127.0.0.1:9"
    # everything the run wrote: MLflow's store and artifacts, the run dir, the stage cache, Prefect's
    # database, the logs and the console
    holders = [p for p in tmp_path.rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]
    assert holders == [], holders


def _env_with(tmp_path: Path, **extra: str) -> dict[str, str]:
    from tests.flows.test_bad_days import _env

    return {**_env(tmp_path), **extra}


def test_a_killed_cli_leaves_no_process_behind(tmp_path: Path, tiny_dataset: Path) -> None:
    _project(tmp_path, tiny_dataset, None)
    proc = _cli(tmp_path, "run")
    results = next(_wait_for(lambda: list(tmp_path.glob("runs/*/results.csv")), proc))
    _wait_for_epochs(results, 1, proc)
    children = _children_of(proc.pid)
    assert children, "the CLI has no children to check"
    os.kill(proc.pid, signal.SIGKILL)  # the CLI only, not its process group
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and [p for p in children if _alive(p) and not _is_prefect_server(p)]:
        time.sleep(0.2)
    assert [p for p in children if _alive(p) and not _is_prefect_server(p)] == []  # the training died with it
    servers = [p for p in children if _alive(p) and _is_prefect_server(p)]
    again = _cli(tmp_path, "run", log="again.log")  # reaps what is left, then resumes the training
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text(errors="replace")[-3000:]
    time.sleep(1)
    assert [p for p in children if _alive(p)] == []
    if servers:
        assert "stopped Prefect's temporary server" in (tmp_path / "again.log").read_text(errors="replace")


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split()[1]  # a zombie has exited


def _is_prefect_server(pid: int) -> bool:
    try:
        return b"prefect.server.api.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
