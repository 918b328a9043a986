"""A sweep's loop: ask the study, launch trials, follow their epochs in MLflow, prune, tell.

Each trial is one normal trainyard training (one MLflow run with the full reproduction key),
tagged as a child of the sweep's parent run. Where it trains is the launcher's business
(flows/sweep.py: a subflow in this process, or a flow run of the ``train`` deployment on a work
pool); this loop sees only MLflow and the study:

- **pruning**: every poll it reads the running trials' per-epoch objective from MLflow and reports
  new epochs to the study; when the pruner says stop, it tags the trial's run with
  :data:`PRUNE_TAG`. The trial's flow sees the tag (tasks/live_logging.py), the trainer stops after
  the epoch it is in, and the run finishes incomplete with ``trainyard.sweep.state`` PRUNED.
- **resuming**: trials carry their owner (host:pid) and a heartbeat. A trial left RUNNING by a
  sweep process that died is adopted by the next one: followed on if its flow run still trains
  (a work pool), else launched again with the same values, which resumes its interrupted MLflow
  run from last.pt. So a killed sweep, started again, ends with exactly ``sweep.trials`` trials.
- **skip-if-unchanged**: a trial whose values equal an earlier finished training's is answered
  "up to date" by the train flow itself, and scored from that run.
"""

from __future__ import annotations

import csv
import io
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from tasks.errors import TrackingError
from tasks.evaluate import final_metrics
from tasks.run_lease import pid_alive
from tasks.sweep_space import FINAL_OBJECTIVES, Dimension, epoch_metric, overrides

if TYPE_CHECKING:
    from tasks.adapters.mlflow_tracking import RunRecord
    from tasks.adapters.optuna_study import Study, TrialRecord

STUDY_TAG = "trainyard.sweep.study"  # parent and child runs: the study's name
TRIAL_TAG = "trainyard.sweep.trial"  # child runs: the trial number
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests the child under the parent in its runs table
ROLE_TAG = "trainyard.sweep.role"  # "parent" on the sweep's own run
PRUNE_TAG = "trainyard.sweep.prune"  # set by the sweep on a child: why it should stop
STATE_TAG = "trainyard.sweep.state"  # a child's end as the study recorded it: COMPLETE, PRUNED or FAIL

POLL_SECONDS = 2.0
HEARTBEAT_SECONDS = 30.0
STALE_AFTER = 4 * HEARTBEAT_SECONDS  # a trial whose owner stayed silent this long is an orphan
ENDED = ("COMPLETE", "PRUNED", "FAIL")  # the study's states of a trial that is over


@dataclass(frozen=True)
class TrialPlan:
    """What one trial trains: the study's values as ``--set`` texts, and the tags that link its run."""

    number: int
    values: dict[str, Any]
    overrides: list[str]
    tags: dict[str, str]
    attempt: int = 0  # launches of this trial after the first (its earlier launch died with its sweep)

    @property
    def key(self) -> str:
        """Unique per launch: a launcher that is asked twice for the same key starts the trial once."""
        return f"{self.tags.get(STUDY_TAG, '')}/{self.number}/{self.attempt}"

    def describe(self) -> str:
        return " ".join(o.removeprefix("train.") for o in self.overrides)


@dataclass(frozen=True)
class TrialEnd:
    """How a launched trial ended."""

    ok: bool
    run_id: str | None = None  # the run that trained it, or the earlier identical run it reused
    outcome: str = ""  # "trained", "up to date", "pruned", or why it failed


class Launcher(Protocol):
    """Starts trials somewhere and says when they end (flows/sweep.py)."""

    # True when trainings run inside the sweep process (they die with it); False on a work pool
    in_process: bool

    def launch(self, plan: TrialPlan) -> str:
        """Start the trial (once per ``plan.key``); return a handle :meth:`poll` understands."""
        ...

    def poll(self, handle: str) -> TrialEnd | None:
        """None while the trial runs."""
        ...

    def knows(self, handle: str) -> bool:
        """Whether :meth:`poll` can follow ``handle``, a trial an earlier sweep process launched."""
        ...

    def stop(self) -> None:
        """The sweep is interrupted: stop what trains in this process (a pool's trials train on, to be adopted)."""
        ...

    def wait(self, seconds: float) -> None:
        """Pause the loop for ``seconds``, or less when a trial ends (the next one starts without delay)."""
        ...


