"""``sweep:`` in params.yaml: the search space over ``train.*``, the objective, and what a trial trains.

Pure: no Optuna here. The space's forms mirror Optuna's ``suggest_*`` calls, so a user who knows
Optuna reads them at once:

- ``{low: 1e-4, high: 0.1, log: true}``: a float range (``suggest_float``), log-scaled if asked;
- ``{low: 8, high: 32, step: 8}``: an integer range (``suggest_int``) for an integer argument;
- ``[64, 96, 128]``: a list of choices (``suggest_categorical``).

Each key must be an Ultralytics training argument, and every value the space can give (its
bounds, each choice, each ``enqueue`` entry) must pass the same checks as ``train.<key>`` itself,
so a trial never fails on a value the params file could not hold.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from tasks.evaluate import FINAL_KEYS, FINAL_METRICS

# What a trial is scored on. The first four are best.pt's final validation (what a user deploys,
# as in metrics.json: short name -> results.csv column, in metrics.json's order); the others are
# per-epoch columns of Ultralytics' results.csv, scored at the last epoch.
# tests/tasks/test_sweep_space.py checks these names against the installed Ultralytics.
_COLUMN_OF = {short: column for column, short in FINAL_KEYS.items()}
FINAL_OBJECTIVES: dict[str, str] = {m: _COLUMN_OF[m] for m in FINAL_METRICS if m in _COLUMN_OF}
EPOCH_OBJECTIVES: tuple[str, ...] = (
    *FINAL_OBJECTIVES.values(),
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
)
OBJECTIVES: tuple[str, ...] = (*FINAL_OBJECTIVES, *EPOCH_OBJECTIVES)
MAX_CHOICES = 100
SIGNIFICANT = 4  # float suggestions are rounded to this many digits: run names and params read 0.0123


@dataclass(frozen=True)
class Dimension:
    """One searched ``train`` key."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {list(self.choices)}"
        scale = ", log" if self.log else (f", step {self.step}" if self.step else "")
        return f"{self.key} {self.kind} [{self.low}, {self.high}{scale}]"


class TrainRules(Protocol):
    """What the space needs to know of ``train.*`` (tasks/params.py gives it; no import back, no cycle)."""

    @property
    def owned(self) -> Mapping[str, str]:
        """Keys trainyard sets, with why."""
        ...

    def known(self, key: str) -> bool: ...

    def types(self, key: str) -> tuple[type, ...]: ...

    def default(self, key: str) -> Any: ...

    def check(self, body: dict[str, Any], where: str) -> None:
        """Raise ParamsError when ``body`` is not a valid ``train`` section."""
        ...


class Suggester(Protocol):
    """The part of an Optuna trial a space needs (tasks/adapters/optuna_study.py passes the real one)."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


def objective_direction(objective: str, direction: str | None) -> str:
    """The study's direction: as set, else maximize a metric and minimize a loss."""
    if direction:
        return direction
    return "minimize" if objective.endswith("_loss") else "maximize"


def epoch_metric(objective: str) -> str:
    """The per-epoch column a trial is pruned on (its results.csv name)."""
    return FINAL_OBJECTIVES.get(objective, objective)


def dimensions(space: Mapping[str, Any], rules: TrainRules) -> tuple[Dimension, ...]:
    """The checked space (see :func:`check_sweep`) as dimensions, in the file's order."""
    out = []
    for key, spec in space.items():
        if isinstance(spec, list):
            out.append(Dimension(key, "choice", choices=tuple(spec)))
        else:
            low, high = spec["low"], spec["high"]
            kind = "int" if _int_range(rules, key, low, high, spec.get("step")) else "float"
            out.append(Dimension(key, kind, low, high, bool(spec.get("log", False)), spec.get("step")))
    return tuple(out)


