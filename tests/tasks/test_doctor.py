"""trainyard doctor with the local runner: the driver's CUDA against the CUDA this interpreter's torch is built for."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.doctor import Check, failures, run_checks
from tasks.params import load_params
from tests.conftest import write_params
from tests.tasks.adapters.test_nvml import FakeNvml


def local_checks(
    tmp_path: Path, data: Path, device: str | None, driver: int, torch_cuda: str | None
) -> dict[str, Check]:
    path = write_params(
        tmp_path / "params.yaml", data, tracking_uri=None, experiment="x", stage_root=tmp_path / "stage"
    )
    params = load_params(path, [f"train.device={device if device is not None else 'null'}"])
    build = {"torch": "2.14.1+cu130" if torch_cuda else "2.14.1+cpu", "cuda": torch_cuda}
    return {c.name: c for c in run_checks(params, nvml=FakeNvml(cuda=driver), torch_build=lambda: build)}


def test_a_driver_a_major_version_behind_torch_fails_when_a_gpu_is_asked_for(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    checks = local_checks(tmp_path, tiny_dataset, "0", driver=12040, torch_cuda="13.0")
    trap = checks["driver vs torch CUDA"]
    assert not trap.ok and trap.required and trap in failures(list(checks.values()))
    assert "driver supports CUDA 12.4, torch 2.14.1+cu130 is built for CUDA 13.0" in trap.detail
    assert "upgrade the NVIDIA driver to one supporting CUDA 13.0" in trap.fix and "whl/cu124" in trap.fix


def test_with_the_device_unset_it_warns_that_training_would_fall_back_to_the_cpu(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    trap = local_checks(tmp_path, tiny_dataset, None, driver=12040, torch_cuda="13.0")["driver vs torch CUDA"]
    assert not trap.ok and not trap.required and "quietly train on the CPU" in trap.detail


@pytest.mark.parametrize(
    ("driver", "torch_cuda", "ok", "note"),
    [
        (13020, "13.0", True, ""),
        (12020, "12.8", False, "minor-version compatibility"),  # runs; said as a warning
    ],
)
def test_a_new_enough_driver_passes_and_an_older_minor_only_warns(
    tmp_path: Path, tiny_dataset: Path, driver: int, torch_cuda: str, ok: bool, note: str
) -> None:
    trap = local_checks(tmp_path, tiny_dataset, "0", driver=driver, torch_cuda=torch_cuda)["driver vs torch CUDA"]
    assert trap.ok is ok and note in trap.detail
    assert trap.ok or not trap.required


def test_a_cpu_build_of_torch_is_not_compared(tmp_path: Path, tiny_dataset: Path) -> None:
    assert "driver vs torch CUDA" not in local_checks(tmp_path, tiny_dataset, "cpu", driver=12040, torch_cuda=None)
