"""`trainyard sweep` on a work pool: a real `prefect server start`, `prefect deploy` of the shipped
prefect.yaml and two process workers; the sweep process is killed mid-way and started again.

The study's diverging trial (an enqueued lr0 of 1.0, whose val/cls_loss explodes by five orders
of magnitude in its first epoch on the tiny dataset, deterministically on CPU) is pruned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, VENV_BIN, _stop_group, cli_env, copy_dataset, write_params
from tests.flows.test_schedules import _prefect, prefect_client

pytestmark = pytest.mark.slow

POOL = "sweep-test"
GPU_LIMIT = "sweep-test-gpus"


def sweep_params(tmp_path: Path, data: Path, tracking_uri: str, experiment: str, **sweep: Any) -> Path:
    """A tiny CPU training whose learning rate shows within one epoch (SGD, every batch a step)."""
    path = write_params(
        tmp_path / "params.yaml",
        data,
        tracking_uri=tracking_uri,
        experiment=experiment,
        stage_root=tmp_path / "stage",
        epochs=2,
        imgsz=64,
        plots=False,
        optimizer="SGD",
        warmup_epochs=0,
        nbs=8,
        lr0=0.01,
    )
    tree = yaml.safe_load(path.read_text())
    tree["runner"]["retries"] = 0
    tree["sweep"] = {
        "objective": "val/cls_loss",
        "startup_trials": 1,
        "prune_after": 1,
        "space": {"lr0": {"low": 0.001, "high": 1.0, "log": True}, "patience": [50, 100]},
        **sweep,
    }
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def study_trials(params: Path) -> list[Any]:
    import optuna

    [summary] = optuna.get_all_study_summaries(f"sqlite:///{params.parent / 'optuna.db'}")
    return optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{params.parent / 'optuna.db'}").trials


def test_a_pool_sweep_runs_two_trials_at_once_prunes_the_diverging_one_and_resumes_after_a_kill(
    tmp_path: Path, prefect_server: str, mlflow_server: str, tiny_dataset: Path
) -> None:
    from mlflow.tracking import MlflowClient

    data = copy_dataset(tiny_dataset, tmp_path / "data")
    params = sweep_params(
        tmp_path,
        data,
        mlflow_server,
        "sweep-pool",
        trials=4,
        parallel=2,
        pool=POOL,
        gpu_limit=GPU_LIMIT,
        # two sound trials first, then the diverging one: it starts once a trial has finished. The sound
        # ones differ only in early-stopping patience, which two epochs never reach: they train two
        # bit-identical curves, so whichever finishes first, the other ties with it and is not pruned
        enqueue=[{"lr0": 0.01, "patience": 100}, {"lr0": 0.01, "patience": 50}, {"lr0": 1.0, "patience": 100}],
    )
    (tmp_path / "yolo").mkdir()
    env = cli_env(tmp_path, prefect_server)
    _prefect(["work-pool", "create", POOL, "--type", "process", "--overwrite"], env, REPO, 120)
    _prefect(["deploy", "--name", "train", "--pool", POOL], env, REPO, 240)

    workers = [
        subprocess.Popen(
            [str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1", "--name", f"w{i}"],
            cwd=tmp_path,
            env=env,
            stdout=(tmp_path / f"worker{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i in range(2)
    ]
    sweep_cmd = [str(VENV_BIN / "trainyard"), "sweep", "--params", str(params)]
    try:
        first = subprocess.Popen(
            sweep_cmd,
            cwd=tmp_path,
            env=env,
            stdout=(tmp_path / "sweep1.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # kill the sweep process once the first trial has finished: the others are mid-way
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            assert first.poll() is None, (tmp_path / "sweep1.log").read_text()[-5000:]
            if (tmp_path / "optuna.db").exists() and any(t.state.name == "COMPLETE" for t in _trials(params)):
                break
            time.sleep(1)
        else:
            pytest.fail("no trial finished within 420 s:\n" + (tmp_path / "sweep1.log").read_text()[-5000:])
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert sum(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in _trials(params)) < 4  # mid-way

        second = subprocess.run(sweep_cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-5000:]
    finally:
        for proc in workers:
            _stop_group(proc)

    trials = study_trials(params)
    assert len(trials) == 4
    assert [t.state.name for t in trials[:3]] == ["COMPLETE", "COMPLETE", "PRUNED"], trials
    assert trials[0].value == trials[1].value
    with prefect_client(prefect_server) as prefect:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

        launched = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["trainyard-sweep"]))
        )
        mine = [r for r in launched if r.parameters.get("params_path") == str(params)]
        assert len(mine) == 4  # the resumed sweep followed the trials the killed one had started
        assert all(r.state is not None and r.state.is_completed() for r in mine)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("sweep-pool")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("trainyard.sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(runs) == 5
    assert {r.data.tags["trainyard.sweep.state"] for r in children} == {"COMPLETE", "PRUNED"}
    pruned = [r for r in children if r.data.tags["trainyard.sweep.state"] == "PRUNED"]
    assert len(pruned) == 1 and "pruned after epoch 1" in pruned[0].data.tags["trainyard.sweep.prune"]
    assert all(r.data.tags.get("trainyard.prefect.deployment") == "train" for r in children)  # trained by workers
    # never more than two trainings at once: sweep.parallel, and the GPU limit's two slots
    events = sorted([(r.info.start_time, 1) for r in children] + [(r.info.end_time, -1) for r in children])
    at_once, most = 0, 0
    for _, step in events:
        at_once += step
        most = max(most, at_once)
    assert 1 <= most <= 2
    with prefect_client(prefect_server) as prefect:
        assert prefect.read_global_concurrency_limit_by_name(GPU_LIMIT).limit == 2
    assert parent.info.status == "FINISHED" or client.get_run(parent.info.run_id).info.status == "FINISHED"
    best = client.get_run(parent.info.run_id).data.tags["trainyard.sweep.best_run"]
    assert best in {r.info.run_id for r in children if r.data.tags["trainyard.sweep.state"] == "COMPLETE"}
    assert "best run" in second.stdout and best in second.stdout


def _trials(params: Path) -> list[Any]:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return study_trials(params)
    except (ValueError, RuntimeError, KeyError, SQLAlchemyError):  # the sweep is creating the study's database
        return []
