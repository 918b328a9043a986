"""The background Prefect API: started by the first flow command, reused by the next, stopped when asked or idle."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, copy_dataset, prefect_env, write_params

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, idle: float) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI", "TRAINYARD_PREFECT", "PYTEST_"))
    }
    (tmp_path / "prefect" / "home").mkdir(parents=True, exist_ok=True)
    env.update(prefect_env(tmp_path / "prefect"))
    env.update({"YOLO_CONFIG_DIR": str(tmp_path / "yolo"), "TRAINYARD_PREFECT_IDLE": str(idle), "CI": "true"})
    return env


def _trainyard(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(VENV_BIN / "trainyard"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def _state(tmp_path: Path) -> dict[str, object] | None:
    path = tmp_path / "prefect" / "home" / "trainyard-api.json"
    return json.loads(path.read_text()) if path.exists() else None


def _alive(pid: int) -> bool:
    from flows.prefect_api import _alive as running

    return running(pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not _alive(pid)


def test_flow_commands_share_one_background_api_that_stop_ends(tmp_path: Path, tiny_dataset: Path) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    params = write_params(
        tmp_path / "params.yaml", data, tracking_uri=None, experiment="api", stage_root=tmp_path / "stage", plots=False
    )
    env = _env(tmp_path, idle=600)
    first = _trainyard(env, tmp_path, "run", "--params", str(params), "--set", "train.epochs=1")
    assert "started a Prefect API for trainyard" in first.stderr
    state = _state(tmp_path)
    assert state is not None
    pid, url = int(str(state["pid"])), str(state["url"])
    try:
        second = _trainyard(env, tmp_path, "run", "--params", str(params), "--set", "train.epochs=1", "--force")
        assert "started a Prefect API" not in second.stderr and "Starting temporary server" not in second.stderr
        assert _state(tmp_path) == state  # the same server
        body = json.dumps({}).encode()
        request = urllib.request.Request(
            f"{url}/flow_runs/count", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert int(json.loads(resp.read())) == 2  # both runs are in its UI
        assert url in _trainyard(env, tmp_path, "prefect", "status").stdout
        assert "stopped" in _trainyard(env, tmp_path, "prefect", "stop").stdout
        assert _wait_gone(pid, 30) and _state(tmp_path) is None
        assert "no background Prefect API is running" in _trainyard(env, tmp_path, "prefect", "status").stdout
    finally:
        if _alive(pid):
            os.killpg(pid, 9)


def test_an_unused_background_api_stops_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.prefect_api import ensure_api

    for key, value in _env(tmp_path, idle=2).items():
        monkeypatch.setenv(key, value)
    for key in ("TRAINYARD_PREFECT_API", "PREFECT_API_URL"):  # set first, so teardown removes what ensure_api sets
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    notes: list[str] = []
    url = ensure_api(notes.append)
    state = _state(tmp_path)
    assert url and state is not None and url == state["url"], notes
    pid = int(str(state["pid"]))
    try:
        assert _wait_gone(pid, 90), "an idle background API must stop on its own"
        assert _state(tmp_path) is None
    finally:
        if _alive(pid):
            os.killpg(pid, 9)
