"""tasks.adapters.git_dvc against the real git and dvc command lines, in temporary repositories."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.errors import VersioningError
from tasks.adapters.git_dvc import (
    CodeVersion,
    code_version,
    data_version,
    dir_manifest,
    dvc_add,
    dvc_dir_md5,
    dvc_file_md5,
    dvc_push,
    dvc_run,
)


def _dvc() -> str | None:
    beside = Path(sys.executable).parent / "dvc"
    return os.fspath(beside) if beside.is_file() else shutil.which("dvc")


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
needs_dvc = pytest.mark.skipif(_dvc() is None, reason="the dvc CLI is not installed")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q")
    _git(path, "config", "user.email", "test@example.com")
    _git(path, "config", "user.name", "Test")
    _git(path, "config", "commit.gpgsign", "false")
    return path


def _dvc_repo(path: Path) -> Path:
    repo = _git_repo(path)
    subprocess.run(
        [_dvc(), "init", "-q"],
        cwd=repo,
        check=True,
        capture_output=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    return repo


def _make_dataset(root: Path) -> Path:
    """Nested dir: binary + text, CRLF text, sub-sub-dir, empty, non-ASCII and hidden files."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "deep").mkdir(parents=True)
    (root / "images" / "train" / "a.jpg").write_bytes(bytes(range(256)) * 40 + b"\x00\xff")
    (root / "images" / "train" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3000))
    (root / "labels" / "train" / "a.txt").write_bytes(b"0 0.5 0.5 0.1 0.1\r\n1 0.2 0.3 0.1 0.1\r\n")
    (root / "labels" / "train" / "deep" / "c.txt").write_bytes(b"2 0.1 0.1 0.1 0.1\n")
    (root / "labels" / "train" / "empty.txt").write_bytes(b"")
    (root / "labels" / "train" / "çafé_ñ.txt").write_text("0 0.1 0.2 0.3 0.4\n", encoding="utf-8")
    (root / "data.yaml").write_text("names: {0: cat, 1: dog, 2: bird}\n", encoding="utf-8")
    (root / "images" / ".hidden").write_bytes(b"dot files are hashed too\n")
    return root


