"""End to end in a real Docker engine: the train flow with the Docker runner, on CPU.

Needs the training image built by `.ci/build-image.sh` (`trainyard-train:ci`, or
TRAINYARD_TEST_IMAGE). Skips without an engine or image, except under
TRAINYARD_REQUIRE_DOCKER=1 (CI), where their absence is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tasks.adapters.mlflow_tracking import Tracker
from tests.conftest import copy_dataset, write_params

pytestmark = pytest.mark.slow
IMAGE = os.environ.get("TRAINYARD_TEST_IMAGE", "trainyard-train:ci")


def _image_id() -> str:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", IMAGE], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("TRAINYARD_REQUIRE_DOCKER") == "1":
            pytest.fail(f"TRAINYARD_REQUIRE_DOCKER=1 but image {IMAGE} is missing: {proc.stderr.strip()}")
        pytest.skip(f"image {IMAGE} not built here (run .ci/build-image.sh)")
    return proc.stdout.strip()


def test_train_flow_in_a_container_started_by_digest(
    tmp_path: Path, mlflow_server: str, prefect_api: None, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.train import train_flow

    image_id = _image_id()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    params = write_params(
        tmp_path / "params.yaml",
        data,
        tracking_uri=mlflow_server,
        experiment="docker-e2e",
        stage_root=tmp_path / "stage",
        epochs=1,
        plots=False,
    )
    result = train_flow(
        params_path=str(params),
        overrides=[
            "runner.kind=docker",
            f"container.image={IMAGE}",
            "container.pull=false",
            "container.gpus=none",
            "container.shm_size=1g",
        ],
    )
    tracker = Tracker(mlflow_server)
    run = tracker.get_run(result.run_id)
    assert run.status == "FINISHED"
    assert run.tags["trainyard.env_kind"] == "docker"
    assert run.tags["trainyard.image_digest"] == run.tags["trainyard.env_digest"] == image_id
    assert [step for step, _ in tracker.metric_history(result.run_id, "metrics/mAP50(B)")] == [1]
    artifacts = set(tracker.list_artifacts(result.run_id))
    assert {"weights/best.pt", "weights/last.pt", "results.csv"} <= artifacts
    assert [r.run_id for r in tracker.search_runs("docker-e2e")] == [result.run_id]  # one run, not two

    runtime = json.loads((Path(result.run_dir) / "outcome.json").read_text())["runtime"]
    assert runtime["in_container"] is True
    assert runtime["uid"] != 0, "the training process must not run as root"
    assert runtime["data_dir_writable"] is False, "the dataset is mounted read-only"
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=org.trainyard.run_dir"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert left == [], "no container may be left behind"


def test_ctrl_c_removes_the_container(tmp_path: Path, tiny_dataset: Path) -> None:
    """A KeyboardInterrupt while training (Ctrl-C, a cancelled flow) leaves no container behind."""
    from tasks.adapters.docker_engine import DockerRunner
    from tasks.stage import stage_local
    from tasks.job import TrainJob

    _image_id()
    staged = stage_local(tiny_dataset, tmp_path / "stage")
    run_dir = tmp_path / "run"
    job = TrainJob(
        run_dir=str(run_dir),
        data_yaml=str(staged.training_yaml(run_dir / "data.yaml")),
        args={"model": "yolo11n.yaml", "epochs": 50, "imgsz": 64, "device": "cpu", "workers": 0},
    )

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        DockerRunner(IMAGE, pull=False, shm_size="1g").run(job, {}, interrupt)
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=org.trainyard.run_dir={run_dir}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert left == []


def test_missing_mount_and_dead_daemon_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.adapters.docker_engine import DockerRunner, docker_client
    from tasks.errors import RunnerError
    from tasks.job import TrainJob

    _image_id()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "data.yaml").write_text(f"path: {tmp_path / 'gone'}\n")
    job = TrainJob(run_dir=str(run_dir), data_yaml=str(run_dir / "data.yaml"), args={"model": "yolo11n.yaml"})
    with pytest.raises(RunnerError, match="cannot mount .*gone.* does not exist"):
        DockerRunner(IMAGE, pull=False).run(job, {}, lambda line: None)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-such.sock'}")
    with pytest.raises(RunnerError, match="Docker daemon is not reachable"):
        docker_client()


def test_a_killed_training_container_is_resumed_in_a_new_one_into_the_same_run(
    tmp_path: Path, mlflow_server: str, prefect_api: None, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docker kill` (a lost node, the host's OOM killer) mid-run: the retry resumes from last.pt."""
    import threading
    import time

    from flows.train import train_flow
    from tasks.job import resume_point

    _image_id()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    params = write_params(
        tmp_path / "params.yaml",
        data,
        tracking_uri=mlflow_server,
        experiment="docker-resume",
        stage_root=tmp_path / "stage",
        epochs=3,
        imgsz=32,
        plots=False,
    )
    killed: list[str] = []

    def kill_after_first_epoch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            for run_dir in (tmp_path / "runs").glob("*"):
                if resume_point(run_dir) is not None:  # epoch 1 is checkpointed; epoch 2 is under way
                    ids = subprocess.run(
                        ["docker", "ps", "-q", "--filter", f"label=org.trainyard.run_dir={run_dir}"],
                        capture_output=True,
                        text=True,
                    ).stdout.split()
                    if ids:
                        subprocess.run(["docker", "kill", ids[0]], capture_output=True)
                        killed.append(ids[0])
                        return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_after_first_epoch, daemon=True)
    watcher.start()
    result = train_flow(
        params_path=str(params),
        overrides=[
            "runner.kind=docker",
            f"container.image={IMAGE}",
            "container.pull=false",
            "container.shm_size=1g",
            "runner.retry_delay=1",
        ],
    )
    watcher.join(timeout=5)
    assert killed, "the container was never killed: the test proved nothing"
    assert len(result.resumed_after) == 1
    tracker = Tracker(mlflow_server)
    assert [r.run_id for r in tracker.search_runs("docker-resume")] == [result.run_id]
    for key in ("train/box_loss", "metrics/mAP50(B)"):
        assert [s for s, _ in tracker.metric_history(result.run_id, key)] == [1, 2, 3], key
    assert tracker.get_run(result.run_id).status == "FINISHED"
