"""tasks.gpu_scope: the GPUs a training uses, as CUDA, Docker and Ultralytics resolve them."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.gpu_scope import job_gpus


@pytest.mark.parametrize(
    ("device", "visible", "expected"),
    [
        ("cpu", None, []),
        ("mps", None, []),
        (None, None, ["0"]),  # unset: Ultralytics takes the current (first) CUDA device
        ("cuda", None, ["0"]),
        (0, None, ["0"]),
        ("0,1", None, ["0", "1"]),
        ([2, 3], None, ["2", "3"]),
        ("cuda:1", None, ["1"]),
        (-1, None, None),  # Ultralytics picks an idle GPU when training starts: any of them
        ("1", "2,3", ["3"]),  # device indexes the GPUs CUDA_VISIBLE_DEVICES leaves
        (None, "2,3", ["2"]),
        ("3", "3", ["3"]),  # a host index Ultralytics translates ('3' -> '0' under CUDA_VISIBLE_DEVICES=3)
        ("0", "GPU-aaaa,MIG-bbbb", ["GPU-aaaa"]),
        ("0,1", "MIG-bbbb", ["MIG-bbbb"]),  # beyond what is visible: not sampled
        ("0", "", []),  # CUDA_VISIBLE_DEVICES="" hides every GPU
        ("0", "-1", []),
        ("0", "1,x,2", ["1"]),  # CUDA stops at the first invalid entry
    ],
)
def test_local_runner(device: Any, visible: str | None, expected: list[str] | None) -> None:
    assert job_gpus(device, "local", None, visible) == expected


@pytest.mark.parametrize(
    ("device", "gpus", "expected"),
    [
        ("0", "none", []),
        ("0", "2,3", ["2"]),  # the container numbers its GPUs from 0
        ("0,1", "2,3", ["2", "3"]),
        (None, "all", ["0"]),
        ("1", "all", ["1"]),
        (-1, "all", None),
        ("cpu", "all", []),
    ],
)
def test_docker_runner_ignores_the_hosts_cuda_visible_devices(
    device: Any, gpus: str, expected: list[str] | None
) -> None:
    assert job_gpus(device, "docker", gpus, "7") == expected
