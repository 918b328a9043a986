"""`dvc repro` with the real dvc CLI in a temporary git repo built from this checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.demo_data import DemoSpec, generate_demo_dataset
from tasks.adapters.mlflow_tracking import Tracker
from tasks.adapters.git_dvc import dvc_dir_md5, dvc_file_md5
from tests.conftest import REPO, VENV_BIN, TINY

# What a clone of the project holds that the pipeline needs (the code and the pipeline).
PROJECT_FILES = ("tasks", "flows", "dvc.yaml", "params.yaml", ".dvcignore", "requirements.lock", "pyproject.toml")


def test_committed_demo_dvc_file_matches_the_generator(tmp_path: Path) -> None:
    """`make demo` on a fresh clone regenerates data/demo; it must be the version data/demo.dvc names."""
    recorded = dvc_file_md5(REPO / "data" / "demo.dvc")
    assert recorded is not None, "data/demo.dvc is missing"
    generated = generate_demo_dataset(tmp_path / "demo", DemoSpec())
    assert dvc_dir_md5(generated) == recorded


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _repro(repo: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(VENV_BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
def test_dvc_repro_runs_all_then_nothing_then_only_what_a_param_touches(tmp_path: Path, mlflow_server: str) -> None:
    repo = tmp_path / "clone"
    repo.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["stage"]["root"] = str(tmp_path / "stage")
    params["train"].update(epochs=1, imgsz=64, batch=8, plots=False)
    params["tracking"]["experiment"] = "dvc-test"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    generate_demo_dataset(repo / "data" / "demo", TINY)

    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": mlflow_server,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "CI": "true",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(repo),
    }  # run the clone's code, so its commit is the code commit
    env.pop("PYTEST_CURRENT_TEST", None)
    _git(repo, "init", "-q", "-b", "main")
    subprocess.run([str(VENV_BIN / "dvc"), "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([str(VENV_BIN / "dvc"), "add", "-q", "data/demo"], cwd=repo, check=True, env=env)
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-q", "-m", "init")

    first = _repro(repo, env)
    for stage in ("stage", "validate", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first, first[-3000:]
    metrics = json.loads((repo / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and "mAP50" in metrics
    shown = subprocess.run(
        [str(VENV_BIN / "dvc"), "metrics", "show", "--json"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '"mAP50"' in shown and '"mAP50-95"' in shown, shown
    run = json.loads((repo / "runs" / "dvc" / "run.json").read_text())
    record = Tracker(mlflow_server).get_run(run["run_id"])
    assert record.status == "FINISHED"
    assert record.tags["trainyard.data_hash"] == dvc_file_md5(repo / "data" / "demo.dvc")
    assert record.tags["trainyard.code_commit"] == _git(repo, "rev-parse", "HEAD")

    second = _repro(repo, env)  # only the cheap data check runs; the data did not change
    assert _ran(second) == ["stage"], second[-3000:]

    params["train"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _repro(repo, env)
    assert _ran(third) == ["stage", "train", "evaluate"], third[-3000:]
    assert json.loads((repo / "metrics.json").read_text())["epochs"] == 2

    label = sorted((repo / "data" / "demo" / "labels" / "val").glob("*.txt"))[0]
    label.write_text(label.read_text() + "1 0.5 0.5 0.25 0.25\n")  # the data changes: everything reruns
    fourth = _repro(repo, env)
    assert _ran(fourth) == ["stage", "validate", "train", "evaluate"], fourth[-3000:]
    staged = json.loads((repo / "reports" / "staged.json").read_text())
    assert staged["md5"] == dvc_dir_md5(repo / "data" / "demo") != record.tags["trainyard.data_hash"]


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z]+)'", output)