def suggest(trial: Suggester, dims: Sequence[Dimension]) -> dict[str, Any]:
    """One trial's ``train`` values."""
    values: dict[str, Any] = {}
    for d in dims:
        if d.kind == "choice":
            values[d.key] = trial.suggest_categorical(d.key, list(d.choices))
        elif d.kind == "int":
            assert d.low is not None and d.high is not None
            values[d.key] = trial.suggest_int(d.key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        else:
            assert d.low is not None and d.high is not None
            raw = trial.suggest_float(d.key, float(d.low), float(d.high), step=d.step, log=d.log)
            values[d.key] = raw if d.step else rounded(raw, float(d.low), float(d.high))
    return values


def rounded(value: float, low: float, high: float) -> float:
    """``value`` to :data:`SIGNIFICANT` digits, kept inside [low, high]."""
    return min(high, max(low, float(f"{value:.{SIGNIFICANT}g}")))


def overrides(values: Mapping[str, Any]) -> list[str]:
    """``--set`` texts for a trial's values, as the params loader reads them back exactly."""
    import yaml

    out = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        out.append(f"train.{key}={text.removesuffix('...').strip()}")
    return out


def study_name(experiment: str, sweep: Mapping[str, Any], train: Mapping[str, Any], data_source: str) -> str:
    """``<experiment>-sweep-<hash>`` over what makes two sweeps the same search: re-running an
    unchanged sweep continues its study; changing the space, objective or base params starts another."""
    searched = set(sweep.get("space") or {})
    payload = {
        "space": sweep.get("space"),
        "objective": sweep.get("objective"),
        "direction": sweep.get("direction"),
        "sampler": sweep.get("sampler"),
        "seed": sweep.get("seed"),
        "train": {k: v for k, v in train.items() if k not in searched},
        "data": data_source,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{experiment}-sweep-{digest}"


# --------------------------------------------------------------------------- checks


def check_sweep(sweep: dict[str, Any], train: dict[str, Any], where: str, rules: TrainRules) -> None:
    """Refuse a ``sweep`` section whose space or enqueued trials could give a trial invalid ``train`` values."""
    from tasks.errors import ParamsError

    space = sweep["space"]
    if not isinstance(space, dict):
        raise ParamsError(f"{where}: sweep.space must be a mapping of train keys to ranges or lists of choices")
    for key, spec in space.items():
        _check_dimension(str(key), spec, train, where, rules)
    enqueue = sweep["enqueue"]
    for i, entry in enumerate(enqueue):
        if not isinstance(entry, dict) or not entry:
            raise ParamsError(
                f"{where}: sweep.enqueue[{i}] = {entry!r}; valid form: a mapping of searched train keys like {{lr0: 0.01}}"
            )
        for key, value in entry.items():
            if key not in space:
                raise ParamsError(
                    f"{where}: sweep.enqueue[{i}].{key} is not in sweep.space; an enqueued trial sets searched keys "
                    f"only ({', '.join(space) or 'none'})"
                )
            _check_value(str(key), value, train, where, f"sweep.enqueue[{i}].{key}", rules)
    if sweep["parallel"] > sweep["trials"]:
        raise ParamsError(
            f"{where}: sweep.parallel = {sweep['parallel']} is more than sweep.trials = {sweep['trials']}; "
            "valid form: at most as many trials at once as the study has"
        )


def _check_dimension(key: str, spec: Any, train: dict[str, Any], where: str, rules: TrainRules) -> None:
    from tasks.errors import ParamsError

    name = f"sweep.space.{key}"
    if key in rules.owned or not rules.known(key):
        why = rules.owned.get(key, "not an Ultralytics training argument (ultralytics/cfg/default.yaml)")
        raise ParamsError(f"{where}: {name}: {key!r} cannot be searched: {why}")
    if isinstance(spec, list):
        if not spec or len(spec) > MAX_CHOICES:
            raise ParamsError(f"{where}: {name} has {len(spec)} choices; valid form: a list of 1 to {MAX_CHOICES}")
        for i, value in enumerate(spec):
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise ParamsError(
                    f"{where}: {name}[{i}] = {value!r}; a choice is a number, a string, true/false or null "
                    "(Optuna stores nothing else)"
                )
            _check_value(key, value, train, where, f"{name}[{i}]", rules)
        if len({json.dumps(v) for v in spec}) != len(spec):
            raise ParamsError(f"{where}: {name} lists a choice twice; valid form: distinct choices")
        return
    form = "{low: 1e-4, high: 0.1, log: true}, {low: 8, high: 32, step: 8}, or a list of choices like [64, 96]"
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log", "step"}:
        raise ParamsError(f"{where}: {name} = {spec!r}; valid form: {form}")
    for part in ("low", "high", "step"):  # PyYAML (YAML 1.1) reads 1e-4 as a string
        if isinstance(spec.get(part), str):
            try:
                spec[part] = float(spec[part])
            except ValueError:
                pass
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if not _number(low) or not _number(high) or not low < high:
        raise ParamsError(f"{where}: {name}: low {low!r} and high {high!r} must be numbers with low < high")
    if not isinstance(log, bool):
        raise ParamsError(f"{where}: {name}.log = {log!r}; valid form: true or false")
    if step is not None and (not _number(step) or step <= 0):
        raise ParamsError(f"{where}: {name}.step = {step!r}; valid form: a number above 0")
    if log and step is not None:
        raise ParamsError(f"{where}: {name}: log and step exclude each other (Optuna's rule); keep one")
    if log and low <= 0:
        raise ParamsError(f"{where}: {name}: a log range needs low > 0 (low is {low!r})")
    types = rules.types(key)
    if int in types and float not in types:
        if not all(isinstance(v, int) for v in (low, high, step or 1)):
            raise ParamsError(f"{where}: {name}: train.{key} is an integer; low, high and step must be integers")
    elif float not in types:
        raise ParamsError(f"{where}: {name}: train.{key} is not a number; search it with a list of choices")
    for bound in (low, high):
        _check_value(key, bound, train, where, name, rules)


def _check_value(key: str, value: Any, train: dict[str, Any], where: str, name: str, rules: TrainRules) -> None:
    """``value`` must pass the checks ``train.<key>`` itself passes."""
    from tasks.errors import ParamsError

    try:
        rules.check({**train, key: value}, where)
    except ParamsError as exc:
        detail = str(exc).removeprefix(f"{where}: ")
        raise ParamsError(f"{where}: {name} = {value!r} is not a valid train.{key}: {detail}") from None


def _int_range(rules: TrainRules, key: str, low: Any, high: Any, step: Any) -> bool:
    """An integer range: for an integer argument, or integer bounds of one whose default is an integer
    (batch: 8..32 is a batch size; lr0: 0..1 is a float range)."""
    if float not in rules.types(key):
        return True
    default = rules.default(key)
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step or 1))
    return whole and isinstance(default, int) and not isinstance(default, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
