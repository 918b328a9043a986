"""Code and data versions: the one module that touches git and DVC.

Everything here drives ``git`` and ``dvc`` through their command lines (``subprocess``);
``dvc`` is never imported (its import is slow and its Python API is not stable). Nothing
runs at import time.

Data hashes
-----------
:func:`dvc_dir_md5` computes, without calling DVC, exactly the md5 that DVC 3.x records
in ``<dir>.dvc`` (``outs[0].md5``, ending in ``.dir``), so a run can log its dataset
version with no DVC repository and no ``dvc`` subprocess. The rules, taken from ``dvc_data.hashfile`` (``build._build_tree`` and
``tree.Tree.as_bytes``), DVC 3.x:

* every file's md5 is the plain md5 of its bytes. DVC 3 hashes with ``md5``; the old
  ``md5-dos2unix`` (CRLF -> LF for text files) is used only for DVC 2.x ``.dvc`` files,
  so a CRLF text file hashes as-is;
* the directory is walked with ``os.walk`` (symlinked sub-directories are not entered,
  a symlink to a file is hashed by its target's content); empty directories contribute
  nothing; hidden files *are* included; only ``.git``/``.hg``/``.dvc`` are skipped
  (DVC's default ignore list), and a ``.dvcignore`` inside the directory is an error;
* the manifest is the list ``[{"md5": <file md5>, "relpath": <"/"-joined path>}, ...]``
  sorted by ``relpath`` (plain Python ``str`` order), serialised with
  ``json.dumps(entries, sort_keys=True)`` -- default separators ``", "`` and ``": "``,
  ``ensure_ascii=True`` so non-ASCII names appear as ``\\uXXXX`` escapes -- encoded as
  UTF-8; the directory md5 is the md5 of those bytes plus the suffix ``".dir"``.

Patterns in ``.dvcignore`` files of the enclosing DVC repo are *not* applied: keep
ignorable files out of dataset directories instead. In particular Ultralytics writes
``labels.cache`` next to the label folders on its first scan; it must never be written
into the versioned dataset source (train from a staged copy), or the dataset hash changes
after the first training run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from tasks.errors import VersioningError

__all__ = [
    "CodeVersion",
    "code_root",
    "DataVersion",
    "code_version",
    "data_version",
    "dir_manifest",
    "dvc_add",
    "dvc_dir_md5",
    "dvc_get",
    "dvc_md5_at_rev",
    "dvc_file_md5",
    "dvc_push",
    "dvc_run",
    "file_md5",
    "manifest_md5",
]

_CHUNK = 1024 * 1024
# DVC's default ignore list (dvc/ignore.py: DvcIgnoreFilter): these names are never hashed.
DVC_SKIPPED_DIRS = frozenset({".git", ".hg", ".dvc"})
_DVC_SKIPPED_FILES = frozenset({".git"})
_DVCIGNORE = ".dvcignore"
_DIR_SUFFIX = ".dir"
_TAIL_LINES = 25


# --------------------------------------------------------------------------- data hashes


def file_md5(path: Path | str) -> str:
    """Plain md5 of a file's bytes, read in 1 MiB chunks (DVC 3's per-file hash)."""
    digest = hashlib.md5()  # noqa: S324 - content address, not security
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise VersioningError(
            f"cannot read {path} to hash it: {exc.strerror or exc}; check that the file exists and is readable"
        ) from exc
    return digest.hexdigest()


def dir_manifest(path: Path | str) -> list[tuple[str, int, str]]:
    """``(relpath, size, md5)`` for every file DVC would hash under ``path``.

    Sorted by ``relpath`` exactly as DVC sorts its directory manifest; relpaths use
    ``"/"`` separators on every platform. See the module docstring for which files count.
    """
    root = Path(path)
    if not root.is_dir():
        raise VersioningError(f"cannot hash dataset directory {root}: it does not exist or is not a directory")
    root_str = os.fspath(root).rstrip(os.sep) or os.sep
    entries: list[tuple[str, int, str]] = []
    walk_errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root_str, onerror=walk_errors.append):
        dirnames[:] = [d for d in dirnames if d not in DVC_SKIPPED_DIRS]
        if _DVCIGNORE in filenames:
            raise VersioningError(
                f"{Path(dirpath) / _DVCIGNORE} is inside the dataset directory {root}; DVC "
                "refuses to add a directory containing a .dvcignore file -- move it to the "
                "repository root or delete it"
            )
        rel_dir = os.path.relpath(dirpath, root_str)
        rel_parts: list[str] = [] if rel_dir == os.curdir else rel_dir.split(os.sep)
        for name in filenames:
            if name in _DVC_SKIPPED_FILES:
                continue
            full = os.path.join(dirpath, name)
            try:
                size = os.stat(full).st_size
            except OSError as exc:
                raise VersioningError(
                    f"cannot hash {full}: {exc.strerror or exc} (a broken symlink?); remove it or fix its target"
                ) from exc
            entries.append(("/".join([*rel_parts, name]), size, file_md5(full)))
    if walk_errors:
        first = walk_errors[0]
        raise VersioningError(
            f"cannot list {first.filename} while hashing {root}: {first.strerror or first}; check its permissions"
        )
    entries.sort(key=lambda entry: entry[0])
    return entries


def dvc_dir_md5(path: Path | str) -> str:
    """The md5 ``dvc add <path>`` records for directory ``path`` (DVC 3.x, ends in ``.dir``).

    Computed from the file contents without calling DVC; see the module docstring.
    """
    return manifest_md5(dir_manifest(path))


def manifest_md5(manifest: list[tuple[str, int, str]]) -> str:
    """The DVC directory md5 of a manifest from :func:`dir_manifest` (no file is read)."""
    entries = [{"md5": md5, "relpath": relpath} for relpath, _size, md5 in manifest]
    payload = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(payload).hexdigest() + _DIR_SUFFIX  # noqa: S324


def dvc_file_md5(dvc_file: Path | str) -> str | None:
    """``outs[0].md5`` of a ``.dvc`` file, or ``None`` if there is no such file.

    A DVC 2.x ``.dvc`` file (no ``hash: md5`` key) holds a legacy ``md5-dos2unix`` hash,
    which will not equal :func:`dvc_dir_md5`; ``dvc add`` the data again to upgrade it.
    """
    dvc_path = Path(dvc_file)
    if not dvc_path.is_file():
        return None
    try:
        doc: Any = yaml.safe_load(dvc_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise VersioningError(
            f"cannot read DVC file {dvc_path}: {exc}; restore it from git or run `dvc add` on its data again"
        ) from exc
    outs = doc.get("outs") if isinstance(doc, dict) else None
    first = outs[0] if isinstance(outs, list) and outs else None
    md5 = first.get("md5") if isinstance(first, dict) else None
    if not isinstance(md5, str) or not md5:
        raise VersioningError(
            f"DVC file {dvc_path} has no outs[0].md5; it is not a `dvc add` file or it was "
            "edited by hand -- restore it from git or run `dvc add` on its data again"
        )
    return md5


@dataclass(frozen=True)
class DataVersion:
    """A dataset's content hash and what its ``.dvc`` file (if any) says it should be."""

    md5: str
    dvc_file: Path | None
    tracked_md5: str | None

    @property
    def in_sync(self) -> bool:
        """True when there is no ``.dvc`` file or it records exactly this content."""
        return self.tracked_md5 is None or self.tracked_md5 == self.md5


