"""Staging from S3 end to end: a real moto S3 server over HTTP, faults from a real proxy."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.cli import main as cli
from tasks.errors import DataSourceError, TransientSourceError
from tasks.stage import source_spec, stage_dataset
from tasks.stage_cache import StageCache
from tasks.adapters.git_dvc import dvc_dir_md5, dvc_file_md5
from tests.conftest import VENV_BIN
from tests.s3server import FaultProxy, make_bucket, unique_bucket


def _upload(endpoint: str, dataset: Path, prefix: str = "datasets/tiny") -> str:
    files = {
        f"{prefix}/{p.relative_to(dataset).as_posix()}": p.read_bytes()
        for p in sorted(dataset.rglob("*"))
        if p.is_file()
    }
    bucket = unique_bucket("stage")
    make_bucket(endpoint, bucket, files)
    return f"s3://{bucket}/{prefix}"


def _published(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def _stage(url: str, root: Path, endpoint: str | None = None, **kw: object):
    return stage_dataset(source_spec(url, base_dir=root, endpoint_url=endpoint), StageCache(root), **kw)


def test_cold_then_warm_from_s3(
    s3_env: str, tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _upload(s3_env, tiny_dataset)
    cold = _stage(url, tmp_path / "cache")
    assert not cold.reused and cold.md5 == dvc_dir_md5(tiny_dataset)  # same version as on disk / in DVC
    assert (cold.path / "data.yaml").read_bytes() == (tiny_dataset / "data.yaml").read_bytes()

    from tasks.adapters import s3 as s3_mod

    def no_downloads(*a: object, **k: object) -> None:
        raise AssertionError("an unchanged prefix must not be downloaded again")

    monkeypatch.setattr(s3_mod.S3Client, "download_many", no_downloads)
    warm = _stage(url, tmp_path / "cache")
    assert warm.reused and warm.path == cold.path and warm.seconds < 5


def test_corrupted_transfer_publishes_nothing_and_the_rerun_fetches_only_the_rest(
    s3_env: str, fault_proxy: FaultProxy, tmp_path: Path, tiny_dataset: Path
) -> None:
    url = _upload(s3_env, tiny_dataset)
    victim = (
        url.split("/", 3)[3] + "/labels/val/" + sorted(p.name for p in (tiny_dataset / "labels" / "val").iterdir())[0]
    )
    fault_proxy.configure(corrupt={victim: 1000})
    with pytest.raises(TransientSourceError, match="md5"):
        _stage(url, tmp_path / "cache", endpoint=fault_proxy.endpoint)
    assert _published(tmp_path / "cache") == []
    fault_proxy.configure(corrupt={})
    before = fault_proxy.counts["get"]
    staged = _stage(url, tmp_path / "cache", endpoint=fault_proxy.endpoint)
    assert staged.md5 == dvc_dir_md5(tiny_dataset)
    assert fault_proxy.counts["get"] - before < staged.files, "the rerun must resume, not start over"


def test_five_percent_errors_and_timeouts_are_retried(
    s3_env: str, fault_proxy: FaultProxy, tmp_path: Path, tiny_dataset: Path
) -> None:
    url = _upload(s3_env, tiny_dataset)
    fault_proxy.configure(error_rate=0.05, timeout_rate=0.05, delay=3.0, seed=7)
    spec = source_spec(url, base_dir=tmp_path, endpoint_url=fault_proxy.endpoint)
    from tasks.adapters import s3 as s3_mod

    original = s3_mod.S3Client.__init__

    def short_timeouts(self: object, *a: object, **k: object) -> None:
        k.setdefault("read_timeout", 1.0)
        original(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(s3_mod.S3Client, "__init__", short_timeouts)
        staged = stage_dataset(spec, StageCache(tmp_path / "cache"))
    assert staged.md5 == dvc_dir_md5(tiny_dataset)
    assert fault_proxy.counts["error"] + fault_proxy.counts["timeout"] > 0, fault_proxy.counts


def test_bad_s3_sources_are_one_clear_error_and_publish_nothing(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_bucket(s3_env, "empty-bucket-x", {})
    make_bucket(s3_env, "notyolo-bucket-x", {"stuff/readme.txt": b"hi", "stuff/a/b.bin": b"\x00"})
    cases = {
        "s3://notyolo-bucket-x/stuff": "not a YOLO dataset",
        f"s3://{unique_bucket('missing')}/data": "does not exist",
        "s3://empty-bucket-x/nothing": "holds no objects",
    }
    for url, words in cases.items():
        with pytest.raises(DataSourceError, match=words):
            _stage(url, tmp_path / "cache")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DataSourceError, match="no AWS credentials"):
        _stage("s3://empty-bucket-x/nothing", tmp_path / "cache")
    assert _published(tmp_path / "cache") == []


def test_stage_cli_prints_json_and_records_without_paths(
    s3_env: str, tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    url = _upload(s3_env, tiny_dataset)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"data": {"source": url}, "train": {"model": "yolo11n.yaml"}, "stage": {"root": str(tmp_path / "cache")}}
        )
    )
    assert cli(["stage", "--params", str(params), "--json", "--record", str(tmp_path / "staged.json")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["md5"] == dvc_dir_md5(tiny_dataset) and out["reused"] is False and Path(out["path"]).is_dir()
    record = json.loads((tmp_path / "staged.json").read_text())
    assert record == {"md5": out["md5"], "source": url, "files": out["files"], "bytes": out["bytes"]}


def test_snapshot_turns_an_s3_prefix_into_a_dvc_version(
    s3_env: str, tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _upload(s3_env, tiny_dataset)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        [str(VENV_BIN / "dvc"), "init", "-q"],
        [str(VENV_BIN / "dvc"), "remote", "add", "-d", "local", str(tmp_path / "remote")],
    ):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    params = repo / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"data": {"source": url}, "train": {"model": "yolo11n.yaml"}, "stage": {"root": str(tmp_path / "cache")}}
        )
    )
    assert cli(["data", "snapshot", "--params", str(params), "shapes"]) == 0
    md5 = dvc_file_md5(repo / "data" / "shapes.dvc")
    assert md5 == dvc_dir_md5(tiny_dataset)
    assert any((tmp_path / "remote").rglob("*.dir")), "the version must be pushed to the remote"
    local = stage_dataset(source_spec("data/shapes", base_dir=repo), StageCache(tmp_path / "cache2"))
    assert local.md5 == md5


@pytest.mark.slow
def test_train_flow_from_s3_records_the_data_version_and_no_secrets(
    s3_env: str,
    tmp_path: Path,
    tiny_dataset: Path,
    mlflow_server: str,
    prefect_api: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.train import train_flow
    from tasks.adapters.mlflow_tracking import Tracker
    from tests.conftest import write_params

    secret = "s3cr3t-Zq9-never-log-me"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    url = _upload(s3_env, tiny_dataset)
    params = write_params(
        tmp_path / "params.yaml",
        tiny_dataset,
        tracking_uri=mlflow_server,
        experiment="s3-flow",
        stage_root=tmp_path / "cache",
        epochs=1,
        plots=False,
    )
    result = train_flow(params_path=str(params), overrides=[f"data.source={url}"])
    run = Tracker(mlflow_server).get_run(result.run_id)
    assert run.tags["trainyard.data_hash"] == dvc_dir_md5(tiny_dataset)
    assert run.tags["trainyard.data_source"] == url and run.tags["trainyard.params.data.source"] == url
    everything = " ".join([*run.params.values(), *run.tags.values(), Path(result.run_dir, "params.yaml").read_text()])
    assert secret not in everything and "AWS_SECRET" not in everything


def test_a_roboflow_export_named_by_its_yaml_on_s3_stages_and_validates(s3_env: str, tmp_path: Path) -> None:
    from tasks.validate import validate_dataset
    from tests.tasks.test_dataset_layouts import roboflow

    export = roboflow(tmp_path / "export")
    (export / "data.yaml").rename(export / "flowers.yaml")
    (export / "notes.yaml").write_text("not: a dataset\n")
    url = _upload(s3_env, export, prefix="exports/flowers-v1") + "/flowers.yaml"
    staged = _stage(url, tmp_path / "cache", s3_env)
    assert staged.yaml == "flowers.yaml" and staged.yaml_path == staged.path / "flowers.yaml"
    report = validate_dataset(staged.yaml_path, confine=True)
    assert report.ok, report.problems
    assert {k: v.images for k, v in report.splits.items()} == {"train": 2, "val": 2, "test": 2}
    training = yaml.safe_load(staged.training_yaml(tmp_path / "run" / "data.yaml").read_text())
    assert training["val"] == str(staged.path / "valid" / "images")  # Roboflow's ../valid/images, resolved
    with pytest.raises(DataSourceError, match="gone.yaml is not in the source"):
        _stage(url.replace("flowers.yaml", "gone.yaml"), tmp_path / "cache", s3_env)
