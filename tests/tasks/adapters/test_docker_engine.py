"""The Docker seam against a real Docker engine (CI installs and starts one).

Where no engine runs (a developer laptop without Docker) these tests skip, unless
TRAINYARD_REQUIRE_DOCKER=1 (set by .ci/run), in which case a missing engine fails them.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tasks.adapters.docker_engine import DockerRunner, gpu_requests, resolve_image
from tasks.doctor import format_table, run_checks
from tasks.errors import RunnerError
from tasks.params import load_params
from tasks.job import TrainJob
from tests.conftest import write_params


def test_gpu_requests_cover_all_none_and_indices() -> None:
    assert gpu_requests("none") == []
    assert gpu_requests("all") == [{"count": -1, "capabilities": [["gpu"]]}]
    assert gpu_requests("0,1") == [{"device_ids": ["0", "1"], "capabilities": [["gpu"]]}]
    with pytest.raises(RunnerError, match="valid forms"):
        gpu_requests("first")


@pytest.fixture(scope="module")
def engine(docker_engine: Any) -> Iterator[Any]:
    client = docker_engine
    yield client
    for image_id in set(_CREATED):  # leave the engine as we found it (moved tags leave untagged images)
        try:
            client.images.remove(image_id, force=True)
        except Exception:
            pass


_CREATED: list[str] = []


def _import_image(client: Any, tag: str, payload: bytes) -> str:
    """A tiny local image (no registry needed): one file in an otherwise empty filesystem."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("marker")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    proc = subprocess.run(["docker", "import", "-", tag], input=buf.getvalue(), capture_output=True, check=True)
    _CREATED.append(proc.stdout.decode().strip())
    return _CREATED[-1]


def test_tag_resolves_to_the_image_id_and_a_moved_tag_is_refused(engine: Any) -> None:
    first = _import_image(engine, "trainyard-test/resolve:1", b"one")
    img = resolve_image(engine, "trainyard-test/resolve:1", pull=False)
    assert img.digest == img.run_ref == first == engine.images.get("trainyard-test/resolve:1").id
    pinned = f"trainyard-test/resolve:1@{first}"
    assert resolve_image(engine, pinned, pull=False).digest == first
    _import_image(engine, "trainyard-test/resolve:1", b"two")  # the tag moves
    with pytest.raises(RunnerError, match="not the pinned"):
        resolve_image(engine, pinned, pull=False)
    with pytest.raises(RunnerError, match="require_digest"):
        resolve_image(engine, "trainyard-test/resolve:1", require_digest=True, pull=False)
    with pytest.raises(RunnerError, match="not on this machine"):
        resolve_image(engine, "trainyard-test/never-built:0", pull=False)


def test_gpu_request_without_nvidia_runtime_says_how_to_fix(engine: Any, tmp_path: Path) -> None:
    if "nvidia" in (engine.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime")
    _import_image(engine, "trainyard-test/gpu:1", b"x")
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data.yaml").write_text(f"path: {data}\n")
    job = TrainJob(
        run_dir=str(tmp_path / "run"), data_yaml=str(tmp_path / "run" / "data.yaml"), args={"model": "x.yaml"}
    )
    runner = DockerRunner("trainyard-test/gpu:1", gpus="all", pull=False, client=engine)
    with pytest.raises(RunnerError, match="NVIDIA Container Toolkit"):
        runner.run(job, {}, lambda line: None)
    assert not engine.containers.list(all=True, filters={"label": f"org.trainyard.run_dir={tmp_path / 'run'}"})


def test_doctor_reports_docker_and_the_missing_gpu_plainly(engine: Any, tmp_path: Path, tiny_dataset: Path) -> None:
    _import_image(engine, "trainyard-test/doctor:1", b"d")
    params = write_params(
        tmp_path / "params.yaml", tiny_dataset, tracking_uri=None, experiment="x", stage_root=tmp_path / "stage"
    )
    p = load_params(params, ["runner.kind=docker", "container.image=trainyard-test/doctor:1", "container.pull=false"])
    checks = {c.name: c for c in run_checks(p, nvml=FakeNoGpuNvml())}
    assert checks["docker daemon"].ok and checks["training image"].ok
    assert not checks["gpus (nvml)"].ok and not checks["gpus (nvml)"].required  # gpus: none -> information only
    assert "no NVIDIA driver" in checks["gpus (nvml)"].detail
    table = format_table(list(checks.values()))
    assert "warn  gpus (nvml)" in table and "ok    docker daemon" in table


class FakeNoGpuNvml:
    """A fake NVML for the no-GPU path (we have no GPU): nvmlInit fails like on a CPU box."""

    class NVMLError(Exception):
        pass

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's own names
        raise self.NVMLError("NVML Shared Library Not Found")


def test_doctor_catches_a_driver_too_old_for_the_image(engine: Any, tmp_path: Path, tiny_dataset: Path) -> None:
    from tests.tasks.adapters.test_nvml import FakeNvml

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w"):
        pass
    proc = subprocess.run(
        ["docker", "import", "--change", "LABEL org.trainyard.cuda=13.0", "-", "trainyard-test/cuda13:1"],
        input=tar.getvalue(),
        capture_output=True,
        check=True,
    )
    _CREATED.append(proc.stdout.decode().strip())
    params = write_params(
        tmp_path / "params.yaml", tiny_dataset, tracking_uri=None, experiment="x", stage_root=tmp_path / "stage"
    )
    p = load_params(params, ["runner.kind=docker", "container.image=trainyard-test/cuda13:1", "container.pull=false"])
    checks = {c.name: c for c in run_checks(p, nvml=FakeNvml(cuda=12040))}
    assert checks["training image"].detail.endswith("(CUDA 13.0)")
    trap = checks["driver vs image CUDA"]
    assert not trap.ok and "12.4" in trap.detail and "13.0" in trap.detail and "upgrade the NVIDIA driver" in trap.fix


def test_reproduce_refuses_a_moved_tag_unless_drift_is_allowed(engine: Any) -> None:
    from tasks.reproduce import image_for_reproduction

    recorded = _import_image(engine, "trainyard-test/drift:1", b"then")
    assert image_for_reproduction("trainyard-test/drift:1", recorded, False, False) == (recorded, {})
    now = _import_image(engine, "trainyard-test/drift:1", b"now")  # the tag moves
    with pytest.raises(RunnerError, match="--allow-drift"):
        image_for_reproduction("trainyard-test/drift:1", recorded, False, False)
    image, drift = image_for_reproduction("trainyard-test/drift:1", recorded, True, False)
    assert image == "trainyard-test/drift:1" and drift == {"trainyard.drift.image": f"{recorded} -> {now}"}
