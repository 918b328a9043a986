"""Stage a dataset from S3/MinIO, a local or NAS path, or DVC onto local disk, verified.

Training reads a local copy, never the source: network storage starves GPUs, and
Ultralytics writes ``labels.cache`` beside the label files, which must not land in (or
fail on) a read-only NAS or a DVC-tracked directory. Each version lives in the stage
cache (tasks.stage_cache) under its DVC md5, so the data hash on the MLflow run names
the exact copy that trained, and for DVC-tracked data it *is* the DVC version.

Warm path: the source is listed (names, sizes, mtimes or ETags) and the listing's
fingerprint looked up in the cache index; an unchanged source is not re-hashed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from tasks.dataset_yaml import YAML_SUFFIXES, find_dataset_yaml, read_dataset_yaml
from tasks.errors import DatasetError, DataSourceError, TrainyardError
from tasks.stage_plan import LocalPlan, plan_local
from tasks.stage_cache import Manifest, StageCache, check_relpath, size_is
from tasks.adapters.git_dvc import DVC_SKIPPED_DIRS, dvc_file_md5, dvc_get, dvc_md5_at_rev, file_md5, manifest_md5

if TYPE_CHECKING:
    from tasks.params import Params

Progress = Callable[[int, int], None]  # (files done, bytes done), cumulative


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset comes from (``data.*`` in params.yaml)."""

    kind: str  # "local" (a path, DVC-tracked or not), "dvc" (a DVC-tracked path at a git rev), "s3"
    location: str  # a path, or s3://bucket/prefix
    rev: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    given: str | None = None  # data.source as the user wrote it (relative paths stay relative)
    yaml: str | None = None  # the dataset yaml's name when data.source names the file, not its folder

    @property
    def display(self) -> str:
        name = self.given or self.location
        return f"{name}@{self.rev}" if self.rev else name


def source_spec(
    source: str,
    *,
    base_dir: Path,
    rev: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
) -> SourceSpec:
    """Classify ``data.source``: s3://… is S3; a path with ``data.rev`` set is DVC at that rev; else local."""
    if source.startswith("s3://"):
        if rev:
            raise DataSourceError(f"data.rev is for DVC-tracked paths; {source} is an S3 source (remove data.rev)")
        prefix, _slash, name = source.rstrip("/").rpartition("/")
        if name.lower().endswith(YAML_SUFFIXES) and prefix != "s3:/":
            return SourceSpec("s3", prefix + "/", None, endpoint_url, region, profile, given=source, yaml=name)
        return SourceSpec("s3", source, None, endpoint_url, region, profile, given=source)
    if "://" in source:
        raise DataSourceError(f"data.source {source!r}: valid forms are s3://bucket/prefix or a local/NAS path")
    path = Path(source).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.suffix.lower() in YAML_SUFFIXES and (path.is_file() or not path.exists()):
        return SourceSpec("dvc" if rev else "local", str(path.parent), rev, given=source, yaml=path.name)
    return SourceSpec("dvc" if rev else "local", str(path), rev, given=source)