def data_version(path: Path | str) -> DataVersion:
    """Hash ``path`` (directory or single file) and compare with ``<path>.dvc`` beside it."""
    target = Path(path)
    if target.is_dir():
        md5 = dvc_dir_md5(target)
    elif target.is_file():
        md5 = file_md5(target)
    else:
        raise VersioningError(
            f"cannot version data at {target}: no such file or directory; check data.source in params.yaml"
        )
    candidate = target.with_name(target.name + ".dvc")
    tracked = dvc_file_md5(candidate)
    return DataVersion(md5=md5, dvc_file=candidate if tracked is not None else None, tracked_md5=tracked)


# --------------------------------------------------------------------------- code version


@dataclass(frozen=True)
class CodeVersion:
    """The git commit of the code, and whether (and how) the work tree differs from it."""

    commit: str | None
    dirty: bool
    diff_sha256: str | None
    repo: Path | None


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes] | None:
    """Run git; None when git is missing or cannot run here at all."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            check=False,
            timeout=120,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _exclude_pathspecs(ignore: tuple[str, ...]) -> list[str]:
    """gitignore-like: a pattern without "/" matches at any depth, one with "/" is rooted."""
    specs: list[str] = []
    for pattern in ignore:
        pattern = pattern.strip()
        if not pattern:
            continue
        if "/" in pattern.rstrip("/"):
            specs.append(f":(exclude,glob){pattern.lstrip('/')}")
        else:
            specs.append(f":(exclude,glob)**/{pattern}")
    return specs


def code_root() -> Path:
    """The checkout holding the code that runs (the ``tasks`` package), i.e. what trains.

    Not the folder of params.yaml: params and data have hashes of their own, and a
    params file kept elsewhere must not make the code look unversioned.
    """
    return Path(__file__).resolve().parent.parent


def code_version(repo: Path | str, ignore: tuple[str, ...] = ("params.yaml", "dvc.lock", "*.dvc")) -> CodeVersion:
    """HEAD commit of the git repo containing ``repo`` and whether tracked code changed.

    ``dirty`` counts tracked files that differ from HEAD (staged or not), except paths
    matching ``ignore`` (params, dvc.lock and .dvc files have hashes of their own);
    untracked files are not counted. ``diff_sha256`` is the sha256 of that
    ``git diff HEAD`` output when dirty. Not a git repo, no commits yet, or no git at
    all gives ``CodeVersion(None, False, None, ...)`` rather than an error.
    """
    start = Path(repo)
    if not start.is_dir():
        return CodeVersion(commit=None, dirty=False, diff_sha256=None, repo=None)
    top = _git(["rev-parse", "--show-toplevel"], start)
    if top is None or top.returncode != 0:
        return CodeVersion(commit=None, dirty=False, diff_sha256=None, repo=None)
    toplevel = Path(os.fsdecode(top.stdout.strip()))
    head = _git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], toplevel)
    if head is None or head.returncode != 0:
        return CodeVersion(commit=None, dirty=False, diff_sha256=None, repo=toplevel)
    commit = head.stdout.decode("ascii").strip()
    diff = _git(
        [
            "-c",
            "core.quotepath=false",
            "diff",
            "HEAD",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--",
            ":(top)",
            *_exclude_pathspecs(ignore),
        ],
        toplevel,
    )
    if diff is None or diff.returncode != 0:
        stderr = diff.stderr.decode(errors="replace").strip() if diff is not None else ""
        raise VersioningError(
            f"`git diff HEAD` failed in {toplevel}: {stderr or 'git could not run'}; run it there by hand to see why"
        )
    dirty = bool(diff.stdout)
    digest = hashlib.sha256(diff.stdout).hexdigest() if dirty else None
    return CodeVersion(commit=commit, dirty=dirty, diff_sha256=digest, repo=toplevel)


# --------------------------------------------------------------------------- DVC CLI


def _dvc_executable() -> str:
    """``dvc`` next to the running interpreter first (same venv), else on PATH."""
    bindir = Path(sys.executable).parent
    for name in ("dvc", "dvc.exe"):
        candidate = bindir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return os.fspath(candidate)
    found = shutil.which("dvc")
    if found:
        return found
    raise VersioningError(
        f"the dvc command was found neither next to {sys.executable} nor on PATH; "
        "install it with `pip install 'dvc[s3]>=3'` in this environment"
    )


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def dvc_run(args: list[str], repo: Path | str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``dvc <args>`` in ``repo``; raise :class:`VersioningError` with dvc's stderr tail."""
    cwd = Path(repo)
    if not cwd.is_dir():
        raise VersioningError(f"cannot run dvc in {cwd}: no such directory")
    cmd = [_dvc_executable(), *[os.fspath(a) for a in args]]
    shown = "dvc " + " ".join(cmd[1:])
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise VersioningError(
            f"`{shown}` in {cwd} did not finish within {timeout:g} s; check the remote's "
            "reachability or raise the timeout"
        ) from exc
    except OSError as exc:
        raise VersioningError(f"cannot start `{shown}` in {cwd}: {exc}") from exc
    if proc.returncode != 0:
        detail = _tail(proc.stderr) or _tail(proc.stdout) or "(no output)"
        raise VersioningError(
            f"`{shown}` failed in {cwd} (exit {proc.returncode}):\n{detail}\n"
            f"run the same command in {cwd} to see the full output"
        )
    return proc


