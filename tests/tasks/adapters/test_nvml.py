"""NVML readings through a fake NVML (we have no GPU; the fake stands in for the driver)."""

from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest

from tasks.adapters.nvml import GpuSampler, cuda_at_least, read_nvml


class FakeNvml:
    """Two GPUs and a driver that supports CUDA up to 12.4, as NVML would report them."""

    NVMLError = pynvml.NVMLError  # what the real module raises

    def __init__(self, cuda: int = 12040, gpus: int = 2) -> None:
        self.cuda, self.count, self.shut = cuda, gpus, False
        self.samples = {}

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
        if i >= self.count:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return i

    def nvmlDeviceGetName(self, h: int) -> str:  # noqa: N802
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(total=80 << 30, free=(70 - h) << 30, used=(10 + h) << 30)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:  # noqa: N802
        if h >= 100:  # a MIG instance: NVML has no utilisation for it
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        self.samples[h] = self.samples.get(h, 0) + 1
        return SimpleNamespace(gpu=10 * h + self.samples[h])  # 11, 12, 13, ... on GPU 1

    # ------------------------------------------------------------ telemetry (GpuSampler)

    samples: dict[int, int]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:  # noqa: N802
        if uuid.startswith("MIG-"):
            return 100 + int(uuid.rsplit("-", 1)[1])
        if uuid.startswith("GPU-") and int(uuid.rsplit("-", 1)[1]) < self.count:
            return int(uuid.rsplit("-", 1)[1])
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetIndex(self, h: int) -> int:  # noqa: N802
        if h >= 100:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return h

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:  # noqa: N802
        return 350_000  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:  # noqa: N802
        return 700_000

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:  # noqa: N802
        return 60 + h

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:  # noqa: N802
        return 0x1 if h == 0 else 0x20  # GPU 0 idle; GPU 1 held back by a slowdown (thermal)


def test_gpus_driver_and_cuda_are_read_and_nvml_is_shut_down() -> None:
    fake = FakeNvml()
    report = read_nvml(fake)
    assert report.available and report.driver == "550.54.15" and report.cuda_driver == "12.4"
    assert [(g.index, g.memory_free_mb, g.utilization_pct) for g in report.gpus] == [
        (0, 70 * 1024, 1),
        (1, 69 * 1024, 11),
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


def test_the_sampler_reads_only_the_jobs_gpu_under_mlflows_metric_names() -> None:
    sampler = GpuSampler.open(["1"], FakeNvml())
    assert isinstance(sampler, GpuSampler) and sampler.gpus == ["1"]
    for _ in range(3):
        sampler.collect_metrics()
    metrics = sampler.aggregate_metrics()
    assert not [k for k in metrics if k.startswith("gpu_0_")], "never another job's GPU"
    assert metrics["gpu_1_utilization_percentage"] == 12.0  # mean of 11, 12, 13
    assert metrics["gpu_1_memory_usage_megabytes"] == round((11 << 30) / 1e6, 1)
    assert metrics["gpu_1_memory_usage_percentage"] == round(11 / 80 * 100, 1)
    assert metrics["gpu_1_power_usage_watts"] == 350.0 and metrics["gpu_1_power_usage_percentage"] == 50.0
    assert metrics["gpu_1_temperature_celsius"] == 61.0 and metrics["gpu_1_throttled"] == 1.0
    sampler.clear_metrics()
    assert sampler.aggregate_metrics() == {}

    summary = sampler.epoch_summary()  # the samples since the last summary: 11, 12, 13
    assert summary == {
        "perf/gpu_utilization_mean": 12.0,
        "perf/gpu_utilization_p95": 13.0,
        "perf/gpu_memory_peak_mb": (11 << 30) / 1e6,
    }
    assert sampler.epoch_summary() == {}  # nothing sampled since


def test_gpus_given_by_uuid_and_mig_instances_are_sampled_by_their_own_names() -> None:
    sampler = GpuSampler.open(["GPU-fake-1", "MIG-fake-0"], FakeNvml())
    assert isinstance(sampler, GpuSampler) and sampler.gpus == ["1", "mig0"]
    sampler.collect_metrics()
    metrics = sampler.aggregate_metrics()
    assert "gpu_mig0_memory_usage_megabytes" in metrics and "gpu_mig0_utilization_percentage" not in metrics
    assert GpuSampler.open(["GPU-fake-7"], FakeNvml()) == "the job's GPUs ['GPU-fake-7'] cannot be read (Not Found)"


def test_without_a_driver_the_sampler_is_off_and_says_why() -> None:
    class NoDriver:
        NVMLError = pynvml.NVMLError

        def nvmlInit(self) -> None:  # noqa: N802
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    reason = GpuSampler.open(None, NoDriver())
    assert isinstance(reason, str) and reason.startswith("no NVIDIA driver found")
    assert GpuSampler.open(None, FakeNvml(gpus=0)) == "the NVIDIA driver sees no GPU"
