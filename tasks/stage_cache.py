"""The stage cache: verified dataset copies on local SSD/tmpfs, one directory per version.

Layout under ``stage.root``::

    <md5 hex>/                 a published dataset version (its DVC md5 without ".dir")
        .trainyard-manifest.json   relpath, size, md5 of every file; written last
        ...dataset files (read-only)...
    .partial/<md5 or fingerprint>/   downloads in progress; resumable, never read by training
    .index/<source id>.json    source listing fingerprint -> version (the cheap warm path)
    .locks/<name>.lock         flock files: one writer per version, shared "in use" leases

Publishing is a rename of a fully verified directory, so a crash can only leave a
``.partial`` directory behind, and the next run resumes from it. Eviction is LRU by last
use and skips any version whose "in use" lease a running training holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tasks.errors import DataSourceError

MANIFEST = ".trainyard-manifest.json"
LAST_USED = ".trainyard-last-used"
Manifest = list[tuple[str, int, str]]  # (relpath, size, md5), sorted by relpath

# Headroom kept free on stage.root beyond the dataset itself: filesystems misbehave when full.
_SPACE_MARGIN_FRACTION = 0.05
_SPACE_MARGIN_MIN = 256 << 20


@dataclass(frozen=True)
class Version:
    """A published dataset version in the cache."""

    key: str  # md5 hex (the DVC md5 without ".dir")
    path: Path
    files: int
    bytes: int


def default_stage_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "trainyard" / "stage"


class StageCache:
    """A content-addressed cache of dataset versions under one root directory."""

    def __init__(self, root: Path | str | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_stage_root()
        self.max_bytes = max_bytes

    # ------------------------------------------------------------------ setup

    def ensure_root(self) -> None:
        try:
            for sub in ("", ".partial", ".index", ".locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataSourceError(
                f"stage.root {self.root} cannot be created: {exc.strerror}; set stage.root to a writable local directory"
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise DataSourceError(
                f"stage.root {self.root} is not writable; set stage.root to a writable local directory"
            )

    # ------------------------------------------------------------------ lookup

    def version_path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str, verify: bool = False) -> Version | None:
        """The published version ``key``, or None. ``verify`` re-hashes every file."""
        path = self.version_path(key)
        manifest = read_manifest(path)
        if manifest is None:
            return None
        if verify:
            bad = verify_files(path, manifest)
            if bad:
                # A damaged copy is moved aside (not deleted under a reader) and re-staged.
                self._discard(path)
                return None
        self.touch(key)
        return Version(key, path, len(manifest), sum(e[1] for e in manifest))

    def touch(self, key: str) -> None:
        marker = self.version_path(key) / LAST_USED
        with contextlib.suppress(OSError):
            marker.touch()  # bumps the mtime LRU eviction reads

    # ------------------------------------------------------------------ index (warm path)

    def index_get(self, source_id: str, fingerprint: str) -> str | None:
        path = self._index_path(source_id)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        key = data.get(fingerprint) if isinstance(data, dict) else None
        return key if isinstance(key, str) else None

    def index_put(self, source_id: str, fingerprint: str, key: str) -> None:
        path = self._index_path(source_id)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[fingerprint] = key
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _index_path(self, source_id: str) -> Path:
        return self.root / ".index" / (hashlib.sha256(source_id.encode()).hexdigest()[:32] + ".json")

    # ------------------------------------------------------------------ writing

    def partial_dir(self, name: str) -> Path:
        """A resumable work directory: what an interrupted fetch left is kept for the next run."""
        path = self.root / ".partial" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(
        self, work: Path, key: str, manifest: Manifest, source: str, trusted: set[str] | None = None
    ) -> Version:
        """Verify ``work`` against ``manifest`` and atomically rename it into place.

        ``trusted`` relpaths were hashed as they were written; only their sizes are re-checked.
        """
        bad = verify_files(work, manifest, size_only=trusted or set())
        if bad:
            raise DataSourceError(
                f"staged copy of {source} failed verification ({len(bad)} file(s), first: {bad[0]}); rerun to re-fetch them"
            )
        expected = {e[0] for e in manifest}
        for extra in sorted(_all_files(work) - expected - {MANIFEST, LAST_USED}):
            (work / extra).unlink()  # leftovers of an older attempt must not ride along
        (work / MANIFEST).write_text(json.dumps({"key": key, "source": source, "files": [list(e) for e in manifest]}))
        _make_files_read_only(work)
        (work / LAST_USED).touch()
        target = self.version_path(key)
        try:
            os.rename(work, target)
        except OSError:
            if read_manifest(target) is None:
                raise
            shutil.rmtree(work, ignore_errors=True)  # someone published the same version first
        return Version(key, target, len(manifest), sum(e[1] for e in manifest))

    def admit(self, needed_bytes: int, source: str, keep: str | None = None) -> None:
        """Refuse before downloading when stage.root cannot hold the dataset (after evicting LRU)."""
        margin = max(int(needed_bytes * _SPACE_MARGIN_FRACTION), _SPACE_MARGIN_MIN)
        if shutil.disk_usage(self.root).free >= needed_bytes + margin:
            return
        self.evict(extra_bytes=needed_bytes + margin, keep=keep)
        free = shutil.disk_usage(self.root).free
        if free < needed_bytes + margin:
            raise DataSourceError(
                f"not enough space on stage.root {self.root}: {free / 2**30:.2f} GiB free, {source} needs "
                f"{needed_bytes / 2**30:.2f} GiB + {margin / 2**30:.2f} GiB margin; free space or set stage.root elsewhere"
            )

    # ------------------------------------------------------------------ locks and leases

    @contextlib.contextmanager
    def writer_lock(self, name: str, timeout: float = 3600) -> Iterator[None]:
        """One stager per dataset: a second flow waits here, then finds the version published."""
        with _flock(self.root / ".locks" / f"{name}.lock", fcntl.LOCK_EX, timeout):
            yield

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[Path]:
        """Hold while training reads version ``key``: eviction never removes a leased version."""
        with _flock(self.root / ".locks" / f"{key}.use", fcntl.LOCK_SH, timeout=60):
            self.touch(key)
            yield self.version_path(key)

    # ------------------------------------------------------------------ eviction

    def versions(self) -> list[tuple[float, Version]]:
        out = []
        for path in self.root.iterdir() if self.root.is_dir() else []:
            if path.name.startswith(".") or not path.is_dir():
                continue
            manifest = read_manifest(path)
            if manifest is None:
                continue
            marker = path / LAST_USED
            used = marker.stat().st_mtime if marker.exists() else path.stat().st_mtime
            out.append((used, Version(path.name, path, len(manifest), sum(e[1] for e in manifest))))
        return sorted(out, key=lambda item: item[0])

    def evict(self, extra_bytes: int = 0, keep: str | None = None) -> list[str]:
        """Remove least recently used versions until the cache fits max_bytes (and ``extra_bytes`` more is free)."""
        removed: list[str] = []
        if self.max_bytes is None and not extra_bytes:
            return removed  # no budget and no space request: nothing to do (and no manifest reads on the warm path)
        versions = self.versions()
        total = sum(v.bytes for _, v in versions)
        for _used, version in versions:
            over_budget = self.max_bytes is not None and total > self.max_bytes
            short_of_space = extra_bytes and shutil.disk_usage(self.root).free < extra_bytes
            if not over_budget and not short_of_space:
                break
            if version.key == keep:
                continue
            lock_path = self.root / ".locks" / f"{version.key}.use"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a running training reads it
                self._discard(version.path)
                total -= version.bytes
                removed.append(version.key)
            finally:
                os.close(fd)
        return removed

    def _discard(self, path: Path) -> None:
        trash = self.root / ".partial" / f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
        with contextlib.suppress(OSError):
            os.rename(path, trash)  # out of sight first: a reader never sees a half-deleted version
            shutil.rmtree(trash, ignore_errors=True)  # read-only files go: their folders are writable


# ---------------------------------------------------------------------- helpers


def read_manifest(path: Path) -> Manifest | None:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return [(str(r), int(s), str(m)) for r, s, m in data.get("files", [])]


def verify_files(root: Path, manifest: Manifest, size_only: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Relpaths whose size or md5 does not match. Files in ``size_only`` were hashed as they
    were written, so only their size is checked; others are hashed when their size matches.
    """
    from tasks.adapters.git_dvc import file_md5

    bad = []
    for rel, size, md5 in manifest:
        p = root / rel
        try:
            if not size_is(p, size) or (rel not in size_only and file_md5(p) != md5):
                bad.append(rel)
        except OSError:  # an unreadable file is simply bad
            bad.append(rel)
    return bad


def check_relpath(rel: str, source: str) -> str:
    """Reject paths that would escape the version directory ("..", absolute, empty parts)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\x00" in rel:
        raise DataSourceError(f"{source}: unsafe path {rel!r} (absolute, empty or '..' parts); refusing to stage it")
    return rel


def size_is(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _all_files(root: Path) -> set[str]:
    out = set()
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in files:
            out.add(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return out


def _make_files_read_only(tree: Path) -> None:
    # Files read-only so nothing edits a published version; directories stay writable
    # because Ultralytics writes labels.cache beside the label folders.
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@contextlib.contextmanager
def _flock(path: Path, mode: int, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DataSourceError(f"timed out after {timeout:.0f} s waiting for {path}") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