class Tracking(Protocol):
    """The part of tasks.adapters.mlflow_tracking.Tracker the loop uses."""

    def search_runs(
        self, experiment: str, filter_string: str = "", newest_first: bool = False, max_results: int = 1000
    ) -> "list[RunRecord]": ...

    def get_run(self, run_id: str) -> "RunRecord": ...

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def end_run(self, run_id: str, status: str = "FINISHED") -> None: ...


@dataclass
class _Active:
    plan: TrialPlan
    handle: str
    run_id: str | None = None
    prune_reason: str = ""
    reported: set[int] = field(default_factory=set)  # epochs the study already holds


@dataclass
class SweepReport:
    """Where the study stands when this sweep process stops."""

    study: str
    trials: "list[TrialRecord]"
    best: "TrialRecord | None"
    lines: list[str] = field(default_factory=list)  # what happened, one line per event

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    def markdown(self, objective: str, direction: str) -> str:
        """Every trial as a table, the best first: the parent run's Description."""
        order = sorted(
            self.trials,
            key=lambda t: (t.value is None, -(t.value or 0.0) if direction == "maximize" else (t.value or 0.0)),
        )
        lines = [
            f"**sweep** `{self.study}`: {direction} {objective}",
            "",
            f"| trial | state | {objective} | values | run |",
            "| --- | --- | --- | --- | --- |",
        ]
        for t in order:
            values = " ".join(f"{k}={v}" for k, v in t.values.items())
            score = "" if t.value is None else f"{t.value:.4f}"
            mark = " **best**" if self.best is not None and t.number == self.best.number else ""
            lines.append(f"| {t.number}{mark} | {t.state} | {score} | {values} | {t.attrs.get('run_id', '')} |")
        return "\n".join(lines)

    def csv_table(self) -> str:
        """trials.csv: one row per trial, a column per searched key."""
        out = io.StringIO()
        keys = sorted({k for t in self.trials for k in t.values})
        writer = csv.writer(out)
        writer.writerow(["trial", "state", "value", *keys, "run_id", "outcome"])
        for t in self.trials:
            values = t.values
            writer.writerow(
                [
                    t.number,
                    t.state,
                    t.value,
                    *(values.get(k) for k in keys),
                    t.attrs.get("run_id"),
                    t.attrs.get("outcome"),
                ]
            )
        return out.getvalue()

    def first_failure(self) -> str:
        failed = next((t for t in self.trials if t.state == "FAIL"), None)
        return str(failed.attrs.get("outcome", "no reason recorded")) if failed else "none failed (all were pruned)"


