"""What the bench scripts share: facts every report records about the code it measured, and staging the data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def git_head(repo: Path) -> str:
    """The short commit of ``repo``, "+ uncommitted changes" when the tree is dirty, or "n/a"."""
    try:  # read-only git plumbing: neither command writes the index
        head = (
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "n/a"
        )
        dirty = (
            subprocess.run(
                ["git", "-C", str(repo), "diff-index", "--quiet", "HEAD", "--"], capture_output=True, timeout=10
            ).returncode
            == 1
        )
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    return head + " + uncommitted changes" if dirty and head != "n/a" else head


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo, or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def stage_for_training(trainyard: Path, params: Path, sets: list[str], cwd: Path, env: dict[str, str]) -> Path:
    """``trainyard stage`` the params' data and return the staged copy's data.yaml.

    Benchmarks stage first so that both sides train on the same local copy and copying stays
    out of what they time.
    """
    staged = subprocess.run(
        [str(trainyard), "stage", "--params", str(params), *sets, "--json"],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(json.loads(staged.stdout.strip().splitlines()[-1])["path"]) / "data.yaml"
