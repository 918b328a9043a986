"""Stage a dataset into a local, content-addressed, verified cache.

Training reads a local copy, never the source: network storage starves GPUs, and
Ultralytics writes ``labels.cache`` beside the label files, which must not land in (or
fail on) a read-only NAS or a DVC-tracked directory. Each dataset version lives in
``<stage.root>/<dvc md5>/`` so the data hash on the MLflow run names the exact copy.

Publishing is atomic: files are copied into a temporary directory under the cache root,
re-hashed, and only then renamed into place; a crash leaves no directory that looks
complete. This module handles local and NAS paths; remote sources plug in here.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.errors import DataSourceError
from tasks.version import dir_manifest, dvc_dir_md5, manifest_md5

MANIFEST = ".trainyard-manifest.json"


@dataclass(frozen=True)
class StagedDataset:
    """A verified local copy of one dataset version."""

    path: Path  # the staged directory
    md5: str  # DVC md5 of the content ("<hex>.dir"), the data hash of the reproduction key
    source: str  # where it came from, for messages and tags
    files: int
    bytes: int
    reused: bool  # True when an existing verified copy was returned

    def training_yaml(self, dest: Path) -> Path:
        """Write a data.yaml for Ultralytics at ``dest`` that points at this copy.

        The copy's own data.yaml stays byte-identical to the source (it is part of the
        hash); a ``path:`` inside it could point back at the source, so it is overridden.
        """
        config = yaml.safe_load((self.path / "data.yaml").read_text()) or {}
        config.pop("background", None)  # a trainyard key (see tasks.validate); not Ultralytics'
        config["path"] = str(self.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(yaml.safe_dump(config, sort_keys=False))
        return dest


def default_stage_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "trainyard" / "stage"


def stage_local(source: Path | str, root: Path | str | None = None) -> StagedDataset:
    """Copy a local or NAS dataset directory into the cache (or reuse the verified copy)."""
    source = Path(source)
    if not source.is_dir():
        raise DataSourceError(f"data.source {source} is not a directory (valid form: a folder holding data.yaml)")
    root = Path(root) if root is not None else default_stage_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataSourceError(f"stage.root {root} cannot be created: {exc.strerror}") from None
    if not os.access(root, os.W_OK):
        raise DataSourceError(f"stage.root {root} is not writable; set stage.root to a writable local directory")

    manifest = dir_manifest(source)
    md5 = manifest_md5(manifest)
    size = sum(entry[1] for entry in manifest)
    target = root / md5.removesuffix(".dir")
    if (target / MANIFEST).exists():
        return StagedDataset(target, md5, str(source), len(manifest), size, reused=True)

    free = shutil.disk_usage(root).free
    if free < size * 1.1 + (64 << 20):
        raise DataSourceError(
            f"stage.root {root} has {free >> 20} MiB free; dataset {source} needs {size >> 20} MiB plus a margin"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        for rel, _size, _md5 in manifest:
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, dest)
        copied = dvc_dir_md5(tmp)
        if copied != md5:
            raise DataSourceError(
                f"dataset {source} changed while it was being staged (hash {md5} before, {copied} after); retry"
            )
        (tmp / MANIFEST).write_text(
            json.dumps({"md5": md5, "source": str(source), "files": [list(e) for e in manifest]}, indent=0)
        )
        _make_files_read_only(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if (target / MANIFEST).exists():  # another flow published the same version first
                shutil.rmtree(tmp, ignore_errors=True)
                return StagedDataset(target, md5, str(source), len(manifest), size, reused=True)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StagedDataset(target, md5, str(source), len(manifest), size, reused=False)


def _make_files_read_only(tree: Path) -> None:
    # Files read-only so nothing edits a published version; directories stay writable
    # because Ultralytics writes labels.cache beside the label folders.
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
