"""NVML seam: the one module that imports pynvml (nvidia-ml-py).

Used by `trainyard doctor` (GPUs visible? enough free memory? driver new enough for the
image's CUDA?) and by the GPU telemetry of a running training (:class:`GpuSampler`).
Everything goes through an injectable ``nvml`` module object, so both are tested with a fake
NVML (we have no GPU in CI; the fake says so).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import defaultdict
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


# Clock-event (throttle) reasons that mean the GPU is held back, not merely idle or set by the user.
_IDLE_REASONS = 0x1 | 0x2  # GpuIdle, ApplicationsClocksSetting


class GpuSampler:
    """Samples the job's GPUs for MLflow's system metrics; never another job's.

    Duck-types MLflow's ``BaseMetricsMonitor`` (``collect_metrics``/``aggregate_metrics``/
    ``clear_metrics``/``metrics``), so MLflow's SystemMetricsMonitor samples it on its own
    schedule and logs ``system/gpu_<n>_...`` under MLflow's names: ``utilization_percentage``,
    ``memory_usage_percentage``, ``memory_usage_megabytes``, ``power_usage_watts``,
    ``power_usage_percentage``; plus ``temperature_celsius`` and ``throttled`` (1 while a clock-event
    reason other than idle holds the GPU back, e.g. power or thermal limits). ``<n>`` is the host's
    GPU index (``nvidia-smi``'s), or ``mig<k>`` for a MIG instance given by UUID.

    :meth:`epoch_summary` gives the per-epoch figures (mean/p95 utilisation, peak memory) over the
    samples since its last call.
    """

    def __init__(self, nvml: Any, handles: dict[str, Any]) -> None:
        self._nvml = nvml
        self._handles = handles
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._epoch_util: list[float] = []
        self._epoch_mem_mb = 0.0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, selectors: list[str] | None, nvml: Any = None) -> "GpuSampler | str":
        """A sampler of the GPUs ``selectors`` names (host indices or UUIDs; None: all), or why there is none."""
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                return "nvidia-ml-py is not installed"
            nvml = pynvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            return f"no NVIDIA driver found ({_text(exc)})"
        try:
            if selectors is None:
                selectors = [str(i) for i in range(nvml.nvmlDeviceGetCount())]
            handles: dict[str, Any] = {}
            mig = 0
            for selector in selectors:
                if selector.isdigit():
                    handles[selector] = nvml.nvmlDeviceGetHandleByIndex(int(selector))
                    continue
                handle = nvml.nvmlDeviceGetHandleByUUID(selector)
                try:
                    label = str(nvml.nvmlDeviceGetIndex(handle))
                except nvml.NVMLError:  # a MIG instance has no index of its own
                    label, mig = f"mig{mig}", mig + 1
                handles[label] = handle
        except nvml.NVMLError as exc:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()
            return f"the job's GPUs {selectors} cannot be read ({_text(exc)})"
        if not handles:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()
            return "the NVIDIA driver sees no GPU"
        return cls(nvml, handles)

    @property
    def gpus(self) -> list[str]:
        return list(self._handles)

    @property
    def metrics(self) -> dict[str, list[float]]:
        return self._metrics

    def collect_metrics(self) -> None:
        nvml, errors = self._nvml, self._nvml.NVMLError
        utils: list[float] = []
        mem_peak = 0.0
        for label, handle in self._handles.items():
            sample: dict[str, float] = {}
            with contextlib.suppress(errors):
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                sample["memory_usage_percentage"] = round(mem.used / mem.total * 100, 1)
                sample["memory_usage_megabytes"] = mem.used / 1e6
                mem_peak = max(mem_peak, mem.used / 1e6)
            with contextlib.suppress(errors):  # MIG instances report none
                sample["utilization_percentage"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                utils.append(sample["utilization_percentage"])
            with contextlib.suppress(errors):
                watts = nvml.nvmlDeviceGetPowerUsage(handle) / 1000
                sample["power_usage_watts"] = watts
                sample["power_usage_percentage"] = watts * 1000 / nvml.nvmlDeviceGetEnforcedPowerLimit(handle) * 100
            with contextlib.suppress(errors):
                sample["temperature_celsius"] = float(nvml.nvmlDeviceGetTemperature(handle, 0))  # NVML_TEMPERATURE_GPU
            with contextlib.suppress(errors, AttributeError):
                reasons = int(nvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
                sample["throttled"] = 1.0 if reasons & ~_IDLE_REASONS else 0.0
            with self._lock:
                for name, value in sample.items():
                    self._metrics[f"gpu_{label}_{name}"].append(value)
        with self._lock:
            if utils:
                self._epoch_util.append(sum(utils) / len(utils))
            self._epoch_mem_mb = max(self._epoch_mem_mb, mem_peak)

    def aggregate_metrics(self) -> dict[str, float]:
        with self._lock:
            return {k: round(sum(v) / len(v), 1) for k, v in self._metrics.items() if v}

    def clear_metrics(self) -> None:
        with self._lock:
            self._metrics.clear()

    def epoch_summary(self) -> dict[str, float]:
        """Mean and p95 utilisation (averaged over the job's GPUs) and peak memory since the last call."""
        with self._lock:
            utils, peak = sorted(self._epoch_util), self._epoch_mem_mb
            self._epoch_util, self._epoch_mem_mb = [], 0.0
        out: dict[str, float] = {}
        if utils:
            out["perf/gpu_utilization_mean"] = sum(utils) / len(utils)
            out["perf/gpu_utilization_p95"] = utils[min(len(utils) - 1, math.ceil(0.95 * len(utils)) - 1)]
        if peak:
            out["perf/gpu_memory_peak_mb"] = peak
        return out

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