def dvc_add(path: Path | str, repo: Path | str) -> str:
    """``dvc add <path>`` inside DVC repo ``repo``; return the md5 it records."""
    repo_path = Path(repo)
    target = Path(path)
    full = target if target.is_absolute() else repo_path / target
    try:
        arg = os.fspath(full.resolve().relative_to(repo_path.resolve()))
    except ValueError:
        raise VersioningError(
            f"cannot `dvc add` {full}: it is outside the DVC repository {repo_path}; "
            "stage the data inside the repository first"
        ) from None
    dvc_run(["add", arg], repo_path)
    dvc_file = full.with_name(full.name + ".dvc")
    md5 = dvc_file_md5(dvc_file)
    if md5 is None:
        raise VersioningError(
            f"`dvc add {arg}` succeeded in {repo_path} but wrote no {dvc_file}; is the path "
            "an output of a dvc.yaml stage? (then use `dvc repro`/`dvc commit`)"
        )
    return md5


def dvc_push(targets: list[Path | str], repo: Path | str, remote: str | None = None) -> None:
    """``dvc push [-r remote] <targets...>`` in ``repo`` (all targets if the list is empty)."""
    args = ["push"]
    if remote:
        args += ["-r", remote]
    args += [os.fspath(t) for t in targets]
    dvc_run(args, repo)


