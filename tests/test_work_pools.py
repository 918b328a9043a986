"""The work pool templates of docker/pools/, rendered by the Prefect workers' own code.

No cluster and no GPU here: the Kubernetes Job is checked against the API schema of the
kubernetes client, the Docker container's arguments against docker-py (and, where an
engine runs, by creating the container without starting it).
"""

from __future__ import annotations

import copy
import io
import subprocess
import tarfile
from typing import Any

import pytest

from flows.pools import (
    POOLS_DIR,
    check_kubernetes_template,
    load_template,
    render_docker_create_kwargs,
    render_kubernetes_job,
)
from tasks.errors import DeploymentError

K8S = POOLS_DIR / "kubernetes-gpu.json"
DOCKER = POOLS_DIR / "docker-gpu.json"
# A Prefect server that is not on loopback, as in any real docker pool: the worker then
# needs nothing from a Docker engine to build the container's arguments.
REMOTE_API = {"env": {"PREFECT_API_URL": "http://prefect.internal:4200/api"}}


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    "path, worker",
    [(K8S, "prefect_kubernetes.worker:KubernetesWorker"), (DOCKER, "prefect_docker.worker:DockerWorker")],
)
def test_templates_keep_every_variable_and_setting_of_the_workers_default(path: Any, worker: str) -> None:
    import importlib

    module, cls = worker.split(":")
    default = getattr(importlib.import_module(module), cls).get_default_base_job_template()
    ours = load_template(path)
    # container_create_kwargs is the one exception: the docker template composes it from its own variables
    assert set(default["variables"]["properties"]) - {"container_create_kwargs"} <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) == set(ours["job_configuration"])
    assert ours["variables"]["properties"]["image"]["default"] == "trainyard-train:latest"


