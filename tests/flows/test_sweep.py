"""`trainyard sweep` in this process (``sweep.pool: null``): real trainings, a real MLflow server, Optuna in
SQLite beside params.yaml, Prefect's test API. The work-pool path: tests/flows/test_sweep_pool.py."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import main
from tasks.adapters.mlflow_tracking import Tracker
from tasks.sweep_space import EPOCH_OBJECTIVES
from tests.conftest import flow_params
from tests.flows.test_sweep_pool import study_trials

pytestmark = pytest.mark.slow


def with_sweep(params: Path, **sweep: Any) -> Path:
    tree = yaml.safe_load(params.read_text())
    tree["train"].update({"imgsz": 64, "optimizer": "SGD", "warmup_epochs": 0, "nbs": 8, "lr0": 0.01})
    tree["runner"]["retries"] = 0
    tree["sweep"] = sweep
    params.write_text(yaml.safe_dump(tree, sort_keys=False))
    return params


def children_of(tracker: Tracker, experiment: str) -> tuple[Any, list[Any]]:
    runs = tracker.search_runs(experiment)
    [parent] = [r for r in runs if r.tags.get("trainyard.sweep.role") == "parent"]
    return parent, [r for r in runs if r.tags.get("mlflow.parentRunId") == parent.run_id]


def test_a_local_sweep_prunes_the_diverging_trial_and_registers_the_best_as_candidate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: None,
    mlflow_server: str,
    tiny_dataset: Path,
) -> None:
    params = with_sweep(
        flow_params(tmp_path, monkeypatch, mlflow_server, tiny_dataset, "sweep-local"),
        trials=3,
        objective="val/cls_loss",
        startup_trials=1,
        prune_after=1,
        enqueue=[{"lr0": 0.01}, {"lr0": 1.0}],
        space={"lr0": {"low": 0.001, "high": 1.0, "log": True}},
    )
    # (not capsys: Prefect's log handlers would keep its stream, closed after the test)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["sweep", "--params", str(params)]) == 0
    out = printed.getvalue()

    tracker = Tracker(mlflow_server)
    parent, children = children_of(tracker, "sweep-local")
    assert len(children) == 3 and all(r.status == "FINISHED" for r in children)
    by_lr = {r.params["lr0"]: r for r in children}
    diverged = by_lr["1.0"]
    assert diverged.tags["trainyard.sweep.state"] == "PRUNED"
    assert diverged.tags["trainyard.sweep.prune"].startswith("pruned after epoch 1: val/cls_loss")
    assert {r.tags["trainyard.sweep.trial"] for r in children} == {"0", "1", "2"}
    assert all(r.name.startswith(f"t{r.tags['trainyard.sweep.trial']} yolo11n") for r in children)

    # the parent: best trial's values and score, the counts, Optuna's plots, every trial in its description
    best = parent.tags["trainyard.sweep.best_run"]
    scores = {
        r.run_id: tracker.metric_history(r.run_id, "val/cls_loss")[-1][1]
        for r in children
        if r.run_id != diverged.run_id
    }
    assert best == min(scores, key=lambda k: scores[k])
    assert parent.metrics["best/val/cls_loss"] == pytest.approx(scores[best])
    assert parent.metrics["trials/complete"] == 2 and parent.metrics["trials/pruned"] == 1
    assert float(parent.tags["trainyard.sweep.best.lr0"]) == float(tracker.get_run(best).params["lr0"])
    artifacts = tracker.list_artifacts(parent.run_id)
    assert {"optuna/optimization_history.png", "optuna/intermediate_values.png", "trials.csv"} <= set(artifacts)
    assert parent.status == "FINISHED" and "| 1 | PRUNED |" in parent.tags["mlflow.note.content"]

    # the same table on the sweep's Prefect flow run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["trainyard-sweep"])))
    mine = [a for a in found if parent.run_id in str(a.description)]
    assert [a.data for a in mine] == [parent.tags["mlflow.note.content"]]

    # one model version: the best trial's, with the candidate alias (trials register nothing themselves)
    [version] = tracker.model_versions("sweep-local")
    candidate = tracker.alias_version("sweep-local", "candidate")
    assert version.run_id == best and candidate is not None and candidate.run_id == best
    assert f"best run     {best}" in out and "sweep-local/1 (candidate)" in out

    # every per-epoch objective is a column of the trainings' results.csv
    with (Path(tracker.get_run(best).tags["trainyard.run_dir"]) / "results.csv").open() as f:
        columns = {c.strip() for c in next(csv.reader(f))}
    assert set(EPOCH_OBJECTIVES) <= columns

    # the same sweep again: its study is finished, nothing trains; more trials extend it by one
    assert main(["sweep", "--params", str(params)]) == 0
    assert len(children_of(tracker, "sweep-local")[1]) == 3
    assert main(["sweep", "--params", str(params), "--trials", "4"]) == 0
    assert len(study_trials(params)) == 4 and len(children_of(tracker, "sweep-local")[1]) == 4


def test_a_repeated_choice_is_answered_by_the_earlier_identical_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None, mlflow_server: str, tiny_dataset: Path
) -> None:
    """The third trial repeats the first one's values: scored from the run that trained them, not retrained."""
    params = with_sweep(
        flow_params(tmp_path, monkeypatch, mlflow_server, tiny_dataset, "sweep-reuse"),
        trials=3,
        pruner="none",
        enqueue=[{"lr0": 0.01}, {"lr0": 0.02}, {"lr0": 0.01}],
        space={"lr0": [0.01, 0.02]},
    )
    assert main(["sweep", "--params", str(params)]) == 0

    trials = study_trials(params)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    run_ids = [t.user_attrs["run_id"] for t in trials]
    assert len(set(run_ids)) == 2  # trained twice, reused once
    reused = next(t for t in trials if t.user_attrs["outcome"] == "up to date")
    first = next(t for t in trials if t.user_attrs["run_id"] == reused.user_attrs["run_id"] and t is not reused)
    assert reused.value == first.value
    _, children = children_of(Tracker(mlflow_server), "sweep-reuse")
    assert len(children) == 2


