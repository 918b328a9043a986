"""Scheduled runs against a real `prefect server start`: `trainyard serve`, skip-if-unchanged, artifacts.

`trainyard serve` runs in its own process group, with prefect.yaml's short interval
schedule; the test waits (bounded) for two scheduled flow runs and stops the server it served.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tasks.adapters.mlflow_tracking import Tracker
from tests.conftest import REPO, VENV_BIN, _stop_group, cli_env, copy_dataset, write_params

pytestmark = pytest.mark.slow


@contextmanager
def prefect_client(api: str) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            yield client


def flow_runs_of(client: Any, deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
    )


def summary_of(client: Any, flow_run_id: Any) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["trainyard-train"])),
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
    )
    assert len(found) == 1, f"flow run {flow_run_id} published {len(found)} summaries"
    return str(found[0].data)


def test_serve_runs_the_schedule_and_skips_an_unchanged_second_run(
    tmp_path: Path, prefect_server: str, mlflow_server: str, tiny_dataset: Path
) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    write_params(
        tmp_path / "params.yaml",
        data,
        tracking_uri=mlflow_server,
        experiment="scheduled",
        stage_root=tmp_path / "stage",
        epochs=1,
        imgsz=32,
        plots=False,
    )
    (tmp_path / "prefect.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "schedule-test",
                "deployments": [
                    {
                        "name": "every-15s",
                        "entrypoint": "flows/train.py:train_flow",
                        "parameters": {"params_path": "params.yaml", "overrides": []},
                        "schedules": [{"interval": 15}],
                        "work_pool": {"name": "trainyard"},
                    }
                ],
            }
        )
    )
    (tmp_path / "yolo").mkdir()
    env = cli_env(tmp_path, prefect_server)
    log = (tmp_path / "serve.log").open("wb")
    # started from another folder on purpose: serve must resolve params.yaml next to prefect.yaml
    serve = subprocess.Popen(
        [str(VENV_BIN / "trainyard"), "serve", "--file", str(tmp_path / "prefect.yaml")],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with prefect_client(prefect_server) as client:
            done = _wait_for_completed(client, "every-15s", 2, serve, tmp_path / "serve.log", timeout=420)
            first, second = done[:2]
            trained, skipped = summary_of(client, first.id), summary_of(client, second.id)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGINT)  # as Ctrl-C: the runner pauses the schedule and exits
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _stop_group(serve)
        log.close()

    tracker = Tracker(mlflow_server)
    runs = tracker.search_runs("scheduled")
    assert len(runs) == 1, "the unchanged second run must not train again"
    run = runs[0]
    assert run.status == "FINISHED"
    for tag in ("data_hash", "params_hash", "env_digest", "code_commit", "seed", "key"):
        assert run.tags.get(f"trainyard.{tag}"), f"missing trainyard.{tag}"
    assert run.tags["trainyard.prefect.deployment"] == "every-15s"
    assert run.tags["trainyard.prefect.flow_run_id"] == str(first.id)
    assert "**trained**" in trained and run.run_id in trained and run.tags["trainyard.data_hash"] in trained
    assert "**up to date**" in skipped and run.run_id in skipped
    assert f"{mlflow_server}/#/experiments/{run.experiment_id}/runs/{run.run_id}" in skipped
    # served deployments are paused when `trainyard serve` stops, so no run piles up behind it
    with prefect_client(prefect_server) as client:
        deployment = client.read_deployment_by_name("train/every-15s")
        assert all(not s.active for s in deployment.schedules) or deployment.paused


def _wait_for_completed(
    client: Any, deployment: str, count: int, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"trainyard serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        runs = flow_runs_of(client, deployment)
        failed = [r for r in runs if r.state and r.state.is_final() and not r.state.is_completed()]
        if failed:
            pytest.fail(f"scheduled run {failed[0].name} ended {failed[0].state.name}:\n{log.read_text()[-6000:]}")
        done = [r for r in runs if r.state and r.state.is_completed()]
        if len(done) >= count:
            return done
        time.sleep(2)
    pytest.fail(f"fewer than {count} scheduled runs completed in {timeout:.0f} s:\n{log.read_text()[-6000:]}")


def _prefect(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> str:
    proc = subprocess.run(
        [str(VENV_BIN / "prefect"), "--no-prompt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_prefect_deploy_of_the_shipped_prefect_yaml_and_a_process_worker_run(
    tmp_path: Path, prefect_server: str, mlflow_server: str, tiny_dataset: Path
) -> None:
    """The process pool, as documented: `prefect deploy` from the checkout, then a worker runs a flow run."""
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    params = write_params(
        tmp_path / "params.yaml",
        data,
        tracking_uri=mlflow_server,
        experiment="worker",
        stage_root=tmp_path / "stage",
        epochs=1,
        imgsz=32,
        plots=False,
    )
    (tmp_path / "yolo").mkdir()
    env = cli_env(tmp_path, prefect_server)
    _prefect(["work-pool", "create", "trainyard", "--type", "process", "--overwrite"], env, REPO, 120)
    _prefect(["deploy", "--name", "nightly-train", "--name", "train"], env, REPO, 240)

    with prefect_client(prefect_server) as client:
        nightly = client.read_deployment_by_name("train/nightly-train")
        [schedule] = nightly.schedules
        assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "Europe/Berlin"
        assert nightly.work_pool_name == "trainyard"
        on_demand = client.read_deployment_by_name("train/train")
        run = client.create_flow_run_from_deployment(on_demand.id, parameters={"params_path": str(params)})

    out = _prefect(["worker", "start", "--pool", "trainyard", "--run-once", "--limit", "1"], env, tmp_path, 420)
    with prefect_client(prefect_server) as client:
        state = client.read_flow_run(run.id).state
        assert state is not None and state.is_completed(), f"flow run ended {state}:\n{out[-4000:]}"
        assert "**trained**" in summary_of(client, run.id)
    [mlflow_run] = Tracker(mlflow_server).search_runs("worker")
    assert mlflow_run.status == "FINISHED" and mlflow_run.tags["trainyard.prefect.deployment"] == "train"
    assert mlflow_run.tags["trainyard.prefect.flow_run_id"] == str(run.id)
