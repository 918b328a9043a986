"""The reproduction key: stable for the same inputs, different when any input changes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import json

import pytest

from tasks.adapters.torch_environment import describe_interpreter, digest_of
from tasks.errors import TrackingError
from tasks.repro_key import REQUIRED_TAGS, ReproKey

KEY = ReproKey(
    data_hash="6db155e7e2f52157656752f66ca38d5f.dir",
    params_hash="a" * 64,
    code_commit="c" * 40,
    code_dirty=False,
    code_diff="",
    env_kind="local",
    env_digest="sha256:" + "e" * 64,
    seed=0,
    version="0.1.0",
)


def test_same_inputs_same_digest_and_tags() -> None:
    again = ReproKey(**{k: getattr(KEY, k) for k in KEY.__dataclass_fields__})
    assert again.digest == KEY.digest and again.tags() == KEY.tags()


@pytest.mark.parametrize(
    "field,value",
    [
        ("data_hash", "0" * 32 + ".dir"),
        ("params_hash", "b" * 64),
        ("code_commit", "d" * 40),
        ("code_dirty", True),
        ("code_diff", "f" * 64),
        ("env_digest", "sha256:" + "0" * 64),
        ("env_kind", "docker"),
        ("seed", 1),
    ],
)
def test_any_input_change_changes_the_digest_and_is_named(field: str, value: object) -> None:
    changed = replace(KEY, **{field: value})
    assert changed.digest != KEY.digest
    assert KEY.differences(changed) == ([field] if field != "env_kind" else [])


def test_trainyard_version_alone_does_not_change_the_key() -> None:
    assert replace(KEY, version="9.9.9").digest == KEY.digest


def test_tags_round_trip_and_show_the_commit_in_the_mlflow_ui() -> None:
    tags = KEY.tags()
    assert ReproKey.from_tags(tags) == KEY
    assert tags["mlflow.source.git.commit"] == KEY.code_commit
    assert tags["trainyard.code_dirty"] == "false" and tags["trainyard.key"] == KEY.digest


def test_a_run_without_a_key_is_a_clear_error() -> None:
    tags = KEY.tags()
    del tags["trainyard.data_hash"]
    with pytest.raises(TrackingError) as info:
        ReproKey.from_tags(tags, run_id="abc123")
    assert "abc123" in str(info.value) and "trainyard.data_hash" in str(info.value)
    assert set(REQUIRED_TAGS) >= {"data_hash", "params_hash", "env_digest"}


def test_environment_digest_is_stable_and_sees_package_changes() -> None:
    info = describe_interpreter()
    assert digest_of(info) == digest_of(describe_interpreter())
    assert info["packages"]["ultralytics"] and info["torch"]
    bumped = {**info, "packages": {**info["packages"], "ultralytics": "0.0.1"}}
    assert digest_of(bumped) != digest_of(info)
    assert "trainyard" not in info["packages"]  # the code is versioned by its commit instead


def test_the_torch_build_is_read_without_importing_torch_and_matches_torch_itself() -> None:
    import subprocess
    import sys

    code = (
        "import json, sys; from tasks.adapters.torch_environment import describe_interpreter; "
        "info = describe_interpreter(); print(json.dumps([info, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    info, imported = json.loads(out)
    assert imported is False  # seconds and ~700 MiB saved on every run
    # contract: what version.py says is what torch reports once imported
    import torch

    assert (info["torch"], info["cuda"], info["hip"]) == (torch.__version__, torch.version.cuda, torch.version.hip)
    assert info["torch_commit"] == torch.version.git_version
    if torch.version.cuda:  # PyTorch's CUDA wheels bring cuDNN as a wheel: its version names the library
        assert info["cudnn"] and str(torch.backends.cudnn.version())[:1] == info["cudnn"][:1]


def test_environment_describes_the_training_interpreter(tmp_path: Path) -> None:
    from tasks.adapters.torch_environment import local_environment

    env = local_environment()
    assert env.kind == "local" and env.digest == digest_of(env.details)


def test_run_tags_hold_the_key_and_the_image_only_for_a_container(tmp_path: Path) -> None:
    from dataclasses import replace

    from tasks.params import load_params
    from tasks.repro_key import run_tags
    from tasks.validate import SplitStats, ValidationReport

    (tmp_path / "params.yaml").write_text("train:\n  model: yolo11n.yaml\ncontainer:\n  image: trainyard-train:ci\n")
    params = load_params(tmp_path / "params.yaml", ["train.epochs=3"])
    report = ValidationReport(tmp_path, 1, ["a"], {"train": SplitStats(7, 7, 9, 0)}, [], ["one warning"])
    key = ReproKey("abc.dir", "p" * 64, "c" * 40, False, "", "local", "sha256:env", 0, "0.1.0")
    tags = run_tags(params, key, "s3://b/x", report)
    assert tags["trainyard.data_hash"] == "abc.dir" and tags["trainyard.overrides"] == "train.epochs=3"
    assert tags["trainyard.images_train"] == "7" and tags["trainyard.data_warnings"] == "1"
    assert "trainyard.image" not in tags
    docker = run_tags(params, replace(key, env_kind="docker", env_digest="sha256:img"), "s3://b/x", report)
    assert docker["trainyard.image"] == "trainyard-train:ci" and docker["trainyard.image_digest"] == "sha256:img"
