"""Preflight checks: what `trainyard doctor` prints and what the flow runs before staging.

Each check says what it found and, when it fails, how to fix it. "Required" checks stop
the flow; the others are information (a GPU check on a CPU-only box, say).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tasks.errors import DataSourceError, PreflightError, TrackingError, TrainyardError
from tasks.params import Params
from tasks.stage_cache import default_stage_root
from tasks.adapters.nvml import NvmlReport, cuda_at_least, read_nvml


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    required: bool
    detail: str
    fix: str = ""
    error: type[TrainyardError] = PreflightError  # raised (its exit code) when this required check fails


def run_checks(
    params: Params,
    *,
    nvml: Any | None = None,
    docker_client: Callable[[], Any] | None = None,
    torch_build: Callable[[], dict[str, Any]] | None = None,
) -> list[Check]:
    """Every check for these params; ``nvml``/``docker_client``/``torch_build`` are injectable for tests."""
    checks: list[Check] = []
    docker_needed = params.runner.kind == "docker"
    gpus_wanted = docker_needed and str(params.container.gpus).lower() != "none"
    client = None

    if docker_needed:
        try:
            from tasks.adapters.docker_engine import docker_client as default_client

            client = (docker_client or default_client)()
            version = client.version().get("Version", "?")
            checks.append(Check("docker daemon", True, True, f"reachable (engine {version})"))
        except TrainyardError as exc:
            checks.append(Check("docker daemon", False, True, str(exc), "start Docker, or set runner.kind: local"))
        if client is not None:
            from tasks.adapters.docker_engine import has_nvidia_runtime

            has_rt = has_nvidia_runtime(client)
            checks.append(
                Check(
                    "nvidia container runtime",
                    has_rt,
                    gpus_wanted,
                    "present" if has_rt else "absent",
                    ""
                    if has_rt
                    else "install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure "
                    "--runtime=docker`, or set container.gpus: none",
                )
            )

    report: NvmlReport = read_nvml(nvml)
    if report.available and report.gpus:
        listing = "; ".join(
            f"{g.index}: {g.name}, {g.memory_free_mb}/{g.memory_total_mb} MiB free" for g in report.gpus
        )
        checks.append(
            Check(
                "gpus (nvml)",
                True,
                gpus_wanted,
                f"{len(report.gpus)} GPU(s), driver {report.driver} (CUDA <= {report.cuda_driver}): {listing}",
            )
        )
    else:
        checks.append(
            Check(
                "gpus (nvml)",
                False,
                gpus_wanted,
                report.reason or "no GPU",
                "install the NVIDIA driver, or train on CPU (train.device: cpu, container.gpus: none)",
            )
        )

    if params.runner.kind == "local" and report.available and report.gpus and report.cuda_driver:
        check = _driver_vs_torch(params, report.cuda_driver, torch_build)
        if check is not None:
            checks.append(check)

    if client is not None and params.container.image:
        from tasks.adapters.docker_engine import resolve_image

        try:
            img = resolve_image(
                client, str(params.container.image), bool(params.container.require_digest), bool(params.container.pull)
            )
            checks.append(Check("training image", True, True, f"{img.given} -> {img.digest} (CUDA {img.cuda or '?'})"))
            if img.cuda and report.available and report.cuda_driver:
                ok = cuda_at_least(report.cuda_driver, img.cuda)
                checks.append(
                    Check(
                        "driver vs image CUDA",
                        ok,
                        gpus_wanted,
                        f"driver supports CUDA {report.cuda_driver}, image needs {img.cuda}",
                        ""
                        if ok
                        else f"upgrade the NVIDIA driver to one supporting CUDA {img.cuda}, or use an image "
                        f"built for CUDA <= {report.cuda_driver} (the classic 'driver too old / libcudart' failure)",
                    )
                )
        except TrainyardError as exc:
            checks.append(
                Check("training image", False, True, str(exc), "build it with `make image`, or fix container.image")
            )

    root = params.resolve_path(params.stage.root) if params.stage.root else default_stage_root()
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
    free_gb = shutil.disk_usage(probe).free / 1e9
    writable = os.access(probe, os.W_OK)
    checks.append(
        Check(
            "stage.root space",
            writable,
            True,
            f"{root}: {free_gb:.1f} GB free" + ("" if writable else ", not writable"),
            "" if writable else "set stage.root to a writable local SSD or tmpfs directory",
        )
    )

    from tasks.adapters.mlflow_tracking import Tracker, resolve_tracking_uri

    uri, origin = resolve_tracking_uri(params.tracking.uri, params.base_dir)
    try:
        tracker = Tracker(uri)
        tracker.ping()
        checks.append(Check("mlflow", True, True, f"{uri} ({origin})"))
    except TrainyardError as exc:
        checks.append(
            Check("mlflow", False, True, str(exc), "start the tracking server or fix tracking.uri", TrackingError)
        )
    else:
        if report.available and report.gpus:
            memory = _gpu_memory_check(params, report, tracker)
            if memory is not None:
                checks.append(memory)

    checks.append(_source_check(params))
    return checks


def _driver_vs_torch(
    params: Params, driver_cuda: str, torch_build: Callable[[], dict[str, Any]] | None
) -> Check | None:
    """The local runner trains with this interpreter's torch: is the driver new enough for its CUDA build?

    Same major version, older minor: CUDA's minor-version compatibility runs it (a warning: kernels
    shipped only as PTX for newer GPUs cannot be compiled). An older major: torch finds no usable
    GPU, and with ``train.device`` unset Ultralytics then quietly trains on the CPU.
    """
    if torch_build is None:
        from tasks.adapters.torch_environment import describe_interpreter

        torch_build = describe_interpreter
    build = torch_build()
    torch_cuda = build.get("cuda")
    if not torch_cuda:
        return None  # a CPU or ROCm build: the CUDA driver is not its business
    device = params.train.get("device")
    explicit = device is not None and str(device).strip().lower() not in ("cpu", "mps", "")
    name = "driver vs torch CUDA"
    detail = f"driver supports CUDA {driver_cuda}, torch {build.get('torch')} is built for CUDA {torch_cuda}"
    if cuda_at_least(driver_cuda, torch_cuda):
        return Check(name, True, explicit, detail)
    major = torch_cuda.split(".")[0]
    if driver_cuda.split(".")[0] == major:
        return Check(
            name,
            False,
            False,
            detail + " (runs through CUDA's minor-version compatibility)",
            f"upgrade the NVIDIA driver to one supporting CUDA {torch_cuda} to be sure every kernel runs",
        )
    return Check(
        name,
        False,
        explicit,
        detail + ("" if explicit else "; with train.device unset, Ultralytics would quietly train on the CPU"),
        f"upgrade the NVIDIA driver to one supporting CUDA {torch_cuda}, or install a torch built for CUDA "
        f"{driver_cuda.split('.')[0]}.x (pip install torch --index-url https://download.pytorch.org/whl/"
        f"cu{driver_cuda.replace('.', '')}) and update the lock",
    )


PEAK_MEMORY_METRIC = "perf/gpu_memory_peak_mb"  # logged per epoch by a GPU training (tasks/live_logging.py)
MEMORY_MARGIN = 1.1  # what the last run needed, plus a tenth: allocator fragmentation differs between runs


def _gpu_memory_check(params: Params, report: NvmlReport, tracker: Any) -> Check | None:
    """Is there as much free memory on the job's GPUs as the last run of the same model, imgsz and batch needed?

    None when there is nothing to compare with: a CPU training, no earlier GPU run of that shape,
    GPUs named by UUID, or a store that cannot answer. A warning, not a failure: the GPU may be
    freed by the time the training starts, and Ultralytics halves the batch in the first epoch.
    """
    import os

    from tasks.gpu_scope import job_gpus

    gpus = job_gpus(
        params.train.get("device"), params.runner.kind, params.container.gpus, os.environ.get("CUDA_VISIBLE_DEVICES")
    )
    if gpus == []:
        return None
    wanted = {str(g.index): g for g in report.gpus}
    mine = [wanted[g] for g in (gpus if gpus is not None else list(wanted)) if g in wanted]
    if not mine:
        return None
    logged = params.mlflow_params()  # as the runs' params hold them
    shape = {key: logged.get(key, "") for key in ("model", "imgsz", "batch")}
    if not all(shape.values()) or any("'" in value for value in shape.values()):
        return None
    clauses = [f"params.{key} = '{value}'" for key, value in shape.items()]
    try:
        last = tracker.latest_run(
            params.tracking.experiment, " and ".join([*clauses, f"metrics.`{PEAK_MEMORY_METRIC}` > 0"])
        )
        peak = (
            max((v for _, v in tracker.metric_history(last.run_id, PEAK_MEMORY_METRIC)), default=0.0) if last else 0.0
        )
    except TrainyardError:
        return None
    if not peak:
        return None
    need_mib = peak * 1e6 / 2**20 * MEMORY_MARGIN
    what = f"model {shape['model']}, imgsz {shape['imgsz']}, batch {shape['batch']}"
    short = [g for g in mine if g.memory_free_mb < need_mib]
    free = ", ".join(f"GPU {g.index}: {g.memory_free_mb} MiB free" for g in mine)
    detail = f"{free}; the last run of {what} ({last.run_id}) peaked at {peak * 1e6 / 2**20:.0f} MiB"
    if not short:
        return Check("gpu memory", True, False, detail)
    return Check(
        "gpu memory",
        False,
        False,
        detail,
        "free the GPU (another job may hold it: nvidia-smi), or lower train.batch or train.imgsz",
    )


def _source_check(params: Params) -> Check:
    source = str(params.data.source)
    if source.startswith("s3://"):
        from tasks.adapters.s3 import S3Client, parse_s3_url

        try:
            client = S3Client(
                endpoint_url=params.data.endpoint_url,
                region=params.data.region,
                profile=params.data.profile,
                max_workers=2,
            )
            objects = client.list_objects(parse_s3_url(source))
            return Check("data source", True, True, f"{source}: {len(objects)} objects")
        except TrainyardError as exc:
            return Check(
                "data source",
                False,
                True,
                str(exc),
                "fix data.source / data.endpoint_url or the AWS credentials",
                DataSourceError,
            )
    path = params.data_source
    ok = (path.is_dir() and os.access(path, os.R_OK | os.X_OK)) or (path.is_file() and os.access(path, os.R_OK))
    return Check(
        "data source",
        ok,
        True,
        f"{path}" + ("" if ok else ": missing or unreadable"),
        "" if ok else "fix data.source in params.yaml (or --set data.source=...); `make data` makes the demo dataset",
        DataSourceError,
    )


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.required and not c.ok]


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        lines.append(f"{mark}  {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"      {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines)


def ensure_ready(params: Params, **kw: Any) -> list[Check]:
    """Run every check; when a required one fails, raise the error of the first failure (its exit
    code: 3 data, 4 tracking, 6 environment) naming only what failed and its fix."""
    checks = run_checks(params, **kw)
    failed = failures(checks)
    if failed:
        lines = []
        for c in failed:
            lines.append(f"{c.name}: {c.detail}")
            if c.fix:
                lines.append(f"  fix: {c.fix}")
        raise failed[0].error("preflight failed: " + "\n".join(lines))
    return checks


def exit_code(checks: list[Check]) -> int:
    """`trainyard doctor`'s exit code: that of the first failed required check, 0 when none failed."""
    failed = failures(checks)
    return failed[0].error.exit_code if failed else 0
