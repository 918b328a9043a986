"""NVML seam: the one module that imports pynvml (nvidia-ml-py).

Used by `trainyard doctor` (GPUs visible? enough free memory? driver new enough for the
image's CUDA?). Everything goes through an injectable ``nvml`` module object, so the
no-GPU path is tested with a fake NVML (we have no GPU in CI; the fake says so).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_mb: int
    memory_free_mb: int
    utilization_pct: int | None


@dataclass(frozen=True)
class NvmlReport:
    available: bool
    reason: str | None = None  # why NVML is unavailable, in the user's words
    driver: str | None = None  # e.g. "550.54.15"
    cuda_driver: str | None = None  # the newest CUDA the driver supports, e.g. "12.4"
    gpus: list[GpuInfo] = field(default_factory=list)


def read_nvml(nvml: Any = None) -> NvmlReport:
    """Query the NVIDIA driver; never raises: no driver or no GPU is a report, not an error."""
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return NvmlReport(False, "nvidia-ml-py is not installed")
        nvml = pynvml
    errors = nvml.NVMLError  # the base of NVMLError_LibraryNotFound, DriverNotLoaded, ...
    try:
        nvml.nvmlInit()
    except errors as exc:
        return NvmlReport(False, f"no NVIDIA driver found ({_text(exc)}); this machine trains on CPU only")
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = nvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                util: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except errors:  # some GPUs (MIG instances) do not report utilisation
                util = None
            gpus.append(GpuInfo(i, _text(nvml.nvmlDeviceGetName(handle)), mem.total >> 20, mem.free >> 20, util))
        return NvmlReport(
            True,
            None if gpus else "the NVIDIA driver sees no GPU",
            driver,
            f"{cuda // 1000}.{(cuda % 1000) // 10}",
            gpus,
        )
    except errors as exc:
        return NvmlReport(False, f"NVML query failed: {_text(exc)}")
    finally:
        with contextlib.suppress(errors):
            nvml.nvmlShutdown()


def cuda_at_least(have: str, need: str) -> bool:
    """'12.4' >= '12.1'? Compares major.minor numerically."""

    def parts(v: str) -> tuple[int, int]:
        major, _, minor = v.strip().partition(".")
        return int(major), int((minor.split(".")[0] or "0"))

    return parts(have) >= parts(need)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
