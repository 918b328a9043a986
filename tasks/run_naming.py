"""What a person reads in the MLflow runs table: a short name that says how runs differ, and a note.

The hashes that identify a run stay in its ``trainyard.*`` tags; the name is for people. It
starts with the model and the epochs, then every ``--set train.*`` value as the user wrote it
(the one thing that usually differs between runs of a project), so a table that cuts names at
~25 characters still tells them apart. Reproductions and replays say so first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.params import Params
    from tasks.repro_key import ReproKey
    from tasks.validate import SplitStats

_SHORT = {"epochs": "ep", "imgsz": "img", "batch": "b"}  # the commonest keys, in fewer characters
MAX_NAME = 120
NOTE_TAG = "mlflow.note.content"  # the run page's Description


def readable_name(params: "Params", extra_tags: dict[str, str] | None = None, stop_after: int | None = None) -> str:
    """``yolo11n ep40 lr0=0.01 img64``; ``repro-of-<run name>`` / ``replay3-of-<run name>`` for reproductions."""
    tags = extra_tags or {}
    if tags.get("trainyard.reproduces"):
        original = tags.get("trainyard.reproduces_name") or tags["trainyard.reproduces"][:8]
        mark = f"replay{stop_after}" if stop_after else "repro"
        return f"{mark}-of-{original}"[:MAX_NAME]
    model = Path(str(params.train.get("model", "model"))).stem
    parts = [model]
    if tags.get("trainyard.sweep.trial"):  # a sweep's trials sort and read as t0, t1, ... under their parent
        parts.insert(0, f"t{tags['trainyard.sweep.trial']}")
    changed: dict[str, str] = {}
    for override in params.overrides:
        dotted, _, value = override.partition("=")
        section, _, key = dotted.strip().partition(".")
        if section == "train" and key not in ("model", "seed"):
            changed[key] = value.strip()  # as written: 0.01, not 0.010000000000000002
        elif section == "data" and key == "source":
            changed["data"] = Path(value.strip().rstrip("/")).name
    epochs = changed.pop("epochs", None) or str(params.train.get("epochs", ""))
    if epochs:
        parts.append(f"ep{epochs}")
    for key, value in changed.items():
        parts.append(f"{_SHORT[key]}{value}" if key in _SHORT else f"{key}={value}")
    return " ".join(parts)[:MAX_NAME]


def description(params: "Params", key: "ReproKey", data_source: str, outcome: str = "") -> str:
    """The run's note (``mlflow.note.content``, the Description box of the run page), in Markdown."""
    from tasks.redact import redact

    env = "image" if key.env_kind == "docker" else "environment"
    lines = [
        f"**data** `{key.data_hash}` from `{redact(data_source)}`",
        f"**params** `{key.params_hash[:12]}`, overrides: {redact(' '.join(params.overrides)) or 'none'}",
        f"**code** `{key.code_commit[:12]}`{' (dirty)' if key.code_dirty else ''}, {env} `{key.env_digest[:19]}`",
        f"**reproduction key** `{key.digest[:16]}` (`trainyard reproduce RUN_ID` re-runs it)",
    ]
    if outcome:
        lines.insert(0, f"**{outcome}**")
    return "  \n".join(lines)


def dataset_profile(splits: "dict[str, SplitStats]", names: list[str]) -> dict[str, Any]:
    """What the MLflow dataset input shows: images per split and the class names."""
    return {"splits": {k: v.images for k, v in splits.items()}, "classes": names}