def _dvc_recorded_md5(repo: Path, name: str) -> str:
    subprocess.run(
        [_dvc(), "add", "-q", name],
        cwd=repo,
        check=True,
        capture_output=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    md5 = dvc_file_md5(repo / f"{name}.dvc")
    assert md5 is not None
    return md5


# ----------------------------------------------------------------------------- data hashes


@needs_dvc
def test_dir_md5_matches_what_dvc_add_records(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path / "repo")
    data = _make_dataset(repo / "dataset")
    ours = dvc_dir_md5(data)  # before dvc touches anything
    recorded = _dvc_recorded_md5(repo, "dataset")
    assert recorded.endswith(".dir")
    assert ours == recorded
    # CRLF is hashed as-is (DVC 3 plain md5, no dos2unix)
    manifest = {rel: md5 for rel, _size, md5 in dir_manifest(data)}
    crlf = b"0 0.5 0.5 0.1 0.1\r\n1 0.2 0.3 0.1 0.1\r\n"
    assert manifest["labels/train/a.txt"] == hashlib.md5(crlf).hexdigest()
    assert "labels/train/deep/c.txt" in manifest
    assert "labels/train/çafé_ñ.txt" in manifest
    assert manifest["labels/train/empty.txt"] == hashlib.md5(b"").hexdigest()


def test_dir_manifest_is_sorted_with_sizes(tmp_path: Path) -> None:
    data = _make_dataset(tmp_path / "ds")
    manifest = dir_manifest(data)
    rels = [rel for rel, _size, _md5 in manifest]
    assert rels == sorted(rels)
    assert len(rels) == 8
    sizes = {rel: size for rel, size, _md5 in manifest}
    assert sizes["labels/train/empty.txt"] == 0
    assert sizes["images/train/a.jpg"] == 256 * 40 + 2


def test_dir_md5_changes_with_content_and_names_not_location(tmp_path: Path) -> None:
    data = _make_dataset(tmp_path / "ds")
    before = dvc_dir_md5(data)

    copy = tmp_path / "elsewhere" / "other_name"
    shutil.copytree(data, copy)
    assert dvc_dir_md5(copy) == before

    target = data / "images" / "train" / "a.jpg"
    raw = bytearray(target.read_bytes())
    raw[100] ^= 0x01
    target.write_bytes(bytes(raw))
    one_byte = dvc_dir_md5(data)
    assert one_byte != before

    renamed = copy / "labels" / "train" / "deep" / "c.txt"
    renamed.rename(renamed.with_name("d.txt"))
    assert dvc_dir_md5(copy) not in (before, one_byte)


def test_dir_md5_rejects_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(VersioningError, match="does not exist"):
        dvc_dir_md5(tmp_path / "nope")


@needs_dvc
def test_data_version_detects_out_of_sync_dvc_file(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path / "repo")
    data = _make_dataset(repo / "dataset")
    recorded = _dvc_recorded_md5(repo, "dataset")

    synced = data_version(data)
    assert synced.dvc_file == repo / "dataset.dvc"
    assert synced.tracked_md5 == recorded == synced.md5
    assert synced.in_sync

    # dvc add may leave the files as read-only links into the cache: replace, don't edit
    label = data / "labels" / "train" / "a.txt"
    content = label.read_bytes()
    label.unlink()
    label.write_bytes(content + b"2 0.9 0.9 0.05 0.05\r\n")

    drifted = data_version(data)
    assert drifted.tracked_md5 == recorded
    assert drifted.md5 != recorded
    assert not drifted.in_sync


def test_data_version_without_dvc_file(tmp_path: Path) -> None:
    data = _make_dataset(tmp_path / "ds")
    version = data_version(data)
    assert version.dvc_file is None and version.tracked_md5 is None
    assert version.in_sync
    assert version.md5 == dvc_dir_md5(data)
    assert dvc_file_md5(tmp_path / "ds.dvc") is None


def test_dvc_file_md5_rejects_a_file_without_outs(tmp_path: Path) -> None:
    bad = tmp_path / "x.dvc"
    bad.write_text("stages: {}\n", encoding="utf-8")
    with pytest.raises(VersioningError, match=r"x\.dvc has no outs\[0\]\.md5"):
        dvc_file_md5(bad)


# ----------------------------------------------------------------------------- code version


@pytest.fixture
def code_repo(tmp_path: Path) -> Path:
    repo = _git_repo(tmp_path / "code")
    (repo / "train.py").write_text("print('train')\n", encoding="utf-8")
    (repo / "params.yaml").write_text("epochs: 1\n", encoding="utf-8")
    (repo / "sub").mkdir()
    (repo / "sub" / "data.dvc").write_text("outs:\n- md5: abc\n  path: data\n", encoding="utf-8")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    return repo


@needs_git
def test_code_version_clean_repo(code_repo: Path) -> None:
    version = code_version(code_repo)
    assert version.commit == _git(code_repo, "rev-parse", "HEAD")
    assert version.dirty is False
    assert version.diff_sha256 is None
    assert version.repo is not None and version.repo.resolve() == code_repo.resolve()


@needs_git
def test_code_version_modified_tracked_file_is_dirty(code_repo: Path) -> None:
    (code_repo / "train.py").write_text("print('changed')\n", encoding="utf-8")
    version = code_version(code_repo / "sub")  # any directory inside the repo works
    assert version.dirty is True
    expected = subprocess.run(
        ["git", "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", "--no-textconv"],
        cwd=code_repo,
        check=True,
        capture_output=True,
    ).stdout
    assert version.diff_sha256 == hashlib.sha256(expected).hexdigest()

    (code_repo / "train.py").write_text("print('changed again')\n", encoding="utf-8")
    assert code_version(code_repo).diff_sha256 not in (None, version.diff_sha256)


@needs_git
def test_code_version_ignores_params_dvc_files_and_untracked(code_repo: Path) -> None:
    (code_repo / "params.yaml").write_text("epochs: 99\n", encoding="utf-8")
    (code_repo / "sub" / "data.dvc").write_text("outs:\n- md5: def\n", encoding="utf-8")
    (code_repo / "new_module.py").write_text("x = 1\n", encoding="utf-8")
    version = code_version(code_repo)
    assert version.commit == _git(code_repo, "rev-parse", "HEAD")
    assert version.dirty is False
    assert version.diff_sha256 is None
    # the same edits count once nothing is ignored
    assert code_version(code_repo, ignore=()).dirty is True


@needs_git
def test_code_version_outside_git(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    version = code_version(plain)
    assert version == CodeVersion(commit=None, dirty=False, diff_sha256=None, repo=None)
    empty = _git_repo(tmp_path / "no_commits")
    assert code_version(empty).commit is None
    assert code_version(empty).dirty is False


# ----------------------------------------------------------------------------- DVC CLI


@needs_dvc
def test_dvc_add_and_push_to_local_remote(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path / "repo")
    data = _make_dataset(repo / "dataset")
    expected = dvc_dir_md5(data)
    remote = tmp_path / "remote"
    remote.mkdir()
    dvc_run(["remote", "add", "-d", "local", os.fspath(remote)], repo)

    assert dvc_add("dataset", repo) == expected
    assert dvc_file_md5(repo / "dataset.dvc") == expected

    dvc_push([repo / "dataset.dvc"], repo, remote="local")
    pushed = [p for p in remote.rglob("*") if p.is_file()]
    # 8 distinct files + the .dir manifest object
    assert len(pushed) == 9
    dir_hash = expected.removesuffix(".dir")
    assert (remote / "files" / "md5" / dir_hash[:2] / (dir_hash[2:] + ".dir")).is_file()


@needs_dvc
def test_dvc_add_outside_repo_is_refused(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path / "repo")
    outside = _make_dataset(tmp_path / "outside")
    with pytest.raises(VersioningError, match="outside the DVC repository"):
        dvc_add(outside, repo)


@needs_dvc
def test_dvc_run_failure_carries_dvc_error(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path / "repo")
    with pytest.raises(VersioningError) as info:
        dvc_run(["add", "does_not_exist"], repo)
    message = str(info.value)
    assert "dvc add does_not_exist" in message
    assert "does_not_exist" in message.split("\n", 1)[1]  # dvc's own error text
    assert "ERROR" in message


@needs_dvc
def test_dvc_run_success_returns_output(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path / "repo")
    proc = dvc_run(["version"], repo)
    assert proc.returncode == 0
    assert "DVC version" in proc.stdout


@needs_git
def test_worktree_checks_out_the_recorded_commit_and_leaves_nothing(code_repo: Path) -> None:
    from tasks.adapters.git_dvc import worktree

    first = _git(code_repo, "rev-parse", "HEAD")
    (code_repo / "train.py").write_text("print('changed')\n", encoding="utf-8")
    _git(code_repo, "commit", "-q", "-am", "change")
    with worktree(code_repo, first) as code:
        assert (code / "train.py").read_text(encoding="utf-8") == "print('train')\n"
        held = code
    assert not held.exists()
    assert "trainyard-worktree" not in _git(code_repo, "worktree", "list")
    with pytest.raises(VersioningError, match="cannot check out commit deadbeef"):
        with worktree(code_repo, "deadbeef"):
            pass
