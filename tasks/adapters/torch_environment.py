"""The environment digest: which interpreter, packages and torch/CUDA build trained a model.

Without Docker there is no image digest to pin, so the reproduction key records a digest
of what the training interpreter actually has. It is computed by running this module
with that interpreter (``python -m tasks.adapters.torch_environment``), so the flow never imports torch.
"""

from __future__ import annotations

import hashlib
import json
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
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except ImportError:
        info["torch"] = None
    return info


def digest_of(details: dict[str, Any]) -> str:
    blob = json.dumps(details, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def local_environment(python: str = sys.executable, timeout: float = 120) -> Environment:
    """Describe the interpreter ``python`` by running this module in it."""
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