@dataclass
class Sweep:
    """One sweep process's part of a study."""

    study: "Study"
    dims: Sequence[Dimension]
    launcher: Launcher
    tracker: Tracking
    experiment: str
    parent_run_id: str
    trials: int
    parallel: int
    objective: str
    direction: str = "maximize"
    enqueue: Sequence[Mapping[str, Any]] = ()
    say: Callable[[str], None] = print
    poll_seconds: float = POLL_SECONDS
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] | None = None  # None: the launcher's wait
    _active: dict[int, _Active] = field(default_factory=dict)
    _lines: list[str] = field(default_factory=list)
    _beat: float = 0.0

    def run(self) -> SweepReport:
        """Run trials until the study holds ``trials`` ended ones (or this process has nothing left to do)."""
        known = self.study.trials()
        if not known:
            for values in self.enqueue:
                self.study.enqueue(values)
        self._adopt_orphans(known)
        while True:
            known = self.study.trials()
            ended = sum(t.state in ENDED for t in known)
            elsewhere = [t for t in known if t.state == "RUNNING" and t.number not in self._active]
            while ended + len(self._active) + len(elsewhere) < self.trials and len(self._active) < self.parallel:
                self._start_new()
            if not self._active:
                if elsewhere:
                    self._note(
                        f"{len(elsewhere)} trial(s) still run under another sweep process "
                        f"({', '.join(str(t.number) for t in elsewhere)}); it finishes them"
                    )
                break
            for number in list(self._active):
                self._follow(number)
            self._heartbeat()
            if self._active:
                (self.sleep or self.launcher.wait)(self.poll_seconds)
        return self.report()

    def report(self) -> SweepReport:
        trials = self.study.trials()
        done = [t for t in trials if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
        best = None
        if done:
            pick = max if self._maximize() else min
            best = pick(done, key=lambda t: t.value if t.value is not None else 0.0)
        return SweepReport(self.study.name, trials, best, list(self._lines))

    # ------------------------------------------------------------------ starting

    def _start_new(self) -> None:
        number, values = self.study.ask(self.dims)
        plan = self.plan(number, values)
        self.study.set_attrs(number, {"train": values, "owner": self.owner, "heartbeat": self.clock(), "attempt": 0})
        self._launch(plan)
        self._note(f"trial {number} started: {plan.describe()}")

    def plan(self, number: int, values: Mapping[str, Any], attempt: int = 0) -> TrialPlan:
        tags = {STUDY_TAG: self.study.name, TRIAL_TAG: str(number), PARENT_TAG: self.parent_run_id}
        return TrialPlan(number, dict(values), overrides(values), tags, attempt)

    def _launch(self, plan: TrialPlan, reported: set[int] | None = None) -> None:
        handle = self.launcher.launch(plan)
        self.study.set_attrs(plan.number, {"handle": handle})
        self._active[plan.number] = _Active(plan, handle, reported=set(reported or ()))

    def _adopt_orphans(self, known: "Sequence[TrialRecord]") -> None:
        for trial in known:
            if trial.state != "RUNNING" or not self._orphaned(trial):
                continue
            values = trial.values
            handle = str(trial.attrs.get("handle") or "")
            attempt = int(trial.attrs.get("attempt", 0))
            self.study.set_attrs(trial.number, {"owner": self.owner, "heartbeat": self.clock()})
            if handle and self.launcher.knows(handle):  # a flow run on a pool: it trains on without us
                plan = self.plan(trial.number, values, attempt)
                self._active[trial.number] = _Active(plan, handle, trial.attrs.get("run_id"), reported=set(trial.steps))
                self._note(f"trial {trial.number} adopted: it still trains ({handle})")
                continue
            if handle:  # its launch died with its sweep process: launch it again
                attempt += 1
            # (no handle: the dead process may have launched it just before it died; the same
            # attempt's key makes a work pool return that flow run instead of a second one)
            if self.launcher.in_process:
                run_id = trial.attrs.get("run_id") or self._find_run(trial.number)
                if run_id and self.tracker.get_run(run_id).status in ("RUNNING", "FAILED"):
                    # the training died with its sweep process (left open, or failed as its child was
                    # interrupted): KILLED, so the relaunch resumes that run from last.pt
                    self.tracker.end_run(run_id, "KILLED")
            self.study.set_attrs(trial.number, {"attempt": attempt})
            plan = self.plan(trial.number, values, attempt)
            self._launch(plan, set(trial.steps))
            self._note(f"trial {trial.number} restarted after its sweep process stopped: {plan.describe()}")

    def _orphaned(self, trial: "TrialRecord") -> bool:
        owner = str(trial.attrs.get("owner", ""))
        host, _, pid = owner.rpartition(":")
        if owner == self.owner:
            return True  # this very process, before a restart that reused the pid
        if host == socket.gethostname() and pid.isdigit():
            return not pid_alive(int(pid))
        beat = trial.attrs.get("heartbeat")
        return not isinstance(beat, (int, float)) or self.clock() - float(beat) > STALE_AFTER

    def _heartbeat(self) -> None:
        now = self.clock()
        if now - self._beat < HEARTBEAT_SECONDS:
            return
        self._beat = now
        for number in self._active:
            self.study.set_attrs(number, {"heartbeat": now})

    # ------------------------------------------------------------------ following

    def _follow(self, number: int) -> None:
        active = self._active[number]
        if active.run_id is None:
            active.run_id = self._find_run(number)
            if active.run_id is not None:
                self.study.set_attrs(number, {"run_id": active.run_id})
        if active.run_id is not None and not active.prune_reason:
            self._report_epochs(number, active)
        end = self.launcher.poll(active.handle)
        if end is not None:
            self._finish(number, active, end)

    def _find_run(self, number: int) -> str | None:
        found = self.tracker.search_runs(
            self.experiment,
            f"tags.`{STUDY_TAG}` = '{self.study.name}' and tags.`{TRIAL_TAG}` = '{number}'",
            newest_first=True,
            max_results=1,
        )
        return found[0].run_id if found else None

    def _report_epochs(self, number: int, active: _Active) -> None:
        assert active.run_id is not None
        for step, value in self.tracker.metric_history(active.run_id, epoch_metric(self.objective)):
            if step in active.reported:
                continue
            active.reported.add(step)
            if self.study.report(number, step, value):
                active.prune_reason = (
                    f"pruned after epoch {step}: {epoch_metric(self.objective)} {value:.4g} is "
                    f"{'below' if self._maximize() else 'above'} the median of earlier trials at that epoch"
                )
                self.tracker.set_tags(active.run_id, {PRUNE_TAG: active.prune_reason})
                self._note(f"trial {number} {active.prune_reason}")
                return

    def _finish(self, number: int, active: _Active, end: TrialEnd) -> None:
        del self._active[number]
        run_id = end.run_id or active.run_id
        attrs: dict[str, Any] = {"outcome": end.outcome[:500]}
        if run_id:
            attrs["run_id"] = run_id
        self.study.set_attrs(number, attrs)
        if not end.ok:
            self._tell(number, run_id, "FAIL")
            self._note(f"trial {number} failed: {end.outcome.splitlines()[0] if end.outcome else 'no reason given'}")
            return
        if active.prune_reason or end.outcome == "pruned":
            self._tell(number, run_id, "PRUNED")
            return
        value = objective_value(self.tracker, run_id, self.objective) if run_id else None
        if value is None or not math.isfinite(value):
            self._tell(number, run_id, "FAIL")
            self._note(f"trial {number} ended without a finite {self.objective}: counted as failed")
            return
        self._tell(number, run_id, "COMPLETE", value)
        reused = " (up to date: an earlier identical training, not retrained)" if end.outcome == "up to date" else ""
        self._note(f"trial {number} finished: {self.objective} {value:.4f}{reused}")

    def _tell(self, number: int, run_id: str | None, state: str, value: float | None = None) -> None:
        if run_id:
            run = self.tracker.get_run(run_id)
            if run.tags.get(STUDY_TAG) == self.study.name:  # a reused run belongs to its own sweep
                self.tracker.set_tags(run_id, {STATE_TAG: state})
        self.study.tell(number, state, value)

    def _maximize(self) -> bool:
        return self.direction == "maximize"

    def _note(self, line: str) -> None:
        self._lines.append(line)
        self.say(line)


def pruned_watch(tracker: Tracking, run_id: str) -> Callable[[], str | None]:
    """For a trial's live logging: the sweep's reason to stop it, once it tagged the run (None until then)."""

    def watch() -> str | None:
        try:
            return tracker.get_run(run_id).tags.get(PRUNE_TAG)
        except TrackingError:
            return None  # asked again in a moment; an outage must not stop a training

    return watch


def objective_value(tracker: Tracking, run_id: str, objective: str) -> float | None:
    """A finished run's score: best.pt's final value, or a per-epoch metric's last value."""
    if objective in FINAL_OBJECTIVES:
        value = final_metrics(tracker.get_run(run_id).metrics).get(objective)
        return None if value is None else float(value)
    history = tracker.metric_history(run_id, objective)
    return float(history[-1][1]) if history else None
