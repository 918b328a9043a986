"""The sweep loop (tasks/sweep.py) against a real Optuna study in SQLite, with a launcher and an MLflow
stand-in at its two seams (the real ones: tests/flows/test_sweep.py, tests/flows/test_sweep_pool.py)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pytest

from tasks.adapters.mlflow_tracking import RunRecord
from tasks.adapters.optuna_study import Study
from tasks.sweep import PRUNE_TAG, STATE_TAG, STUDY_TAG, TRIAL_TAG, Sweep, TrialEnd, TrialPlan
from tasks.params import TRAIN_RULES
from tasks.sweep_space import dimensions

SPACE = {"lr0": {"low": 0.001, "high": 1.0, "log": True}}


@dataclass
class FakeRuns:
    """MLflow as the loop sees it: runs by tag, per-epoch histories, tags."""

    runs: dict[str, RunRecord] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def add(self, tags: Mapping[str, str], epochs: list[float], final: float) -> str:
        run_id = f"{len(self.runs):032x}"
        self.runs[run_id] = RunRecord(
            run_id, f"run{len(self.runs)}", "RUNNING", "1", {}, dict(tags), {"mAP50-95": final}
        )
        self.history[run_id] = [(i + 1, v) for i, v in enumerate(epochs)]
        return run_id

    def search_runs(
        self, experiment: str, filter_string: str = "", newest_first: bool = False, max_results: int = 1000
    ) -> list[RunRecord]:
        wanted = dict(part.split(" = ") for part in filter_string.split(" and "))
        return [
            r
            for r in self.runs.values()
            if all(r.tags.get(k.removeprefix("tags.`").removesuffix("`")) == v.strip("'") for k, v in wanted.items())
        ][:max_results]

    def get_run(self, run_id: str) -> RunRecord:
        return self.runs[run_id]

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        assert key == "metrics/mAP50-95(B)"
        return self.history[run_id]

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.runs[run_id].tags.update(tags)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        old = self.runs[run_id]
        self.runs[run_id] = RunRecord(old.run_id, old.name, status, "1", {}, old.tags, old.metrics)


@dataclass
class FakeLauncher:
    """Each trial 'trains' for ``polls`` polls; its mAP per epoch is its lr0 (a huge lr0 scores 0)."""

    runs: FakeRuns
    polls: int = 2
    alive: set[str] = field(default_factory=set)
    in_process: bool = True
    started: list[TrialPlan] = field(default_factory=list)
    _left: dict[str, int] = field(default_factory=dict)
    _run: dict[str, str] = field(default_factory=dict)

    def launch(self, plan: TrialPlan) -> str:
        handle = f"h{len(self.started)}"
        self.started.append(plan)
        lr0 = plan.values["lr0"]
        score = 0.0 if lr0 > 0.5 else lr0
        self._run[handle] = self.runs.add(plan.tags, [score, score], score)
        self._left[handle] = self.polls
        return handle

    def poll(self, handle: str) -> TrialEnd | None:
        self._left[handle] -= 1
        if self._left[handle] > 0:
            return None
        return TrialEnd(True, self._run[handle], "trained")

    def knows(self, handle: str) -> bool:
        return handle in self.alive

    def stop(self) -> None:
        pass

    def wait(self, seconds: float) -> None:
        pass


def make_sweep(tmp_path: Path, runs: FakeRuns, launcher: Any, **kw: Any) -> Sweep:
    study = Study.open(f"sqlite:///{tmp_path / 'optuna.db'}", "s", "maximize", startup_trials=1)
    options = {"trials": 4, "parallel": 1, **kw}
    return Sweep(
        study=study,
        dims=dimensions(SPACE, TRAIN_RULES),
        launcher=launcher,
        tracker=runs,
        experiment="e",
        parent_run_id="p" * 32,
        objective="mAP50-95",
        say=lambda line: None,
        sleep=lambda s: None,
        **options,
    )


def test_trials_are_told_their_scores_and_the_losing_one_is_pruned_from_its_epochs(tmp_path: Path) -> None:
    runs = FakeRuns()
    launcher = FakeLauncher(runs)
    sweep = make_sweep(tmp_path, runs, launcher, trials=3, enqueue=[{"lr0": 0.1}, {"lr0": 0.9}, {"lr0": 0.2}])
    report = sweep.run()

    assert [t.state for t in report.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert report.best is not None and report.best.params["lr0"] == 0.2 and report.best.value == 0.2
    pruned = runs.runs[report.trials[1].attrs["run_id"]]
    assert pruned.tags[STATE_TAG] == "PRUNED" and "pruned after epoch 1" in pruned.tags[PRUNE_TAG]
    assert all(p.tags[STUDY_TAG] == "s" and p.tags["mlflow.parentRunId"] == "p" * 32 for p in launcher.started)
    assert [p.tags[TRIAL_TAG] for p in launcher.started] == ["0", "1", "2"]
    assert launcher.started[0].overrides == ["train.lr0=0.1"]


def test_never_more_trials_at_once_than_parallel_nor_more_than_trials(tmp_path: Path) -> None:
    runs = FakeRuns()

    class Counting(FakeLauncher):
        most: int = 0

        def poll(self, handle: str) -> TrialEnd | None:
            running = sum(left > 0 for left in self._left.values())
            Counting.most = max(Counting.most, running)
            return super().poll(handle)

    launcher = Counting(runs, polls=3)
    report = make_sweep(tmp_path, runs, launcher, trials=5, parallel=2).run()
    assert len(report.trials) == 5 and len(launcher.started) == 5
    assert Counting.most == 2


def test_a_sweep_started_again_adopts_what_a_dead_sweep_left_and_ends_with_exactly_the_trials(tmp_path: Path) -> None:
    runs = FakeRuns()
    first = make_sweep(tmp_path, runs, FakeLauncher(runs), trials=4, parallel=2)
    # the first sweep process dies after launching two trials: they stay RUNNING in the study
    first._start_new()
    first._start_new()
    dead = f"{socket.gethostname()}:{_dead_pid()}"
    for number in (0, 1):
        first.study.set_attrs(number, {"owner": dead})
    still = FakeLauncher(runs, alive={"h0"})  # trial 0's flow run still trains on the pool; trial 1's died
    still.started = list(first.launcher.started)  # handles h0, h1 are the first launcher's
    still._left = dict(first.launcher._left)
    still._run = dict(first.launcher._run)
    trial1_run = still._run["h1"]

    second = make_sweep(tmp_path, runs, still, trials=4, parallel=2)
    report = second.run()

    assert len(report.trials) == 4 and {t.state for t in report.trials} <= {"COMPLETE", "PRUNED"}
    assert len(still.started) == 5  # two by the dead sweep, trial 1 again, trials 2 and 3
    assert still.started[2].number == 1 and still.started[2].values == report.trials[1].attrs["train"]
    assert runs.runs[trial1_run].status == "KILLED"  # so the relaunch resumes it instead of starting over


def test_running_trials_of_a_live_sweep_process_are_left_to_it(tmp_path: Path) -> None:
    runs = FakeRuns()
    other = make_sweep(tmp_path, runs, FakeLauncher(runs), trials=2)
    other._start_new()
    other.study.set_attrs(0, {"owner": f"{socket.gethostname()}:{os.getppid()}"})  # alive
    launcher = FakeLauncher(runs)
    report = make_sweep(tmp_path, runs, launcher, trials=2).run()
    assert [t.state for t in report.trials] == ["RUNNING", "COMPLETE"]
    assert len(launcher.started) == 1 and any("another sweep process" in line for line in report.lines)


def test_failed_trials_count_toward_the_study_and_say_why(tmp_path: Path) -> None:
    runs = FakeRuns()

    class Failing(FakeLauncher):
        def poll(self, handle: str) -> TrialEnd | None:
            return TrialEnd(False, None, "TrainingError: the training process exited with 1")

    report = make_sweep(tmp_path, runs, Failing(runs), trials=2).run()
    assert [t.state for t in report.trials] == ["FAIL", "FAIL"] and report.best is None
    assert "failed: TrainingError" in report.lines[1]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