def dvc_md5_at_rev(path: Path | str, rev: str) -> str:
    """The md5 that ``<path>.dvc`` named at git revision ``rev`` (the data version then)."""
    path = Path(path).resolve()
    dvc_file = path.with_name(path.name + ".dvc")
    repo_top = _git(["rev-parse", "--show-toplevel"], path.parent)
    if repo_top is None or repo_top.returncode != 0:
        raise VersioningError(f"{path.parent} is not in a git repository; data.rev needs a DVC-tracked path in git")
    top = Path(repo_top.stdout.decode().strip())
    rel = dvc_file.relative_to(top).as_posix()
    shown = _git(["show", f"{rev}:{rel}"], top)
    if shown is None or shown.returncode != 0:
        raise VersioningError(
            f"{rel} does not exist at git revision {rev!r} in {top}; check data.rev and that the data was `dvc add`-ed"
        )
    data = yaml.safe_load(shown.stdout.decode()) or {}
    try:
        return str(data["outs"][0]["md5"])
    except (KeyError, IndexError, TypeError):
        raise VersioningError(f"{rel} at {rev!r} holds no outs[0].md5; is it a .dvc file?") from None


def dvc_get(path: Path | str, rev: str, dest: Path | str) -> None:
    """Materialise DVC-tracked ``path`` as it was at ``rev`` into ``dest`` (cache first, then the remote)."""
    path = Path(path).resolve()
    repo_top = _git(["rev-parse", "--show-toplevel"], path.parent)
    if repo_top is None or repo_top.returncode != 0:
        raise VersioningError(f"{path.parent} is not in a git repository")
    top = Path(repo_top.stdout.decode().strip())
    rel = path.relative_to(top).as_posix()
    dvc_run(["get", str(top), rel, "--rev", rev, "-o", str(dest), "--force"], repo=top)


@contextlib.contextmanager
def worktree(repo: Path, commit: str) -> Iterator[Path]:
    """A temporary git worktree of ``repo`` at ``commit``, removed afterwards (VersioningError if it cannot be made)."""
    tmp = Path(tempfile.mkdtemp(prefix="trainyard-worktree-"))
    path = tmp / "code"
    add = subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), commit], cwd=repo, capture_output=True, text=True
    )
    if add.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise VersioningError(f"cannot check out commit {commit} in {repo}: {add.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