@dataclass(frozen=True)
class StagedDataset:
    """A verified local copy of one dataset version."""

    path: Path  # the staged directory
    md5: str  # DVC md5 of the content ("<hex>.dir"), the data hash of the reproduction key
    source: str  # where it came from, for messages and tags
    files: int
    bytes: int
    reused: bool  # True when an existing verified copy was returned
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())  # things the user should know (e.g. .dvc out of sync)
    yaml: str | None = None  # the dataset yaml to train (None: the one dataset yaml at the top of the copy)

    @property
    def key(self) -> str:
        return self.md5.removesuffix(".dir")

    @property
    def yaml_path(self) -> Path:
        """The dataset yaml inside the copy."""
        return find_dataset_yaml(self.path / self.yaml if self.yaml else self.path)

    def training_yaml(self, dest: Path) -> Path:
        """Write the data yaml Ultralytics trains from at ``dest``: every split an absolute path inside this copy.

        The copy's own yaml stays as staged (it is part of the hash). Its splits are
        resolved here exactly as validation resolved them (Roboflow's ``../train/images``
        included), ``path:`` is the copy (what a container mounts), and keys that could
        make Ultralytics fetch or run anything (``download:``) are left out.
        """
        problems: list[str] = []
        config = read_dataset_yaml(self.yaml_path, problems)
        if config is None:
            raise DataSourceError(f"staged dataset {self.path} cannot be read: {'; '.join(problems)}")
        data: dict[str, Any] = {"path": str(self.path)}
        for split, entries in config.splits.items():
            paths = [e.path for e in entries]
            data[split] = paths[0] if len(paths) == 1 else paths
        data["nc"] = config.nc
        data["names"] = dict(enumerate(config.names))
        if "channels" in config.data:
            data["channels"] = config.data["channels"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return dest


def stage_dataset(
    spec: SourceSpec, cache: StageCache, *, verify: bool = False, workers: int = 32, progress: Progress | None = None
) -> StagedDataset:
    """Stage ``spec`` into ``cache`` (or return the verified copy already there)."""
    started = time.monotonic()
    cache.ensure_root()
    cache.gc_partials()  # work dirs of older source versions, damaged copies set aside long ago
    reported = len(cache.reports)
    try:
        if spec.kind == "s3":
            staged = _stage_s3(spec, cache, verify, workers, progress)
        elif spec.kind == "dvc":
            staged = _stage_dvc_rev(spec, cache, verify)
        else:
            staged = _stage_local(spec, cache, verify, progress)
    finally:
        cache.release_partials()
    cache.evict(keep=staged.key)
    return replace(
        staged,
        seconds=round(time.monotonic() - started, 3),
        yaml=staged.yaml or spec.yaml,
        notes=tuple(cache.reports[reported:]) + staged.notes,
    )


def stage_local(source: Path | str, root: Path | str | None = None) -> StagedDataset:
    """Stage a local or NAS directory (shorthand for tests and scripts)."""
    return stage_dataset(SourceSpec("local", str(source)), StageCache(root))


# ---------------------------------------------------------------------- local / NAS


def _stage_local(spec: SourceSpec, cache: StageCache, verify: bool, progress: Progress | None) -> StagedDataset:
    source = Path(spec.location)
    listing = _list_local(source)
    yaml_rel = _dataset_yaml(source, [rel for rel, _s, _m in listing], spec)
    plan = plan_local(source, yaml_rel)
    items = _local_items(source, listing, plan)
    source_id = f"local:{source.resolve()}:{yaml_rel}"
    fingerprint = _fingerprint([item[:3] for item in items])
    notes = plan.notes if plan else ()

    def found(hit: StagedDataset) -> StagedDataset:
        return replace(hit, yaml=yaml_rel, notes=notes + (() if plan else _dvc_sync_note(source, hit.md5)))

    if not verify:
        hit = _index_hit(cache, source_id, fingerprint, spec.display)
        if hit:
            return found(hit)
    with cache.writer_lock(_lock_name(source_id)):
        if not verify:
            hit = _index_hit(cache, source_id, fingerprint, spec.display)
            if hit:
                return found(hit)
        cache.admit(sum(item[1] for item in items), spec.display)
        # Copy and hash in one pass (one read of a slow NAS); the copy's own bytes are hashed.
        work = cache.partial_dir(f"fp-{fingerprint[:32]}")
        md5s = _copy_local(work, items, progress)
        again = _local_items(source, _list_local(source), plan_local(source, yaml_rel))
        if _fingerprint([item[:3] for item in again]) != fingerprint:
            raise DataSourceError(f"dataset {source} changed while it was being staged; rerun to stage the new version")
        manifest = [(rel, size, md5s[rel]) for rel, size, *_rest in items]
        key = manifest_md5(manifest).removesuffix(".dir")
        version = cache.lookup(key, verify=verify)
        reused = version is not None
        if version is None:
            version = cache.publish(work, key, manifest, spec.display, trusted=set(md5s))
        else:
            shutil.rmtree(work, ignore_errors=True)
        cache.index_put(source_id, fingerprint, key)
    staged = StagedDataset(version.path, f"{key}.dir", spec.display, version.files, version.bytes, reused)
    return found(staged)


# (relpath in the copy, size, change stamp, file to copy or None, bytes to write or None), sorted by relpath
_Item = tuple[str, int, object, str | None, bytes | None]


def _local_items(source: Path, listing: list[tuple[str, int, int]], plan: LocalPlan | None) -> list[_Item]:
    """What the staged copy holds: the folder's files, plus (see tasks.stage_plan) outside files and rewrites."""
    rewrites = plan.rewrites if plan else {}
    items: list[_Item] = [
        (rel, size, mtime, str(source / rel), None) for rel, size, mtime in listing if rel not in rewrites
    ]
    if plan:
        for src, rel in plan.external:
            try:
                st = os.stat(src)
            except OSError as exc:
                raise DataSourceError(f"cannot read {src}: {exc.strerror}") from None
            items.append((check_relpath(rel, str(source)), st.st_size, st.st_mtime_ns, src, None))
        for rel, data in rewrites.items():
            items.append((rel, len(data), hashlib.md5(data).hexdigest(), None, data))  # noqa: S324 - a change stamp
    return sorted(items, key=lambda item: item[0])


def _dataset_yaml(source: Path, relpaths: list[str], spec: SourceSpec) -> str:
    """The dataset yaml's relpath in a local source; DataSourceError (nothing staged) when there is not exactly one."""
    if spec.yaml:
        _require_dataset_yaml(relpaths, spec)
        return spec.yaml
    try:
        return find_dataset_yaml(source).relative_to(source).as_posix()
    except DatasetError as exc:
        raise DataSourceError(f"{exc}; nothing was staged") from None


def _list_local(source: Path) -> list[tuple[str, int, int]]:
    """(relpath, size, mtime_ns) of every file DVC would hash; refuses links that leave the source."""
    if not source.is_dir():
        if source.exists():
            raise DataSourceError(f"data.source {source} is not a directory (valid form: a folder holding data.yaml)")
        raise DataSourceError(f"data.source {source} does not exist (valid form: a folder holding data.yaml)")
    if not os.access(source, os.R_OK | os.X_OK):
        raise DataSourceError(f"data.source {source} is not readable; check its permissions or the NAS mount")
    real_root = source.resolve()
    out: list[tuple[str, int, int]] = []
    # os.scandir, not os.walk + pathlib: a DirEntry knows from the directory read whether it is a
    # link or a folder, so an unchanged 10,000-file source is listed with one stat per file (0.40 s
    # became 0.2 s here; issue 15's budget for the whole warm check is 0.3 s)
    pending = [(str(source), "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            raise DataSourceError(
                f"cannot list {exc.filename or folder}: {exc.strerror}; check permissions or the NAS mount"
            ) from None
        for entry in entries:
            if entry.is_dir():  # follows links, as os.walk sorts them (and, like it, never enters a linked folder)
                if entry.name in DVC_SKIPPED_DIRS:
                    continue
                if entry.is_symlink():
                    _check_link(Path(entry.path), real_root, source)
                else:
                    pending.append((entry.path, f"{prefix}{entry.name}/"))
                continue
            if entry.is_symlink():
                _check_link(Path(entry.path), real_root, source)
            try:
                st = entry.stat()
            except OSError as exc:
                raise DataSourceError(f"cannot read {entry.path}: {exc.strerror} (a broken link?)") from None
            out.append((check_relpath(prefix + entry.name, str(source)), st.st_size, st.st_mtime_ns))
    if not out:
        raise DataSourceError(f"data.source {source} is empty (valid form: a folder holding data.yaml)")
    return sorted(out)


def _check_link(path: Path, real_root: Path, source: Path) -> None:
    if path.is_symlink() and not path.resolve().is_relative_to(real_root):
        raise DataSourceError(
            f"{path} is a link to {path.resolve()}, outside data.source {source}; refusing to stage it"
        )


def _hash_listing(source: Path, listing: list[tuple[str, int, int]]) -> Manifest:
    return [(rel, size, file_md5(source / rel)) for rel, size, _mtime in listing]


def _copy_local(work: Path, items: list[_Item], progress: Progress | None) -> dict[str, str]:
    """Copy (or write) what the work dir lacks, hashing as it goes; hash what an earlier attempt left."""
    md5s: dict[str, str] = {}
    done_files = done_bytes = 0
    for rel, size, _stamp, src, data in items:
        dest = work / rel
        if data is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            md5s[rel] = hashlib.md5(data).hexdigest()  # noqa: S324 - content address (DVC's), not security
        elif size_is(dest, size):
            md5s[rel] = file_md5(dest)  # resumed: trust nothing, but do not re-read the source
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            digest = hashlib.md5()  # noqa: S324 - content address (DVC's), not security
            try:
                with open(str(src), "rb") as fh, open(tmp, "wb") as out:
                    while chunk := fh.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise DataSourceError(f"cannot copy {src}: {exc.strerror}") from None
            os.replace(tmp, dest)
            md5s[rel] = digest.hexdigest()
        done_files += 1
        done_bytes += size
        if progress:
            progress(done_files, done_bytes)
    return md5s


# ---------------------------------------------------------------------- DVC at a git rev


def _stage_dvc_rev(spec: SourceSpec, cache: StageCache, verify: bool) -> StagedDataset:
    path = Path(spec.location)
    md5 = dvc_md5_at_rev(path, spec.rev or "HEAD")
    key = md5.removesuffix(".dir")
    version = cache.lookup(key, verify=verify)
    if version is not None:
        return StagedDataset(version.path, md5, spec.display, version.files, version.bytes, True)
    with cache.writer_lock(key):
        version = cache.lookup(key, verify=verify)
        if version is not None:
            return StagedDataset(version.path, md5, spec.display, version.files, version.bytes, True)
        work = cache.partial_dir(key)
        shutil.rmtree(work)
        dvc_get(path, spec.rev or "HEAD", work)  # from the DVC cache or remote, exactly that version
        listing = _list_local(work)
        manifest = _hash_listing(work, listing)
        got = manifest_md5(manifest)
        if got != md5:
            raise DataSourceError(f"DVC returned {got} for {spec.display}, but its .dvc file names {md5}")
        version = cache.publish(work, key, manifest, spec.display, trusted={e[0] for e in manifest})
    return StagedDataset(version.path, md5, spec.display, version.files, version.bytes, False)


# ---------------------------------------------------------------------- S3


def _stage_s3(
    spec: SourceSpec, cache: StageCache, verify: bool, workers: int, progress: Progress | None
) -> StagedDataset:
    from tasks.adapters.s3 import S3Client, parse_s3_url

    loc = parse_s3_url(spec.location)
    client = S3Client(endpoint_url=spec.endpoint_url, region=spec.region, profile=spec.profile, max_workers=workers)
    objects = client.list_objects(loc)
    for obj in objects:
        check_relpath(obj.relpath, spec.location)
    _require_dataset_yaml([o.relpath for o in objects], spec)
    source_id = f"s3:{spec.endpoint_url or ''}:{loc.url}"
    fingerprint = _fingerprint([(o.relpath, o.size, o.etag) for o in objects])
    if not verify:
        hit = _index_hit(cache, source_id, fingerprint, spec.display)
        if hit:
            return hit
    with cache.writer_lock(_lock_name(source_id)):
        if not verify:
            hit = _index_hit(cache, source_id, fingerprint, spec.display)
            if hit:
                return hit
        known = all(o.md5 for o in objects)
        key = manifest_md5([(o.relpath, o.size, o.md5 or "") for o in objects]).removesuffix(".dir") if known else None
        if key:
            version = cache.lookup(key, verify=verify)
            if version is not None:
                cache.index_put(source_id, fingerprint, key)
                return StagedDataset(version.path, f"{key}.dir", spec.display, version.files, version.bytes, True)
        total = sum(o.size for o in objects)
        cache.admit(total, spec.display, keep=key)
        work = cache.partial_dir(key or f"fp-{fingerprint[:32]}")
        # Resume: a file is only ever renamed into the work dir after its size and the store's
        # checksum (MD5, additional checksum or multipart ETag) checked out, so a present file
        # of the right size is already verified.
        todo = [o for o in objects if not size_is(work / o.relpath, o.size)]
        md5s = client.download_many(todo, work, on_progress=progress)
        trusted = set(md5s)
        # The MD5s computed while downloading, not the listed ETags: an SSE-KMS object's ETag
        # looks like an MD5 but is not one. Files kept from an interrupted run are re-read.
        manifest = [(o.relpath, o.size, md5s.get(o.relpath) or file_md5(work / o.relpath)) for o in objects]
        key = manifest_md5(manifest).removesuffix(".dir")
        version = cache.lookup(key)
        if version is None:
            version = cache.publish(work, key, manifest, spec.display, trusted=trusted)
            reused = False
        else:
            shutil.rmtree(work, ignore_errors=True)
            reused = True
        cache.index_put(source_id, fingerprint, key)
    return StagedDataset(version.path, f"{key}.dir", spec.display, version.files, version.bytes, reused)


# ---------------------------------------------------------------------- shared


def _require_dataset_yaml(relpaths: list[str], spec: SourceSpec) -> None:
    """Refuse before copying anything when the source holds no dataset yaml at its top."""
    if spec.yaml:
        if spec.yaml not in relpaths:
            raise DataSourceError(
                f"{spec.display}: {spec.yaml} is not in the source (valid form: a dataset yaml "
                f"file, or a folder or prefix holding one); nothing was staged"
            )
        return
    if not any("/" not in rel and rel.lower().endswith(YAML_SUFFIXES) for rel in relpaths):
        raise DataSourceError(
            f"{spec.display} has no dataset yaml (like data.yaml) at its top, so it is not a YOLO dataset (valid "
            "form: a folder or prefix with data.yaml and its images and labels, or the yaml file itself); "
            "nothing was staged"
        )


def _index_hit(cache: StageCache, source_id: str, fingerprint: str, display: str) -> StagedDataset | None:
    key = cache.index_get(source_id, fingerprint)
    if not key:
        return None
    version = cache.lookup(key)
    if version is None:
        return None
    return StagedDataset(version.path, f"{key}.dir", display, version.files, version.bytes, True)


def _fingerprint(listing: list[tuple[str, int, object]]) -> str:
    h = hashlib.sha256()
    for row in listing:
        h.update(("\x00".join(str(v) for v in row) + "\n").encode())
    return h.hexdigest()


def _lock_name(source_id: str) -> str:
    return "src-" + hashlib.sha256(source_id.encode()).hexdigest()[:32]


def _dvc_sync_note(source: Path, md5: str | None) -> tuple[str, ...]:
    """Say so when a DVC-tracked directory differs from the version its .dvc file names."""
    dvc_file = source.with_name(source.name + ".dvc")
    tracked = dvc_file_md5(dvc_file) if dvc_file.exists() else None
    if tracked is None or md5 is None or tracked == md5:
        return ()
    return (
        f"{source} differs from {dvc_file} ({tracked}); staged the working copy {md5}. "
        f"Run `dvc add {source}` to version it, or `dvc checkout {dvc_file}` to go back",
    )


def terminal_progress(label: str) -> Progress | None:
    """A tqdm bar (files, bytes, rate) on an interactive terminal; None in CI and pipes."""
    if not sys.stderr.isatty() or os.environ.get("CI"):
        return None
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, desc=label, leave=False)

    def update(files: int, done_bytes: int) -> None:
        bar.update(done_bytes - bar.n)
        bar.set_postfix(files=files, refresh=False)

    return update


def stage_from_params(params: "Params", *, verify: bool | None = None, progress: bool = True) -> StagedDataset:
    """Stage ``data.source`` as params.yaml describes it (the flow's and the CLI's entry)."""
    spec = spec_from_params(params)
    cache = cache_from_params(params)
    bar = terminal_progress(label=f"staging {spec.display}") if progress else None
    return stage_dataset(
        spec,
        cache,
        verify=params.stage.verify if verify is None else verify,
        workers=params.stage.workers,
        progress=bar,
    )


def spec_from_params(params: "Params") -> SourceSpec:
    return source_spec(
        params.data.source,
        base_dir=params.base_dir,
        rev=params.data.rev,
        endpoint_url=params.data.endpoint_url,
        region=params.data.region,
        profile=params.data.profile,
    )


def cache_from_params(params: "Params") -> StageCache:
    root = params.resolve_path(params.stage.root) if params.stage.root else None
    max_gb = params.stage.max_gb
    return StageCache(root, int(max_gb * 1e9) if max_gb else None)


def stage_exact(params: "Params", md5: str, commit: str | None = None) -> StagedDataset:
    """Exactly data version ``md5``: from the stage cache, else DVC (the ``.dvc`` file at the
    recorded commit, fetched from the cache or remote), else the source if it still holds it.

    Raises DataSourceError naming the hash and every place that was tried.
    """
    cache = cache_from_params(params)
    cache.ensure_root()
    spec = spec_from_params(params)
    version = cache.lookup(md5.removesuffix(".dir"))
    if version is not None:
        return StagedDataset(
            version.path, md5, f"stage cache ({md5})", version.files, version.bytes, True, yaml=spec.yaml
        )
    damaged = tuple(cache.reports)
    looked = [f"the stage cache {cache.root} (absent)"]
    candidates = []
    if spec.kind == "local" and commit and commit != "none":
        if Path(spec.location).with_name(Path(spec.location).name + ".dvc").exists():
            candidates.append(replace(spec, kind="dvc", rev=commit))
    candidates.append(spec)
    for candidate in candidates:
        try:
            staged = stage_dataset(candidate, cache, workers=params.stage.workers)
        except TrainyardError as exc:
            looked.append(f"{candidate.display} ({exc})")
            continue
        if staged.md5 == md5:
            return replace(staged, notes=damaged + staged.notes)
        looked.append(f"{candidate.display} (now holds {staged.md5})")
    raise DataSourceError(f"data version {md5} was not found; looked in: " + "; ".join(looked))
