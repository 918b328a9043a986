"""Facts every benchmark report records about the code it measured (shared by the bench scripts)."""

from __future__ import annotations

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
