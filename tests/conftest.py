"""Shared fixtures: real servers started once per session on free loopback ports.

- ``mlflow_server``: a real ``mlflow server`` (SQLite backend, proxied artifacts).
- ``prefect_api``: Prefect's test harness (a real, temporary Prefect API on SQLite).
- ``prefect_server``: a real ``prefect server start`` (SQLite, scheduler on) for schedules,
  ``trainyard serve`` and workers, which run in other processes.
- ``tiny_dataset``: a small generated YOLO dataset (the demo generator, fewer/smaller images).
Servers are stopped by the fixtures themselves; nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest
import yaml

from tasks.demo_data import DemoSpec, generate_demo_dataset

if TYPE_CHECKING:
    from tasks.adapters.mlflow_tracking import Tracker

pytest_plugins = ["tests.s3server"]  # moto S3 server, fault proxy, AWS test environment

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

TINY = DemoSpec(train_images=16, val_images=8, size=64, seed=1)


def pytest_configure(config: pytest.Config) -> None:
    # Prefect's temporary server per command in every test, and in every command a test starts: a test
    # must leave no background server behind. tests/flows/test_prefect_api.py tests the shared one.
    os.environ.setdefault("TRAINYARD_PREFECT_API", "ephemeral")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def serving(cmd: list[str], health: str, log_path: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run a server in its own process group until ``health`` answers; stop the whole group after."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(health, timeout=180, proc=proc)
            yield
        finally:
            _stop_group(proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    uri = f"http://127.0.0.1:{port}"
    with serving(cmd, f"{uri}/health", root / "server.log"):
        yield uri


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``prefect server start`` on a free loopback port; yields its API URL (…/api)."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(prefect_env(root))
    env.update(
        {
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
            "PREFECT_UI_ENABLED": "false",
            # The scheduler creates runs of new schedules every few seconds instead of every minute.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "3",
        }
    )
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    api = f"http://127.0.0.1:{port}/api"
    with serving(cmd, f"{api}/health", root / "server.log", env):
        yield api


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for a Prefect process of a test: its own home, no telemetry, quick polling."""
    env = {
        "PREFECT_HOME": str(home / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def cli_env(tmp_path: Path, api_url: str) -> dict[str, str]:
    """Environment for a `trainyard` or `prefect` command a test starts against the Prefect API ``api_url``:
    none of this session's Prefect, MLflow or pytest settings, an own Ultralytics config folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINYARD_PREFECT"))}
    env.update(prefect_env(tmp_path, api_url))
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "yolo")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid dataset; tests must not modify it (copy it first)."""
    return generate_demo_dataset(tmp_path_factory.mktemp("data") / "tiny", TINY)


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    """A docker SDK client of a running engine; skips without one (fails under TRAINYARD_REQUIRE_DOCKER=1)."""
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        if os.environ.get("TRAINYARD_REQUIRE_DOCKER") == "1":
            pytest.fail(f"TRAINYARD_REQUIRE_DOCKER=1 but no Docker engine answers: {exc}")
        pytest.skip(f"no Docker engine here ({exc})")
    return client


@pytest.fixture
def yolo_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fresh Ultralytics settings (all integrations on, as on a new machine) in a temp dir."""
    path = tmp_path / "ultralytics-config"
    path.mkdir()
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(path))
    return path


def write_params(
    path: Path, data_source: Path, *, tracking_uri: str | None, experiment: str, stage_root: Path, **train: object
) -> Path:
    """A params.yaml for fast CPU runs: yolo11n from scratch at imgsz 64."""
    params = {
        "data": {"source": str(data_source)},
        "stage": {"root": str(stage_root)},
        "train": {
            "model": "yolo11n.yaml",
            "epochs": 2,
            "imgsz": 64,
            "batch": 8,
            "device": "cpu",
            "workers": 0,
            "seed": 0,
            "deterministic": True,
            "plots": True,
            **train,
        },
        "runner": {"kind": "local"},
        "tracking": {"uri": tracking_uri, "experiment": experiment},
    }
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def flow_params(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_server: str,
    tiny_dataset: Path,
    experiment: str,
    **train: object,
) -> Path:
    """A copy of the tiny dataset and a params.yaml for a quick in-process flow run (imgsz 32, no plots)."""
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    return write_params(
        tmp_path / "params.yaml",
        data,
        tracking_uri=mlflow_server,
        experiment=experiment,
        stage_root=tmp_path / "stage",
        **{"imgsz": 32, "plots": False, **train},
    )


def like_a_users_machine(mp: pytest.MonkeyPatch, work: Path) -> None:
    """Environment for an in-process flow run that sees what a user's machine would.

    Ultralytics disables its own MLflow callback under pytest and reads the user's settings: the
    training process gets a fresh config (integrations on) with pytest hidden from it. MLflow's
    system metrics are sampled every second, so a seconds-long training has some.
    """
    (work / "ultralytics").mkdir(exist_ok=True)
    mp.setenv("YOLO_CONFIG_DIR", str(work / "ultralytics"))
    mp.delenv("PYTEST_CURRENT_TEST", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")


def local_store(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, experiment: str
) -> tuple[Path, "Tracker"]:
    """A params.yaml with the default local tracking store beside it, and a Tracker on that store."""
    from tasks.adapters.mlflow_tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = write_params(
        tmp_path / "params.yaml", tiny_dataset, tracking_uri=None, experiment=experiment, stage_root=tmp_path / "stage"
    )
    return params, Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def copy_dataset(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    for p in dest.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return dest


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
