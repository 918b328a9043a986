"""The environment digest: which interpreter, packages and torch/CUDA build trained a model.

Without Docker there is no image digest to pin, so the reproduction key records a digest
of what the training interpreter has. It reads package metadata and torch's own
``torch/version.py`` and never imports torch (importing it cost 2.8 s and 700 MiB per run).
For the flow's own interpreter, the usual case, that happens in-process; another training
interpreter runs this module (``python -m tasks.adapters.torch_environment``).

cuDNN is identified by the ``nvidia-cudnn-*`` wheel that PyTorch's CUDA wheels install; a torch
built against a system cuDNN (conda, source builds) records the torch build (its git commit)
but not that library's version.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.errors import RunnerError


@dataclass(frozen=True)
class Environment:
    """Where training runs: ``kind`` is "local" (an interpreter) or "docker" (an image)."""

    kind: str
    digest: str  # "sha256:<hex>"
    details: dict[str, Any]


def describe_interpreter() -> dict[str, Any]:
    """Facts about this interpreter that change numerical results or break runs."""
    packages = sorted(
        {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions() if d.metadata["Name"]}.items()
    )
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "system": platform.system(),
        # the project itself is covered by the code commit; its own version must not churn the digest
        "packages": {name: version for name, version in packages if name != "trainyard"},
    }
    info.update(_torch_build(info["packages"]))
    return info


def _torch_build(packages: dict[str, str]) -> dict[str, Any]:
    """torch's version, CUDA/ROCm build and commit from its ``version.py``, read as text (never imported)."""
    try:
        dist = metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        return {"torch": None}
    values: dict[str, Any] = {}
    try:
        tree = ast.parse(Path(str(dist.locate_file("torch/version.py"))).read_text())
    except (OSError, SyntaxError):
        tree = ast.Module(body=[], type_ignores=[])
    for node in tree.body:  # `__version__ = '2.14.1+cu130'`, `cuda: Optional[str] = '13.0'`
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            values[target.id] = value.value
    cudnn = sorted(v for k, v in packages.items() if k.startswith("nvidia-cudnn"))
    return {
        "torch": values.get("__version__", dist.version),
        "cuda": values.get("cuda"),
        "hip": values.get("hip"),
        "torch_commit": values.get("git_version"),
        "cudnn": cudnn[0] if cudnn else None,
    }


def digest_of(details: dict[str, Any]) -> str:
    blob = json.dumps(details, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def local_environment(python: str = sys.executable, timeout: float = 120) -> Environment:
    """Describe the interpreter ``python``: in-process when it is this one, else by running this module in it."""
    # not resolved: every venv's python links to the same base interpreter, with other packages
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        details = describe_interpreter()
        return Environment(kind="local", digest=digest_of(details), details=details)
    try:
        proc = subprocess.run(
            [python, "-m", "tasks.adapters.torch_environment"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=str(Path(__file__).resolve().parent.parent),  # so `tasks` imports from a plain checkout too
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerError(f"could not run the training interpreter {python}: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RunnerError(f"the training interpreter {python} failed to describe itself: {' | '.join(tail)}")
    details = json.loads(proc.stdout)
    return Environment(kind="local", digest=digest_of(details), details=details)


if __name__ == "__main__":
    print(json.dumps(describe_interpreter(), sort_keys=True))
