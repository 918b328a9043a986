"""Local/NAS and DVC staging into the content-addressed cache (S3 has tests of its own)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks import stage as stage_mod
from tasks import stage_cache as cache_mod
from tasks.errors import DataSourceError
from tasks.stage import SourceSpec, source_spec, stage_dataset, stage_local
from tasks.stage_cache import MANIFEST, StageCache, check_relpath
from tasks.adapters.git_dvc import dvc_dir_md5
from tests.conftest import VENV_BIN, copy_dataset


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _published(cache_root: Path) -> list[str]:
    return sorted(p.name for p in cache_root.iterdir() if not p.name.startswith(".")) if cache_root.exists() else []


def test_stages_a_verified_read_only_copy_keyed_by_the_dvc_md5(tmp_path: Path, tiny_dataset: Path) -> None:
    staged = stage_local(tiny_dataset, tmp_path / "cache")
    assert staged.md5 == dvc_dir_md5(tiny_dataset) and not staged.reused
    assert staged.path == tmp_path / "cache" / staged.key
    assert [f for f in _files(staged.path) if not f.startswith(".trainyard")] == _files(tiny_dataset)
    manifest = json.loads((staged.path / MANIFEST).read_text())
    assert len(manifest["files"]) == staged.files == len(_files(tiny_dataset))
    label = next((staged.path / "labels" / "train").glob("*.txt"))
    assert label.stat().st_mode & 0o222 == 0, "published files must be read-only"
    assert os.access(staged.path / "labels", os.W_OK), "folders stay writable for Ultralytics' labels.cache"


def test_warm_path_neither_rehashes_nor_copies(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = stage_local(tiny_dataset, tmp_path / "cache")

    def no_hashing(*a: object, **k: object) -> str:
        raise AssertionError("the warm path must not hash files")

    sampled: list[str] = []
    real_verify = cache_mod.verify_files

    def sample_only(root: Path, manifest: list, **k: object) -> list[str]:
        assert len(manifest) <= cache_mod.REUSE_SAMPLE_FILES, "the warm path re-hashes only a small sample"
        sampled.extend(rel for rel, _s, _m in manifest)
        return real_verify(root, manifest, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(stage_mod, "file_md5", no_hashing)
    monkeypatch.setattr(cache_mod, "verify_files", sample_only)
    again = stage_local(tiny_dataset, tmp_path / "cache")
    assert again.reused and again.path == first.path and again.md5 == first.md5
    assert len(sampled) == cache_mod.REUSE_SAMPLE_FILES


def test_a_changed_file_is_a_new_version_and_the_old_one_stays(tmp_path: Path, tiny_dataset: Path) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    first = stage_local(data, tmp_path / "cache")
    label = next((data / "labels" / "val").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    changed = stage_local(data, tmp_path / "cache")
    assert changed.md5 == dvc_dir_md5(data) != first.md5 and not changed.reused
    assert first.path.exists() and changed.path.exists()


class Crash(BaseException):
    """Stands for SIGKILL/Ctrl-C: not an Exception, so no handler may swallow it."""


def test_a_crash_publishes_nothing_and_the_rerun_copies_only_the_rest(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace
    calls: list[str] = []
    armed = True

    def crash_after_ten(src: str, dst: str) -> None:
        if str(src).endswith(".part"):
            calls.append(str(dst))
            if len(calls) == 10 and armed:
                raise Crash  # a kill in the middle of the copy
        real_replace(src, dst)

    monkeypatch.setattr(stage_mod.os, "replace", crash_after_ten)
    with pytest.raises(Crash):
        stage_local(tiny_dataset, tmp_path / "cache")
    assert _published(tmp_path / "cache") == []  # nothing that looks complete
    armed = False
    calls.clear()
    staged = stage_local(tiny_dataset, tmp_path / "cache")
    assert len(calls) == staged.files - 9, "the rerun must fetch only what the crash left missing"
    assert staged.md5 == dvc_dir_md5(tiny_dataset)


def test_a_source_changing_during_the_copy_is_refused(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    real_copy = stage_mod._copy_local

    def copy_then_edit(work: Path, items: list, progress: object) -> dict:
        out = real_copy(work, items, progress)
        victim = sorted((data / "labels" / "train").glob("*.txt"))[-1]
        victim.write_text("1 0.5 0.5 0.3 0.3\n")
        return out

    monkeypatch.setattr(stage_mod, "_copy_local", copy_then_edit)
    with pytest.raises(DataSourceError, match="changed while it was being staged"):
        stage_local(data, tmp_path / "cache")
    assert _published(tmp_path / "cache") == []


def _stage_in_child(args: tuple[str, str]) -> str:
    return str(stage_local(args[0], args[1]).path)


def test_two_stagers_at_once_make_one_copy(tmp_path: Path, tiny_dataset: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.map(_stage_in_child, [(str(tiny_dataset), str(tmp_path / "cache"))] * 2)
    assert paths[0] == paths[1]
    assert len(_published(tmp_path / "cache")) == 1
    assert list((tmp_path / "cache" / ".partial").iterdir()) == []


def test_lru_eviction_respects_the_budget_and_running_trainings(tmp_path: Path, tiny_dataset: Path) -> None:
    a = copy_dataset(tiny_dataset, tmp_path / "a")
    b = copy_dataset(tiny_dataset, tmp_path / "b")
    (b / "labels" / "train" / "extra.txt").write_text("")
    (b / "images" / "train" / "extra.jpg").write_bytes(next((a / "images" / "train").glob("*.jpg")).read_bytes())
    size = sum(p.stat().st_size for p in a.rglob("*") if p.is_file())
    cache = StageCache(tmp_path / "cache", max_bytes=int(size * 1.5))  # room for one version only
    first = stage_dataset(SourceSpec("local", str(a)), cache)
    with cache.lease(first.key):  # a training is reading version A
        second = stage_dataset(SourceSpec("local", str(b)), cache)
        assert first.path.exists() and second.path.exists()
    third = stage_dataset(SourceSpec("local", str(b)), cache)  # A is no longer in use: LRU goes
    assert third.reused and not first.path.exists() and second.path.exists()


def test_not_enough_space_is_refused_before_copying(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cache_mod.shutil.disk_usage
    size = sum(p.stat().st_size for p in tiny_dataset.rglob("*") if p.is_file())
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=size + (512 << 10)))
    with pytest.raises(DataSourceError, match="not enough space on stage.root"):
        stage_local(tiny_dataset, tmp_path / "cache")
    assert list((tmp_path / "cache" / ".partial").iterdir()) == []
    # The margin scales with the dataset (5 %, at least 1 MiB), not a fixed 256 MiB.
    assert cache_mod.space_margin(size) == 1 << 20 and cache_mod.space_margin(100 << 30) == 5 << 30
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=size + (2 << 20)))
    assert stage_local(tiny_dataset, tmp_path / "cache").md5 == dvc_dir_md5(tiny_dataset)


def test_links_out_of_the_source_and_unsafe_paths_are_refused(tmp_path: Path, tiny_dataset: Path) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (data / "labels" / "train" / "leak.txt").symlink_to(secret)
    with pytest.raises(DataSourceError, match="outside data.source"):
        stage_local(data, tmp_path / "cache")
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b", ""):
        with pytest.raises(DataSourceError, match="unsafe path"):
            check_relpath(bad, "s3://b/p")
    assert check_relpath("images/train/a.jpg", "s3://b/p") == "images/train/a.jpg"


def test_verify_restages_a_damaged_copy(tmp_path: Path, tiny_dataset: Path) -> None:
    first = stage_local(tiny_dataset, tmp_path / "cache")
    victim = next((first.path / "labels" / "train").glob("*.txt"))
    victim.chmod(0o644)
    victim.write_text("garbage\n")
    cache = StageCache(tmp_path / "cache")
    again = stage_dataset(SourceSpec("local", str(tiny_dataset)), cache, verify=True)
    assert again.md5 == first.md5 and not again.reused
    assert (again.path / victim.relative_to(first.path)).read_text() != "garbage\n"


def test_bad_sources_and_roots_are_one_clear_error(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(DataSourceError, match="does not exist"):
        stage_local(tmp_path / "nope", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="is empty"):
        stage_local(tmp_path / "empty", tmp_path / "cache")
    (tmp_path / "notyolo").mkdir()
    (tmp_path / "notyolo" / "notes.txt").write_text("hello")
    with pytest.raises(DataSourceError, match="no dataset yaml at the top of the folder"):
        stage_local(tmp_path / "notyolo", tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataSourceError, match="stage.root"):
        stage_local(tiny_dataset, blocker / "cache")
    with pytest.raises(DataSourceError, match="valid forms"):
        source_spec("gs://bucket/x", base_dir=tmp_path)


def test_training_yaml_points_at_the_copy_not_the_source(tmp_path: Path, tiny_dataset: Path) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    cfg = yaml.safe_load((data / "data.yaml").read_text())
    cfg["path"] = str(data)  # an absolute path back to the source, as many datasets have
    (data / "data.yaml").write_text(yaml.safe_dump(cfg))
    staged = stage_local(data, tmp_path / "cache")
    out = yaml.safe_load(staged.training_yaml(tmp_path / "run" / "data.yaml").read_text())
    assert out["path"] == str(staged.path)
    assert out["train"] == str(staged.path / "_trainyard_train.txt")
    # the staged copy is self-contained: its yaml lost the absolute path, its lists are ./-relative
    assert "path" not in yaml.safe_load((staged.path / "data.yaml").read_text())
    lines = (staged.path / "_trainyard_train.txt").read_text().splitlines()
    assert lines and all(line.startswith("./images/train/") for line in lines)
    assert "absolute paths" in staged.notes[0]


def test_a_self_contained_yaml_trains_from_its_own_folders(tmp_path: Path, tiny_dataset: Path) -> None:
    staged = stage_local(tiny_dataset, tmp_path / "cache")
    out = yaml.safe_load(staged.training_yaml(tmp_path / "run" / "data.yaml").read_text())
    assert out["path"] == str(staged.path) and out["train"] == str(staged.path / "images/train")
    assert out["names"] == yaml.safe_load((tiny_dataset / "data.yaml").read_text())["names"]  # {0: circle, ...}


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def test_dvc_tracked_data_at_an_older_rev_stages_exactly_that_version(tmp_path: Path, tiny_dataset: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    _run(["git", "init", "-q", "-b", "main"], repo)
    _run([str(VENV_BIN / "dvc"), "init", "-q"], repo)
    data = copy_dataset(tiny_dataset, repo / "data" / "shapes")
    _run([str(VENV_BIN / "dvc"), "add", "-q", "data/shapes"], repo)
    _run(["git", "add", "-A"], repo)
    _run([*git, "commit", "-q", "-m", "v1"], repo)
    v1 = _run(["git", "rev-parse", "HEAD"], repo)
    v1_md5 = dvc_dir_md5(data)
    label = next((data / "labels" / "val").glob("*.txt"))
    label.write_text(label.read_text() + "2 0.5 0.5 0.2 0.2\n")
    _run([str(VENV_BIN / "dvc"), "add", "-q", "data/shapes"], repo)
    _run(["git", "add", "-A"], repo)
    _run([*git, "commit", "-q", "-m", "v2"], repo)

    cache = StageCache(tmp_path / "cache")
    old = stage_dataset(source_spec("data/shapes", base_dir=repo, rev=v1), cache)
    assert old.md5 == v1_md5 and old.source == f"data/shapes@{v1}"
    assert "2 0.5 0.5 0.2 0.2" not in (old.path / label.relative_to(data)).read_text()
    current = stage_dataset(source_spec("data/shapes", base_dir=repo), cache)
    assert current.md5 == dvc_dir_md5(data) != v1_md5
    with pytest.raises(Exception, match="does not exist at git revision"):
        stage_dataset(source_spec("data/nothing", base_dir=repo, rev=v1), cache)


def test_a_list_reaching_outside_every_declared_root_is_refused_before_copying(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    secret = tmp_path / "home" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes((next((data / "images" / "train").iterdir())).read_bytes())
    (data / "train.txt").write_text(
        f"./images/train/{next((data / 'images' / 'train').iterdir()).name}\n./../home/secret.jpg\n"
    )
    cfg = yaml.safe_load((data / "data.yaml").read_text())
    (data / "data.yaml").write_text(yaml.safe_dump({**cfg, "train": "train.txt"}))
    with pytest.raises(DataSourceError, match="outside every folder the yaml declares"):
        stage_local(data, tmp_path / "cache")
    assert _published(tmp_path / "cache") == []


def test_outside_data_is_staged_once_and_its_edits_make_a_new_version(tmp_path: Path, tiny_dataset: Path) -> None:
    nas = copy_dataset(tiny_dataset, tmp_path / "nas" / "shapes")
    config = tmp_path / "project" / "data"
    config.mkdir(parents=True)
    cfg = yaml.safe_load((nas / "data.yaml").read_text())
    (config / "shapes.yaml").write_text(yaml.safe_dump({**cfg, "path": str(nas)}))
    first = stage_local(config, tmp_path / "cache")
    assert (first.path / "_external" / "shapes" / "images" / "train").is_dir()
    assert (first.path / "_external" / "shapes" / "labels" / "train").is_dir()
    assert stage_local(config, tmp_path / "cache").md5 == first.md5  # warm: nothing changed
    label = sorted((nas / "labels" / "train").glob("*.txt"))[0]
    label.write_text("0 0.5 0.5 0.25 0.25\n")
    second = stage_local(config, tmp_path / "cache")
    assert second.md5 != first.md5 and not second.reused
    staged_label = second.path / "_external" / "shapes" / "labels" / "train" / label.name
    assert staged_label.read_text() == "0 0.5 0.5 0.25 0.25\n"
