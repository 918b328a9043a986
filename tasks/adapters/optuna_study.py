"""The one module that talks to Optuna: a study in a database, asked and told from the sweep process.

The sweep process is the study's only client: trials train elsewhere (a subflow here, a flow run
on a work pool), their epochs reach MLflow, and the sweep reports them to the study and asks the
pruner (tasks/sweep.py). Workers therefore need no access to the study's database.

The storage is an SQLAlchemy URL of the same family as MLflow's store: SQLite beside the
project by default, Postgres for a team; several sweep processes may share one study.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tasks.errors import SweepError
from tasks.sweep_space import Dimension, suggest

if TYPE_CHECKING:
    import optuna

OPEN_ATTEMPTS = 5  # tries to open a study while another process creates its database (5 s in all)


@dataclass(frozen=True)
class TrialRecord:
    """A trial as the study holds it."""

    number: int
    state: str  # RUNNING, WAITING, COMPLETE, PRUNED or FAIL (Optuna's TrialState names)
    params: dict[str, Any]
    attrs: dict[str, Any]  # user attributes: run_id, handle, owner, heartbeat, attempt, outcome, train
    value: float | None
    steps: dict[int, float] = field(default_factory=dict)  # the epochs reported so far

    @property
    def values(self) -> dict[str, Any]:
        """The ``train`` values it trained: as asked (``train``, rounded), else Optuna's params."""
        return dict(self.attrs.get("train") or self.params)


