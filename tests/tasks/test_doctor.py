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


def test_free_gpu_memory_is_compared_with_the_last_run_of_the_same_shape(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.adapters.mlflow_tracking import Tracker

    for name in ("MLFLOW_TRACKING_URI", "CUDA_VISIBLE_DEVICES"):  # both would rightly change doctor's answer
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_params(tmp_path / "params.yaml", tiny_dataset, tracking_uri=uri, experiment="x", stage_root=tmp_path)
    params = load_params(path, ["train.device=1"])
    build = {"torch": "2.14.1+cu130", "cuda": "13.0"}

    def memory_check() -> Check | None:
        checks = {c.name: c for c in run_checks(params, nvml=FakeNvml(cuda=13000), torch_build=lambda: build)}
        return checks.get("gpu memory")

    assert memory_check() is None  # no earlier GPU run of this shape: nothing to compare with
    tracker = Tracker(uri)
    for peak_mb, enough in ((30_000.0, True), (80_000.0, False)):  # the newest run of the same shape counts
        run_id = tracker.start_run("x", f"peak {peak_mb}", tags={}, params=params.mlflow_params())
        for epoch, value in enumerate((peak_mb / 2, peak_mb), start=1):
            tracker.log_metrics(run_id, {"perf/gpu_memory_peak_mb": value}, step=epoch)
        tracker.end_run(run_id, "FINISHED")
        check = memory_check()
        assert check is not None and check.ok is enough, check
    assert check is not None and not check.ok and not check.required  # a warning: the GPU may be freed by then
    assert "GPU 1: 70656 MiB free" in check.detail and f"({run_id}) peaked at 76294 MiB" in check.detail
    assert "lower train.batch" in check.fix
    enough = load_params(path, ["train.device=1", "train.batch=4"])  # another shape: no run to compare with
    assert {c.name for c in run_checks(enough, nvml=FakeNvml(cuda=13000), torch_build=lambda: build)}.isdisjoint(
        {"gpu memory"}
    )
