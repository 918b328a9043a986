"""Turn a staged dataset (an S3 prefix, a NAS folder) into a DVC version in the project: ``data/NAME``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tasks.adapters.git_dvc import dvc_add, dvc_push
from tasks.errors import TrainyardError
from tasks.params import Params
from tasks.stage import stage_from_params


@dataclass(frozen=True)
class Snapshot:
    path: Path  # data/NAME, relative to the project
    md5: str  # its DVC md5, equal to the staged copy's
    source: str  # where the data came from


def snapshot(params: Params, name: str, *, push: bool = True) -> Snapshot:
    """Copy the staged ``data.source`` to ``data/NAME``, ``dvc add`` it (and ``dvc push``).

    The copy must get the staged copy's md5 from DVC, so the data hash on earlier runs names
    this version; anything else is an error and nothing is pushed.
    """
    staged = stage_from_params(params)
    dest = params.base_dir / "data" / name
    if dest.exists():
        raise TrainyardError(f"{dest} already exists; choose another name or remove it")
    tmp = dest.with_name(f".{name}.snapshot-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(staged.path, tmp, ignore=shutil.ignore_patterns(".trainyard-*", "*.cache"))
    for p in tmp.rglob("*"):
        if p.is_file():
            p.chmod(0o644)  # staged files are read-only; the project's copy is the user's to edit
    tmp.rename(dest)
    md5 = dvc_add(dest, params.base_dir)
    if md5 != staged.md5:
        raise TrainyardError(f"dvc recorded {md5} for {dest}, but the staged copy is {staged.md5}")
    if push:
        dvc_push([f"{dest}.dvc"], params.base_dir)
    return Snapshot(dest.relative_to(params.base_dir), md5, staged.source)