class Study:
    """An Optuna study opened (or created) by name in ``storage``."""

    def __init__(self, study: "optuna.Study") -> None:
        self._study = study
        self._asked: dict[int, Any] = {}  # trial number -> optuna.Trial, for report/should_prune

    @classmethod
    def open(
        cls,
        storage: str,
        name: str,
        direction: str,
        pruner: str = "median",
        prune_after: int = 1,
        startup_trials: int = 2,
        sampler: str = "tpe",
        seed: int | None = 0,
    ) -> "Study":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        chosen_pruner: Any = (
            optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=prune_after)
            if pruner == "median"
            else optuna.pruners.NopPruner()
        )

        def make_sampler(seed: int | None) -> Any:
            if sampler == "random":
                return optuna.samplers.RandomSampler(seed=seed)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(startup_trials, 1))

        from sqlalchemy.exc import IntegrityError, OperationalError

        chosen_sampler = make_sampler(seed)
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            try:
                study = optuna.create_study(
                    storage=storage,
                    study_name=name,
                    direction=optuna.study.StudyDirection.MAXIMIZE
                    if direction == "maximize"
                    else optuna.study.StudyDirection.MINIMIZE,
                    pruner=chosen_pruner,
                    sampler=chosen_sampler,
                    load_if_exists=True,
                )
                break
            except (IntegrityError, OperationalError) as exc:
                # Two processes opening a new database at once both create Optuna's tables, and
                # the slower fails ("table ... already exists", a duplicate alembic_version row);
                # a moment later it finds them made. A server that is down fails every attempt.
                if attempt == OPEN_ATTEMPTS:
                    raise _unopened(name, storage, exc) from exc
                time.sleep(0.5 * attempt)
            except Exception as exc:  # a wrong URL, a missing driver
                raise _unopened(name, storage, exc) from exc
        held = len(study.get_trials(deepcopy=False))
        if held and seed is not None:
            # the same seed on every start would suggest a resumed sweep the points its last
            # process started with; offset by what the study holds, it stays reproducible
            study.sampler = make_sampler(seed + held)
        if study.direction.name.lower() != direction:
            raise SweepError(
                f"the Optuna study {name!r} at {_shown(storage)} was created to {study.direction.name.lower()} "
                f"its objective, not to {direction}; set sweep.study to a new name"
            )
        return cls(study)

    @property
    def name(self) -> str:
        return str(self._study.study_name)

    def enqueue(self, values: Mapping[str, Any]) -> None:
        self._study.enqueue_trial(dict(values))

    def ask(self, dims: Sequence[Dimension]) -> tuple[int, dict[str, Any]]:
        """A new trial (an enqueued one first) and its ``train`` values."""
        trial = self._study.ask()
        values = suggest(trial, dims)
        self._asked[trial.number] = trial
        return int(trial.number), values

    def report(self, number: int, step: int, value: float) -> bool:
        """Report epoch ``step``'s value; True when the pruner says the trial should stop."""
        trial = self._trial(number)
        trial.report(value if math.isfinite(value) else float("nan"), step)
        return bool(trial.should_prune())

    def tell(self, number: int, state: str, value: float | None = None) -> None:
        """End a trial: COMPLETE with its value, PRUNED, or FAIL. A trial another process ended stays as it is."""
        import optuna

        states = {"COMPLETE": optuna.trial.TrialState.COMPLETE, "PRUNED": optuna.trial.TrialState.PRUNED}
        try:
            if state == "COMPLETE" and value is not None and math.isfinite(value):
                self._study.tell(number, value)
            else:
                self._study.tell(number, state=states.get(state, optuna.trial.TrialState.FAIL))
        except (RuntimeError, ValueError) as exc:  # already finished: another sweep process told it first
            if "finished" not in str(exc) and "already" not in str(exc):
                raise
        self._asked.pop(number, None)

    def set_attrs(self, number: int, attrs: Mapping[str, Any]) -> None:
        trial = self._trial(number)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def trials(self) -> list[TrialRecord]:
        return [
            TrialRecord(
                number=int(t.number),
                state=t.state.name,
                params=dict(t.params),
                attrs=dict(t.user_attrs),
                value=None if t.value is None else float(t.value),
                steps={int(k): float(v) for k, v in t.intermediate_values.items()},
            )
            for t in self._study.get_trials(deepcopy=False)
        ]

    def importances(self) -> dict[str, float]:
        """Each searched key's share of the objective's variance (Optuna's default evaluator); {} until it can tell."""
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "too few trials": the plots say so, the log need not
            try:
                return {k: float(v) for k, v in optuna.importance.get_param_importances(self._study).items()}
            except (RuntimeError, ValueError, ZeroDivisionError):
                return {}

    def plots(self, out_dir: Path) -> list[Path]:
        """Optuna's history, importance and intermediate-values plots as PNGs; those it cannot draw yet are skipped."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as vis

        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, draw in (
            ("optimization_history.png", vis.plot_optimization_history),
            ("param_importances.png", vis.plot_param_importances),
            ("intermediate_values.png", vis.plot_intermediate_values),
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    axes: Any = draw(self._study)
                except (RuntimeError, ValueError, ZeroDivisionError):
                    continue  # e.g. importances need two finished trials that differ
            figure: Any = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure  # one Axes, or an array
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(out_dir / name, dpi=100)
            plt.close(figure)
            written.append(out_dir / name)
        return written

    def _trial(self, number: int) -> Any:
        import optuna

        if number not in self._asked:  # a trial an earlier sweep process asked: adopted after a crash
            frozen = next((t for t in self._study.get_trials(deepcopy=False) if t.number == number), None)
            if frozen is None:
                raise SweepError(f"the study {self.name!r} has no trial {number}")
            self._asked[number] = optuna.trial.Trial(self._study, frozen._trial_id)
        return self._asked[number]


def default_storage(base_dir: Path) -> str:
    """SQLite beside the project's params.yaml (and its local mlflow.db)."""
    return f"sqlite:///{(base_dir / 'optuna.db').resolve()}"


def _unopened(name: str, storage: str, exc: Exception) -> SweepError:
    return SweepError(
        f"cannot open the Optuna study {name!r} at {_shown(storage)}: {type(exc).__name__}: {exc}; "
        "set sweep.storage to a database URL like sqlite:///optuna.db or postgresql://user@host/optuna"
    )


def _shown(storage: str) -> str:
    from tasks.redact import redact

    return redact(storage)
