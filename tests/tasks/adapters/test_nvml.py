"""NVML readings through a fake NVML (we have no GPU; the fake stands in for the driver)."""

from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest

from tasks.adapters.nvml import cuda_at_least, read_nvml


class FakeNvml:
    """Two GPUs and a driver that supports CUDA up to 12.4, as NVML would report them."""

    NVMLError = pynvml.NVMLError  # what the real module raises

    def __init__(self, cuda: int = 12040, gpus: int = 2) -> None:
        self.cuda, self.count, self.shut = cuda, gpus, False

    def nvmlInit(self) -> None: ...  # noqa: N802, E704 - NVML's own names
    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut = True

    def nvmlSystemGetDriverVersion(self) -> bytes:  # noqa: N802
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:  # noqa: N802
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetName(self, h: int) -> str:  # noqa: N802
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(total=80 << 30, free=(70 - h) << 30)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=10 * h)


def test_gpus_driver_and_cuda_are_read_and_nvml_is_shut_down() -> None:
    fake = FakeNvml()
    report = read_nvml(fake)
    assert report.available and report.driver == "550.54.15" and report.cuda_driver == "12.4"
    assert [(g.index, g.memory_free_mb, g.utilization_pct) for g in report.gpus] == [
        (0, 70 * 1024, 0),
        (1, 69 * 1024, 10),
    ]
    assert fake.shut


def test_no_driver_is_a_plain_report_not_a_crash() -> None:
    class NoDriver:
        NVMLError = pynvml.NVMLError

        def nvmlInit(self) -> None:  # noqa: N802
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)  # as pynvml does without a driver

    report = read_nvml(NoDriver())
    assert not report.available and "no NVIDIA driver" in report.reason and "CPU" in report.reason
    assert read_nvml(FakeNvml(gpus=0)).reason == "the NVIDIA driver sees no GPU"


@pytest.mark.parametrize(
    "have,need,ok",
    [
        ("12.4", "12.1", True),
        ("12.4", "12.4", True),
        ("12.4", "13.0", False),
        ("11.8", "12.1", False),
        ("13.0", "12.8", True),
    ],
)
def test_driver_cuda_comparison(have: str, need: str, ok: bool) -> None:
    assert cuda_at_least(have, need) is ok
