"""Reproduce a run from its MLflow record and prove it: compare per-epoch metrics, name what changed.

A verdict is one of: **identical** (every metric of every replayed epoch bit-equal),
**within tolerance** (all within ``rtol``/``atol``), or **differs** (with the first epoch and
metric that differ). Alongside, the reproduction key of both runs is compared so the user
learns which input changed (data, params, image/environment, code, seed), if any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tasks.errors import RunnerError
from tasks.repro_key import ReproKey
from tasks.adapters.mlflow_tracking import RunRecord, Tracker

# Per-epoch metric prefixes (Ultralytics' results.csv columns as logged by trainyard).
EPOCH_PREFIXES = ("train/", "val/", "metrics/", "lr/")

IDENTICAL, WITHIN, DIFFERS = "identical", "within tolerance", "differs"
_RANK = {IDENTICAL: 0, WITHIN: 1, DIFFERS: 2}


@dataclass(frozen=True)
class Record:
    """What a run holds that a reproduction needs."""

    run: RunRecord
    key: ReproKey
    params_yaml: str
    histories: dict[str, list[tuple[int, float]]]

    @property
    def epochs(self) -> int:
        return max((step for hist in self.histories.values() for step, _ in hist), default=0)


@dataclass(frozen=True)
class Verdict:
    kind: str
    epochs: int
    first_difference: tuple[int, str, float, float] | None  # epoch, metric, original, reproduction
    changed_inputs: list[str]
    rows: list[tuple[int, str, float, float, float]] = field(default_factory=list)  # epoch, metric, a, b, |a-b|

    def summary(self) -> str:
        text = f"{self.kind} over {self.epochs} epoch(s)"
        if self.first_difference:
            epoch, metric, a, b = self.first_difference
            text += f"; first difference: epoch {epoch}, {metric}: {a!r} -> {b!r}"
        text += "; changed inputs: " + (", ".join(self.changed_inputs) if self.changed_inputs else "none")
        return text

    def table(self) -> str:
        lines = [
            f"# Reproduction verdict: {self.kind}",
            "",
            self.summary(),
            "",
            "| epoch | metric | original | reproduction | abs diff |",
            "|---:|---|---:|---:|---:|",
        ]
        lines += [f"| {e} | {m} | {a!r} | {b!r} | {d:.3g} |" for e, m, a, b, d in self.rows]
        return "\n".join(lines) + "\n"


def read_record(tracker: Tracker, run_id: str) -> Record:
    """The run's key, resolved params.yaml and per-epoch metric histories (TrackingError if absent)."""
    run = tracker.get_run(run_id)
    key = ReproKey.from_tags(run.tags, run_id)
    params_yaml = tracker.read_artifact_text(run_id, "params.yaml")
    names = [k for k in run.metrics if k.startswith(EPOCH_PREFIXES)]
    return Record(run, key, params_yaml, {k: tracker.metric_history(run_id, k) for k in names})


def compare(
    original: dict[str, list[tuple[int, float]]],
    reproduction: dict[str, list[tuple[int, float]]],
    epochs: int,
    rtol: float = 0.0,
    atol: float = 0.0,
    key_a: ReproKey | None = None,
    key_b: ReproKey | None = None,
) -> Verdict:
    """Compare the first ``epochs`` epochs of every metric the original logged."""
    rows: list[tuple[int, str, float, float, float]] = []
    first: tuple[int, str, float, float] | None = None
    worst = IDENTICAL
    for epoch in range(1, epochs + 1):
        for metric in sorted(original):
            a = dict(original[metric]).get(epoch)
            b = dict(reproduction.get(metric, [])).get(epoch)
            if a is None:
                continue
            if b is None:
                kind, diff = DIFFERS, math.inf
            elif a == b or (math.isnan(a) and math.isnan(b)):
                continue
            else:
                diff = abs(a - b)
                kind = WITHIN if diff <= atol + rtol * abs(a) else DIFFERS
            rows.append((epoch, metric, a, float("nan") if b is None else b, diff))
            if kind == DIFFERS and first is None:
                first = (epoch, metric, a, float("nan") if b is None else b)
            worst = max(worst, kind, key=_RANK.__getitem__)
    changed = key_a.differences(key_b) if key_a and key_b else []
    return Verdict(worst, epochs, first, changed, rows)


def image_for_reproduction(image: str, digest: str, allow_drift: bool, pull: bool) -> tuple[str, dict[str, str]]:
    """The image to run: the recorded digest, unless the recorded tag has moved (refused, or --allow-drift)."""
    from tasks.adapters.docker_engine import docker_client, resolve_image

    client = docker_client()
    try:
        now = resolve_image(client, image, pull=pull).digest
    except RunnerError:
        now = None
    if now == digest:
        return digest, {}
    if not allow_drift:
        raise RunnerError(
            f"image {image!r} was {digest} when the run was made and is now {now or 'gone'}; reproduce needs "
            "that digest (rebuild or pull it), or pass --allow-drift to run the current one and record the drift"
        )
    return image, {"trainyard.drift.image": f"{digest} -> {now}"}