def test_a_bad_sweep_section_fails_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_server: str, tiny_dataset: Path
) -> None:
    params = with_sweep(
        flow_params(tmp_path, monkeypatch, mlflow_server, tiny_dataset, "sweep-bad"),
        space={"lr0": {"low": 0.001, "high": 3.0}},
    )
    with contextlib.redirect_stderr(io.StringIO()) as printed:
        assert main(["sweep", "--params", str(params)]) == 2
    err = printed.getvalue()
    assert "sweep.space.lr0 = 3.0 is not a valid train.lr0" in err and "Traceback" not in err
    assert not (tmp_path / "optuna.db").exists()


def test_ctrl_c_stops_a_local_sweep_within_seconds_and_the_same_command_resumes_its_trial(
    tmp_path: Path, prefect_server: str, tiny_dataset: Path
) -> None:
    import os
    import signal
    import subprocess
    import time

    from tests.conftest import VENV_BIN, cli_env, copy_dataset, write_params

    data = copy_dataset(tiny_dataset, tmp_path / "data")
    params = write_params(
        tmp_path / "params.yaml",
        data,
        tracking_uri=None,
        experiment="sweep-int",
        stage_root=tmp_path / "stage",
        epochs=60,  # long enough that Ctrl-C lands mid-training on a busy machine
        imgsz=32,
        plots=False,
    )
    params = with_sweep(params, trials=2, pruner="none", space={"lr0": [0.01, 0.02]})
    env = cli_env(tmp_path, prefect_server)
    cmd = [str(VENV_BIN / "trainyard"), "sweep", "--params", str(params)]
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")

    first = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    trial_run = None
    while time.monotonic() < deadline and first.poll() is None:
        runs = (
            [r for r in tracker.search_runs("sweep-int") if r.tags.get("trainyard.sweep.trial") == "0"]
            if (tmp_path / "mlflow.db").exists()
            else []
        )
        if runs and len(tracker.metric_history(runs[0].run_id, "train/box_loss")) >= 1:
            trial_run = runs[0].run_id
            break
        time.sleep(0.5)
    assert trial_run is not None, first.communicate(timeout=60)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    stopped = time.monotonic()
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130 and time.monotonic() - stopped < 20
    assert "sweep interrupted (SIGINT)" in err and "`trainyard sweep --params" in err
    assert tracker.get_run(trial_run).status == "KILLED"
    [parent] = [r for r in tracker.search_runs("sweep-int") if r.tags.get("trainyard.sweep.role") == "parent"]
    assert parent.status == "KILLED"

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    resumed = tracker.get_run(trial_run)
    assert resumed.status == "FINISHED" and resumed.tags.get("trainyard.resumed_after")  # from last.pt, same run
    assert [t.state.name for t in study_trials(params)] == ["COMPLETE", "COMPLETE"]
    assert tracker.get_run(parent.run_id).status == "FINISHED"
