"""Local staging: a verified, content-addressed, read-only copy; never a half-published one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tasks import stage as stage_mod
from tasks.errors import DataSourceError
from tasks.stage import MANIFEST, stage_local
from tasks.version import dvc_dir_md5
from tests.conftest import copy_dataset


def test_stages_a_verified_copy_keyed_by_the_dvc_md5(tmp_path: Path, tiny_dataset: Path) -> None:
    staged = stage_local(tiny_dataset, tmp_path / "cache")
    assert staged.md5 == dvc_dir_md5(tiny_dataset)
    assert staged.path == tmp_path / "cache" / staged.md5.removesuffix(".dir")
    assert (staged.path / MANIFEST).exists() and not staged.reused
    copy = sorted(p.relative_to(staged.path) for p in staged.path.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert copy == sorted(p.relative_to(tiny_dataset) for p in tiny_dataset.rglob("*") if p.is_file())
    label = next((staged.path / "labels" / "train").glob("*.txt"))
    with pytest.raises(PermissionError):
        label.open("a") if os.geteuid() != 0 else _raise_if_writable(label)


def _raise_if_writable(path: Path) -> None:
    # root ignores file modes; check the mode bits instead
    if path.stat().st_mode & 0o222 == 0:
        raise PermissionError(str(path))


def test_second_stage_reuses_the_copy_and_a_change_makes_a_new_version(tmp_path: Path, tiny_dataset: Path) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    first = stage_local(data, tmp_path / "cache")
    again = stage_local(data, tmp_path / "cache")
    assert again.reused and again.path == first.path
    label = next((data / "labels" / "val").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    changed = stage_local(data, tmp_path / "cache")
    assert changed.md5 != first.md5 and not changed.reused and first.path.exists()


def test_a_failed_copy_publishes_nothing(tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = shutil.copyfile

    def flaky(src: str, dst: str, *a: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(stage_mod.shutil, "copyfile", flaky)
    with pytest.raises(OSError):
        stage_local(tiny_dataset, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no temp dir, no partial version
    monkeypatch.setattr(stage_mod.shutil, "copyfile", real)
    assert not stage_local(tiny_dataset, tmp_path / "cache").reused


def test_source_changing_during_the_copy_is_refused(tmp_path: Path, tiny_dataset: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    real = shutil.copyfile
    victim = sorted((data / "labels" / "train").glob("*.txt"))[-1]

    def tamper(src: str, dst: str, *a: object, **kw: object) -> object:
        if Path(src) == victim:
            victim.write_text("1 0.5 0.5 0.3 0.3\n")
        return real(src, dst)

    monkeypatch.setattr(stage_mod.shutil, "copyfile", tamper)
    with pytest.raises(DataSourceError, match="changed while it was being staged"):
        stage_local(data, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_bad_sources_and_roots_are_one_clear_error(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(DataSourceError, match="is not a directory"):
        stage_local(tmp_path / "nope", tmp_path / "cache")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataSourceError, match="stage.root"):
        stage_local(tiny_dataset, blocker / "cache")


def test_training_yaml_points_at_the_copy_not_the_source(tmp_path: Path, tiny_dataset: Path) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    cfg = yaml.safe_load((data / "data.yaml").read_text())
    cfg["path"] = str(data)  # an absolute path back to the source, as many datasets have
    (data / "data.yaml").write_text(yaml.safe_dump(cfg))
    staged = stage_local(data, tmp_path / "cache")
    out = yaml.safe_load(staged.training_yaml(tmp_path / "run" / "data.yaml").read_text())
    assert out["path"] == str(staged.path) and out["train"] == "images/train"
