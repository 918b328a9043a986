"""The stage cache: verified dataset copies on local SSD/tmpfs, one directory per version.

Layout under ``stage.root``::

    <md5 hex>/                 a published dataset version (its DVC md5 without ".dir")
        .trainyard-manifest.json   relpath, size, md5 of every file; written last
        .trainyard-stat.json       size, mtime_ns, inode of every file at publish (reuse check)
        ...dataset files (read-only)...
    .partial/<md5 or fingerprint>/   downloads in progress; resumable, never read by training
    .index/<source id>.json    source listing fingerprint -> version (the cheap warm path)
    .locks/<name>.lock         flock files: one writer per version, shared "in use" leases

Publishing is a rename of a fully verified directory, so a crash can only leave a
``.partial`` directory behind, and the next run resumes from it. Eviction is LRU by last
use and skips any version whose "in use" lease a running training holds.

Reuse proves the copy is still the recorded version: every file's (size, mtime_ns, inode)
is compared with what was recorded at publish (one stat per file), a few files chosen at
random are re-hashed, and anything that differs triggers a full re-hash. A damaged copy is
reported (``StageCache.reports``), moved aside to ``.partial/.damaged-<key>-...`` for
inspection and restaged; it is never repaired in place. ``.partial`` entries not touched
for ``PARTIAL_MAX_AGE_S`` and not locked by a live stager are garbage-collected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tasks.errors import DataSourceError
from tasks.file_locks import EXCLUSIVE, SHARED, acquire, held, try_exclusive

MANIFEST = ".trainyard-manifest.json"
LAST_USED = ".trainyard-last-used"
STATS = ".trainyard-stat.json"
_MARKERS = frozenset({MANIFEST, LAST_USED, STATS})
# Files Ultralytics itself writes into a dataset (labels.cache, cache=disk .npy) are not damage.
_TOLERATED_SUFFIXES = (".cache", ".npy")
# Files re-hashed at random on every reuse, on top of the stat comparison (bit rot keeps mtimes).
REUSE_SAMPLE_FILES = 2
# A .partial entry unused this long (and not locked by a live stager) is garbage.
PARTIAL_MAX_AGE_S = 24 * 3600
Manifest = list[tuple[str, int, str]]  # (relpath, size, md5), sorted by relpath

# Headroom kept free on stage.root beyond the dataset itself: filesystems misbehave when full
# (ext4 reserves its own 5 % for root; this covers metadata, labels.cache and temp files).
_SPACE_MARGIN_FRACTION = 0.05
_SPACE_MARGIN_MIN = 1 << 20


def space_margin(needed_bytes: int) -> int:
    """Free space kept beyond a dataset of ``needed_bytes``: 5 % of it, at least 1 MiB."""
    return max(int(needed_bytes * _SPACE_MARGIN_FRACTION), _SPACE_MARGIN_MIN)


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
        self.reports: list[str] = []  # damaged copies found (one line each), for the run's notes
        self._partial_locks: dict[str, int] = {}  # .partial name -> fd holding a shared flock

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
        """The published version ``key`` (proved intact, see :meth:`check`), or None.

        ``verify`` re-hashes every file instead of trusting unchanged stats. A damaged copy
        is reported in :attr:`reports`, moved aside and None returned, so it is restaged.
        """
        path = self.version_path(key)
        manifest = read_manifest(path)
        if manifest is None:
            return None
        bad = self.check(path, manifest, full=verify)
        if bad:
            self._quarantine(key, bad)
            return None
        self.touch(key)
        return Version(key, path, len(manifest), sum(e[1] for e in manifest))

    def check(self, path: Path, manifest: Manifest, full: bool = False) -> list[str]:
        """What in the published copy ``path`` differs from its manifest ("missing: x", "extra: y", relpaths).

        Cheap path: one stat per file compared with the (size, mtime_ns, inode) recorded at
        publish, plus :data:`REUSE_SAMPLE_FILES` random files re-hashed. When any stat
        differs (or no record exists, or ``full``) every file is re-hashed; when that
        passes the stat record is renewed (a legitimate copy or restore of the cache).
        """
        recorded = _read_stats(path)
        current, extra = _scan(path, manifest)
        if extra:
            return [f"extra: {rel}" for rel in extra]
        missing = [rel for rel, _size, _md5 in manifest if rel not in current]
        if missing:
            return [f"missing: {rel}" for rel in missing]
        if not full and recorded is not None and all(recorded.get(rel) == current[rel] for rel in current):
            sample = random.sample(manifest, min(REUSE_SAMPLE_FILES, len(manifest)))
            bad = verify_files(path, sample)
            if not bad:
                return []
        bad = verify_files(path, manifest)
        if not bad:
            _write_stats(path, current)
        return bad

    def _quarantine(self, key: str, bad: list[str]) -> None:
        path = self.version_path(key)
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}"
        aside = self.root / ".partial" / f".damaged-{key}-{stamp}"
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return  # another stager moved it first (and reported it)
        except OSError as exc:
            raise DataSourceError(
                f"staged copy {path} is damaged ({shown}) and cannot be moved aside: {exc.strerror}; remove it"
            ) from None
        self.reports.append(
            f"stage cache copy {key} was damaged ({len(bad)} file(s): {shown}); "
            f"moved aside to {aside} and restaged from the source"
        )

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
        """A resumable work directory: what an interrupted fetch left is kept for the next run.

        A shared flock on ``.locks/partial-<name>.lock`` is held until :meth:`release_partials`
        (or the process dies), so :meth:`gc_partials` never removes a directory in use.
        """
        if name not in self._partial_locks:  # a wait means the GC is removing it right now
            self._partial_locks[name] = acquire(
                self.root / ".locks" / f"partial-{name}.lock", SHARED, 60, DataSourceError
            )
        path = self.root / ".partial" / name
        path.mkdir(parents=True, exist_ok=True)
        os.utime(path)  # its age is the time since a stager last took it
        return path

    def release_partials(self) -> None:
        for fd in self._partial_locks.values():
            os.close(fd)
        self._partial_locks.clear()

    def gc_partials(self, max_age_s: float = PARTIAL_MAX_AGE_S) -> list[str]:
        """Remove ``.partial`` entries unused for ``max_age_s`` that no live stager holds; return their names.

        Work dirs of an older source version, damaged copies moved aside and trash of an
        interrupted removal end here. Only the top entry's mtime is read (a stager sets it
        when it takes the directory); a live stager's shared lock keeps it safe whatever its age.
        """
        removed: list[str] = []
        now = time.time()
        try:
            entries = list(os.scandir(self.root / ".partial"))
        except OSError:
            return removed
        for entry in entries:
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime < max_age_s:
                    continue
            except OSError:
                continue
            fd = try_exclusive(self.root / ".locks" / f"partial-{entry.name}.lock")
            if fd is None:
                continue  # a live stager is working in it
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)  # read-only files go: their folders are writable
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                removed.append(entry.name)
            finally:
                os.close(fd)  # the lock file stays: unlinking it could split two lockers onto two inodes
        return removed

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
        _write_stats(work, {rel: _stat_row(os.stat(work / rel)) for rel, _size, _md5 in manifest})  # rename keeps them
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
        margin = space_margin(needed_bytes)
        if shutil.disk_usage(self.root).free >= needed_bytes + margin:
            return
        self.evict(extra_bytes=needed_bytes + margin, keep=keep)
        free = shutil.disk_usage(self.root).free
        if free < needed_bytes + margin:
            raise DataSourceError(
                f"not enough space on stage.root {self.root}: {free / 2**30:.2f} GiB free, {source} needs "
                f"{needed_bytes / 2**30:.2f} GiB + {margin / 2**30:.3f} GiB margin; free space or set stage.root elsewhere"
            )

    # ------------------------------------------------------------------ locks and leases

    @contextlib.contextmanager
    def writer_lock(self, name: str, timeout: float = 3600) -> Iterator[None]:
        """One stager per dataset: a second flow waits here, then finds the version published."""
        with held(self.root / ".locks" / f"{name}.lock", EXCLUSIVE, timeout, DataSourceError):
            yield

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[Path]:
        """Hold while training reads version ``key``: eviction never removes a leased version."""
        with held(self.root / ".locks" / f"{key}.use", SHARED, 60, DataSourceError):
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
            fd = try_exclusive(self.root / ".locks" / f"{version.key}.use")
            if fd is None:
                continue  # a running training reads it
            try:
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


StatRow = tuple[int, int, int]  # size, mtime_ns, inode


def _stat_row(st: os.stat_result) -> StatRow:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _read_stats(path: Path) -> dict[str, StatRow] | None:
    try:
        data = json.loads((path / STATS).read_text())
        return {str(rel): (int(row[0]), int(row[1]), int(row[2])) for rel, row in data["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _write_stats(path: Path, stats: dict[str, StatRow]) -> None:
    tmp = path / f"{STATS}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):  # a read-only cache stays usable; the next reuse re-hashes
        tmp.write_text(json.dumps({"files": stats}))
        os.replace(tmp, path / STATS)


def _scan(path: Path, manifest: Manifest) -> tuple[dict[str, StatRow], list[str]]:
    """Stat rows of the manifest's files present under ``path``, and files that do not belong there."""
    expected = {rel for rel, _size, _md5 in manifest}
    current: dict[str, StatRow] = {}
    extra: list[str] = []
    stack = [(str(path), "")]
    while stack:
        top, prefix = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, rel + "/"))
            elif rel in expected:
                with contextlib.suppress(OSError):
                    current[rel] = _stat_row(entry.stat(follow_symlinks=False))
            elif not (prefix == "" and (entry.name in _MARKERS or entry.name.startswith(STATS))) and not (
                entry.name.endswith(_TOLERATED_SUFFIXES)
            ):
                extra.append(rel)
    return current, sorted(extra)


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