def test_kubernetes_defaults_ask_one_gpu_tolerate_gpu_nodes_and_stage_on_an_emptydir() -> None:
    manifest = check_kubernetes_template(load_template(K8S))

    pod = _pod(manifest)
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert container["image"] == "trainyard-train:latest"
    # the image's ENTRYPOINT is the trainer: the worker's command must replace it, not be its arguments
    assert container["command"] == ["/usr/bin/env"] and container["args"] == ["prefect", "flow-run", "execute"]
    assert {"name": "stage", "mountPath": "/stage"} in container["volumeMounts"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["stage"] == {"name": "stage", "emptyDir": {}}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_kubernetes_two_gpus_on_a_node_with_a_local_ssd() -> None:
    variables = {
        "gpus": 2,
        "node_selector": {"trainyard/local-ssd": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "stage_empty_dir": None,
        "stage_host_path": {"path": "/mnt/nvme/trainyard-stage", "type": "Directory"},
        "env": {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"},
        "image": "registry.example/trainyard-train@sha256:" + "a" * 64,
    }

    manifest = check_kubernetes_template(load_template(K8S), variables)

    pod = _pod(manifest)
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"] == variables["image"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.internal:5000"} in container["env"]
    assert pod["nodeSelector"] == variables["node_selector"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    stage = next(v for v in pod["volumes"] if v["name"] == "stage")
    assert stage["hostPath"] == {"path": "/mnt/nvme/trainyard-stage", "type": "Directory"}
    assert not stage.get("emptyDir")


def test_kubernetes_tmpfs_stage_is_an_emptydir_in_memory() -> None:
    manifest = check_kubernetes_template(
        load_template(K8S), {"stage_empty_dir": {"medium": "Memory", "sizeLimit": "64Gi"}}
    )
    stage = next(v for v in _pod(manifest)["volumes"] if v["name"] == "stage")
    assert stage["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}


def test_a_host_path_without_dropping_the_emptydir_is_refused() -> None:
    with pytest.raises(DeploymentError, match=r"volumes\[0\] \(stage\): sets 2 volume sources \(emptyDir, hostPath\)"):
        check_kubernetes_template(load_template(K8S), {"stage_host_path": {"path": "/mnt/nvme/trainyard-stage"}})


def test_job_variable_typos_and_wrong_types_are_refused_before_rendering() -> None:
    template = load_template(K8S)
    with pytest.raises(
        DeploymentError, match="job variable 'gpu' is not a variable of this work pool; did you mean 'gpus'"
    ):
        check_kubernetes_template(template, {"gpu": 2})
    with pytest.raises(DeploymentError, match="Validation failed for field 'gpus'"):
        check_kubernetes_template(template, {"gpus": "two"})


def test_a_broken_kubernetes_template_is_refused_with_the_path() -> None:
    template = load_template(K8S)
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    container["resouces"] = container.pop("resources")
    container["volumeMounts"] = {"stage": "/stage"}

    rendered = render_kubernetes_job(template)  # the worker itself renders it without complaint
    assert "resouces" in _pod(rendered)["containers"][0]

    with pytest.raises(DeploymentError) as err:
        check_kubernetes_template(template, source="broken.json")
    message = str(err.value)
    assert "spec.template.spec.containers[0].resouces: unknown field; did you mean 'resources'?" in message
    assert "spec.template.spec.containers[0].volumeMounts: input should be a valid list" in message


def test_docker_gpus_shm_and_stage_volume_reach_the_docker_sdk_arguments() -> None:
    kwargs = render_docker_create_kwargs(load_template(DOCKER), REMOTE_API)

    assert kwargs["image"] == "trainyard-train:latest"
    assert kwargs["entrypoint"] == ["/usr/bin/env"] and kwargs["command"] == "prefect flow-run execute"
    assert kwargs["device_requests"] == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    assert kwargs["shm_size"] == "8g"
    assert "trainyard-stage:/stage" in kwargs["volumes"]
    assert kwargs["environment"]["PREFECT_API_URL"] == "http://prefect.internal:4200/api"

    host = _docker_py_host_config(kwargs)
    assert host["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host["ShmSize"] == 8 * 1024**3
    assert {"Name": "memlock", "Soft": -1, "Hard": -1} in host["Ulimits"]


def test_docker_selected_gpus_and_host_ipc_for_multi_gpu() -> None:
    variables = {
        **REMOTE_API,
        "ipc_mode": "host",
        "shm_size": None,
        "device_requests": [{"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": [["gpu"]]}],
    }

    host = _docker_py_host_config(render_docker_create_kwargs(load_template(DOCKER), variables))

    assert host["DeviceRequests"][0]["DeviceIDs"] == ["0", "1"]
    assert host["IpcMode"] == "host" and "ShmSize" not in host


def test_a_misspelt_device_request_is_refused_by_the_pools_variable_schema() -> None:
    # docker-py would drop the unknown key silently and request a GPU without the gpu capability
    variables = {**REMOTE_API, "device_requests": [{"driver": "nvidia", "count": -1, "capabilites": [["gpu"]]}]}
    with pytest.raises(DeploymentError, match=r"device_requests.*capabilites"):
        render_docker_create_kwargs(load_template(DOCKER), variables)


def _docker_py_host_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What docker-py's containers.create makes of the worker's arguments, without an engine."""
    from docker.models.containers import _create_container_args

    create = _create_container_args({**copy.deepcopy(kwargs), "version": "1.43"})
    return dict(create["host_config"])


def test_a_real_engine_accepts_the_container_the_docker_pool_describes(docker_engine: Any) -> None:
    engine = docker_engine
    # A tiny local image (nothing pulled) stands in for the training image; GPUs are left out
    # because this engine has none: everything else is created exactly as the worker would.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("marker")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    image = (
        subprocess.run(
            ["docker", "import", "-", "trainyard-test/pool:1"], input=buf.getvalue(), capture_output=True, check=True
        )
        .stdout.decode()
        .strip()
    )
    volume = "trainyard-test-pool-stage"
    kwargs = render_docker_create_kwargs(
        load_template(DOCKER),
        {
            **REMOTE_API,
            "image": "trainyard-test/pool:1",
            "device_requests": [],
            "name": "trainyard-test-pool",
            "volumes": [f"{volume}:/stage"],
        },
    )
    container = None
    try:
        container = engine.containers.create(**kwargs)
        host = container.attrs["HostConfig"]
        assert host["ShmSize"] == 8 * 1024**3
        assert container.attrs["Config"]["Entrypoint"] == ["/usr/bin/env"]
        assert container.attrs["Config"]["Cmd"] == ["prefect", "flow-run", "execute"]
        assert f"{volume}:/stage" in host["Binds"]
    finally:
        if container is not None:
            container.remove(force=True)
        try:
            engine.volumes.get(volume).remove(force=True)
        except Exception:
            pass
        engine.images.remove(image, force=True)


POOL_TEMPLATES = {"trainyard-docker": DOCKER, "trainyard-k8s": K8S}


def _container_deployments() -> list[dict[str, Any]]:
    import yaml

    from tests.conftest import REPO

    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return [d for d in doc["deployments"] if (d.get("work_pool") or {}).get("name") in POOL_TEMPLATES]


def test_prefect_yaml_has_a_docker_and_a_kubernetes_deployment() -> None:
    assert {d["work_pool"]["name"] for d in _container_deployments()} == set(POOL_TEMPLATES)


@pytest.mark.parametrize("deployment", _container_deployments(), ids=lambda d: d["name"])
def test_container_deployments_train_in_process_on_the_gpu_and_render_valid_jobs(deployment: dict[str, Any]) -> None:
    overrides = deployment["parameters"]["overrides"]
    # inside the image there is no Docker to start another container, and /stage is the pool's volume
    assert {"runner.kind=local", "stage.root=/stage"} <= set(overrides)
    assert any(o.startswith("train.device=") and o != "train.device=cpu" for o in overrides)
    pool = deployment["work_pool"]
    template = load_template(POOL_TEMPLATES[pool["name"]])
    variables = pool.get("job_variables") or {}
    assert "MLFLOW_TRACKING_URI" in variables.get("env", {})  # a container's local mlflow.db would vanish with it
    if pool["name"] == "trainyard-k8s":
        check_kubernetes_template(template, variables, source=f"prefect.yaml {deployment['name']}")
    else:
        kwargs = render_docker_create_kwargs(template, {**variables, "env": {**variables["env"], **REMOTE_API["env"]}})
        assert _docker_py_host_config(kwargs)["DeviceRequests"]
