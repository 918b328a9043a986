"""The model registry: every finished training is a version; aliases say which one to use.

Each complete training logs best.pt as an MLflow model and registers it as a new version of
one registered model (``tracking.registered_model``, default: the experiment's name), tagged
with its reproduction key and its best.pt mAP50-95. The alias ``candidate`` always points at
the newest; ``champion`` moves only by promotion:

- ``trainyard promote RUN_ID`` (``tracking.promote: manual``, the default: what serves is a
  person's decision), refused when the run's data version differs from the champion's, because
  then the two mAP50-95 are measured on different validation sets and say nothing about each
  other (``--force`` promotes anyway and records that it did);
- ``tracking.promote: auto``: a training becomes champion when there is none yet, or when its
  mAP50-95 beats the champion's on the same data version.

Reproductions register nothing: they check an earlier model, they do not offer a new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tasks.errors import UsageError
from tasks.repro_key import TAG_PREFIX

if TYPE_CHECKING:
    from tasks.adapters.mlflow_lookup import StoreLookup
    from tasks.adapters.mlflow_tracking import ModelVersionRecord, Tracker
    from tasks.params import Params

CANDIDATE = "candidate"
CHAMPION = "champion"
SCORE = "mAP50-95"  # what promotion compares: best.pt on the run's validation split
SCORE_TAG = f"{TAG_PREFIX}{SCORE}"
DATA_TAG = f"{TAG_PREFIX}data_hash"
VERSION_TAG = f"{TAG_PREFIX}model_version"  # on the run: "<registered model>/<version>"
FORCED_TAG = f"{TAG_PREFIX}promoted_despite"  # on a version promoted with --force: what differed
# the run tags a version carries, so the registry alone says what a version was trained on
KEY_TAGS = tuple(
    f"{TAG_PREFIX}{k}"
    for k in ("key", "data_hash", "params_hash", "env_kind", "env_digest", "code_commit", "seed", "data_source")
)


class PromotionRefused(UsageError):
    """``trainyard promote`` would compare models measured on different data."""


@dataclass(frozen=True)
class RegistryPlan:
    """What a finished training registers: kept in the sync journal, so a deferred finish registers too."""

    model: str  # the registered model's name
    promote: str  # "manual" or "auto"
    imgsz: int  # the pyfunc's default inference size: the training's


@dataclass(frozen=True)
class Registration:
    model: str
    version: str
    note: str  # one line for the log: what happened to the aliases and why


def registered_model(params: "Params") -> str:
    return params.tracking.registered_model or params.tracking.experiment


def registry_plan(params: "Params", reproduction: bool = False) -> RegistryPlan | None:
    """What a finished training registers; nothing for a reproduction (it checks a model, it offers none)."""
    if reproduction:
        return None
    imgsz = params.train.get("imgsz", 640)
    size = max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz  # Ultralytics trains [h, w] at max
    return RegistryPlan(model=registered_model(params), promote=params.tracking.promote, imgsz=int(size))


def describe_version(tracker: "Tracker | StoreLookup", run_tags: dict[str, str]) -> str:
    """``trainyard/3 (candidate, champion)`` for a run that registered a version, else ""."""
    model, _, version = run_tags.get(VERSION_TAG, "").rpartition("/")
    if not model:
        return ""
    aliases = sorted(tracker.model_version(model, version).aliases)
    return f"{model}/{version} ({', '.join(aliases)})" if aliases else f"{model}/{version}"


def register_run(
    tracker: "Tracker",
    run_id: str,
    run_dir: Path,
    plan: RegistryPlan,
    metrics: dict[str, float | int],
    warn: Callable[[str], None],
) -> Registration | None:
    """Log best.pt as the run's model, register it, point ``candidate`` at it, promote if the plan says so.

    Idempotent: a run that already has a version keeps it (a finish repeated by `trainyard sync`).
    """
    weights = run_dir / "weights" / "best.pt"
    existing = tracker.run_versions(plan.model, run_id)
    if existing:
        version = existing[-1].version
    elif not weights.is_file():
        warn(f"run {run_id} has no {weights}: nothing to register in {plan.model!r}")
        return None
    else:
        tags = {k: v for k, v in tracker.get_run(run_id).tags.items() if k in KEY_TAGS}
        score = metrics.get(SCORE)
        if score is not None and math.isfinite(float(score)):
            tags[SCORE_TAG] = f"{float(score):.6g}"
        uri = tracker.log_model(run_id, weights, plan.imgsz, step=int(metrics.get("epochs", 0)))
        version = tracker.register_version(plan.model, uri, run_id, tags)
    tracker.set_alias(plan.model, CANDIDATE, version)
    tracker.set_tags(run_id, {VERSION_TAG: f"{plan.model}/{version}"})
    note = f"registered {plan.model} version {version} ({CANDIDATE})"
    if plan.promote != "auto":
        return Registration(plan.model, version, note)
    champion = tracker.alias_version(plan.model, CHAMPION)
    mine = tracker.model_version(plan.model, version)
    reason = auto_promotion(mine, champion)
    if reason is None:
        return Registration(plan.model, version, f"{note}; {CHAMPION} stays: {_why_not(mine, champion)}")
    tracker.set_alias(plan.model, CHAMPION, version)
    return Registration(plan.model, version, f"{note}; now {CHAMPION}: {reason}")


def auto_promotion(new: "ModelVersionRecord", champion: "ModelVersionRecord | None") -> str | None:
    """Why ``new`` should become champion under ``promote: auto``, or None when it should not."""
    if champion is None:
        return "there was no champion"
    if champion.version == new.version:
        return "it already is"
    if champion.tags.get(DATA_TAG) != new.tags.get(DATA_TAG):
        return None
    ours, theirs = _score(new), _score(champion)
    if ours is None:
        return None
    if theirs is None:
        return f"{SCORE} {ours:.4f}; version {champion.version} has none"
    if ours > theirs:
        return f"{SCORE} {ours:.4f} > {theirs:.4f} of version {champion.version}"
    return None


def _why_not(new: "ModelVersionRecord", champion: "ModelVersionRecord | None") -> str:
    if champion is None:
        return "no champion"
    if champion.tags.get(DATA_TAG) != new.tags.get(DATA_TAG):
        return f"version {champion.version} was measured on another data version ({champion.tags.get(DATA_TAG, '?')})"
    return f"{SCORE} {_fmt(_score(new))} does not beat {_fmt(_score(champion))} of version {champion.version}"


def promote(tracker: "Tracker", model: str, run_id: str, force: bool = False) -> Registration:
    """Move ``champion`` to the version registered from ``run_id``; refuse another data version unless ``force``."""
    versions = tracker.run_versions(model, run_id)
    if not versions:
        raise UsageError(
            f"run {run_id} has no version in registered model {model!r}: only complete trainyard trainings "
            "register one (not reproductions, not runs stopped early); check the run id and "
            "tracking.registered_model"
        )
    new = versions[-1]
    champion = tracker.alias_version(model, CHAMPION)
    if champion is not None and champion.version == new.version:
        return Registration(model, new.version, f"{model} version {new.version} already is {CHAMPION}")
    differs = champion is not None and champion.tags.get(DATA_TAG) != new.tags.get(DATA_TAG)
    if differs and not force:
        assert champion is not None
        raise PromotionRefused(
            f"not promoting run {run_id} ({model} version {new.version}): it was trained and validated on data "
            f"{new.tags.get(DATA_TAG, '?')}, the {CHAMPION} (version {champion.version}) on "
            f"{champion.tags.get(DATA_TAG, '?')}, so their {SCORE} ({_fmt(_score(new))} vs "
            f"{_fmt(_score(champion))}) are not comparable; retrain one on the other's data version, or "
            f"`trainyard promote {run_id} --force` to promote it anyway"
        )
    if differs:
        assert champion is not None
        tracker.set_version_tag(model, new.version, FORCED_TAG, f"data of version {champion.version}")
    tracker.set_alias(model, CHAMPION, new.version)
    before = f"was version {champion.version}" if champion else "there was none"
    return Registration(model, new.version, f"{model} version {new.version} is {CHAMPION} now ({before})")


def resolve_run(tracker: "Tracker", model: str, ref: str) -> str:
    """A run id from what a user may type: a run id, an alias (``champion``), or ``models:/name@alias`` / ``/version``."""
    name, alias = model, ref
    if ref.startswith("models:/"):
        name, sep, alias = ref.removeprefix("models:/").partition("@")
        if not sep:
            name, _, number = name.rpartition("/")
            found = [v for v in tracker.model_versions(name) if v.version == number]
            if not found:
                raise UsageError(f"{ref}: registered model {name!r} has no version {number}")
            return found[0].run_id
    elif looks_like_run_id(ref):
        return ref
    version = tracker.alias_version(name, alias)
    if version is None:
        raise UsageError(
            f"{ref!r} is neither an MLflow run id (32 hex characters) nor an alias of registered model {name!r}; "
            f"give a run id from `trainyard runs`, or an alias such as {CHAMPION} / {CANDIDATE}"
        )
    return version.run_id


def looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _score(version: "ModelVersionRecord") -> float | None:
    try:
        value = float(version.tags[SCORE_TAG])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"
