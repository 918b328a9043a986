"""Which GPUs does a training use? The answer GPU telemetry needs to sample only the job's own.

A machine with eight GPUs often runs several trainings; sampling every GPU would put another
job's utilisation into this run's record. The GPUs a training gets follow from three settings,
resolved here as CUDA and Docker resolve them:

* ``train.device`` (as Ultralytics' ``select_device`` reads it) — ``cpu``/``mps``: none;
  unset, ``""`` or ``cuda``: the first GPU the process can see; ``-1`` (Ultralytics picks an
  idle one when training starts): every GPU it can see, since the pick is not known before;
  ``0``, ``"0,1"``, ``[0, 1]``, ``cuda:1``: those, numbered among the GPUs it can see (an index
  past them that names a visible host GPU is that GPU, as Ultralytics translates it).
* the local runner: ``CUDA_VISIBLE_DEVICES`` of the flow's environment (which the training
  inherits): the GPUs the process can see, by host index or by UUID (``GPU-…``, ``MIG-…``).
* the Docker runner: ``container.gpus`` (``all``, ``"0,2"``, ``none``) — the container sees
  those host GPUs, numbered from 0 inside it.

The answer is a list of NVML selectors (a host index as a string, or a UUID), or None for "every
GPU of the host".
"""

from __future__ import annotations

import os
from typing import Any, Mapping

_NO_GPU = ("cpu", "mps", "none")


def job_gpus(device: Any, runner_kind: str, container_gpus: Any, cuda_visible: str | None) -> list[str] | None:
    """The NVML selectors of the GPUs the training uses; ``[]`` for none, None for all of the host's."""
    if runner_kind == "docker":
        given = str(container_gpus if container_gpus is not None else "none").strip().lower()
        if given in ("none", "", "false", "0 gpus"):
            return []
        visible: list[str] | None = None if given == "all" else [g.strip() for g in given.split(",") if g.strip()]
    else:
        visible = _visible(cuda_visible)
        if visible == []:
            return []
    wanted = _device_indices(device)
    if wanted is None:
        return visible
    if not wanted:
        return []
    if visible is None:
        return [str(i) for i in wanted]
    return [visible[i] if i < len(visible) else str(i) for i in wanted if i < len(visible) or str(i) in visible]


def runner_gpus(job_args: Mapping[str, Any], runner: Any) -> list[str] | None:
    """:func:`job_gpus` for a job about to run on ``runner`` (its ``kind``, and ``gpus`` for Docker)."""
    return job_gpus(
        job_args.get("device"), runner.kind, getattr(runner, "gpus", None), os.environ.get("CUDA_VISIBLE_DEVICES")
    )


def _visible(cuda_visible: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: unset = all; up to the first invalid entry; "" or -1 = none."""
    if cuda_visible is None:
        return None
    out: list[str] = []
    for part in cuda_visible.split(","):
        part = part.strip()
        if part.isdigit():
            out.append(str(int(part)))
        elif part.startswith(("GPU-", "MIG-")):
            out.append(part)
        else:
            break  # CUDA ignores this entry and every one after it ("-1" hides all)
    return out


def _device_indices(device: Any) -> list[int] | None:
    """``train.device`` as GPU indices; None when Ultralytics picks idle ones as training starts."""
    if device is None:
        return [0]
    items = device if isinstance(device, (list, tuple)) else str(device).split(",")
    names = [str(i).strip().lower().removeprefix("cuda:") for i in items]
    names = [n for n in names if n and n != "cuda"]
    if not names:
        return [0]
    if "-1" in names:
        return None
    if any(n in _NO_GPU for n in names):
        return []
    return [int(n) for n in names if n.isdigit()]
