"""Evaluation outputs for DVC: metrics.json (``dvc metrics show``) and the per-epoch plot data."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

from tasks.adapters.mlflow_tracking import read_results_csv
from tasks.job import TrainOutcome

# Ultralytics' result keys -> the short names users compare in `dvc metrics diff`.
FINAL_KEYS = {
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
}

# The names of summarize()'s numbers: metrics.json's keys, and the MLflow metrics that hold best.pt's
# final values. Unprefixed on purpose: the MLflow UI sorts chart sections by the part before "/"
# and puts unprefixed metrics last, so a run page opens on the per-epoch curves (lr, metrics,
# train, val) and these single points follow; the runs table shows them as columns under the
# same names as `dvc metrics show`.
FINAL_METRICS = ("mAP50-95", "mAP50", "precision", "recall", "best_epoch", "epochs")


def final_metrics(run_metrics: Mapping[str, float]) -> dict[str, float | int]:
    """best.pt's final values among an MLflow run's metrics (runs of earlier builds logged ``final/<name>``)."""
    return {k.removeprefix("final/"): v for k, v in run_metrics.items() if k.removeprefix("final/") in FINAL_METRICS}


# Ultralytics' Metric.fitness weights, keyed by the results.csv column of each weighted metric.
# Copied, not imported: ultralytics pulls in torch and this runs in the flow process;
# tests/tasks/test_evaluate.py compares them with the installed package.
FITNESS_WEIGHTS: dict[str, float] = {
    "metrics/precision(B)": 0.0,
    "metrics/recall(B)": 0.0,
    "metrics/mAP50(B)": 0.0,
    "metrics/mAP50-95(B)": 1.0,
}


def fitness(row: Mapping[str, float]) -> float:
    """Ultralytics' fitness of one results.csv row (a missing column counts as 0)."""
    return sum(weight * _nan_to_num(row.get(key, 0.0)) for key, weight in FITNESS_WEIGHTS.items())


def _nan_to_num(value: float) -> float:
    # As numpy.nan_to_num, which Ultralytics applies: an epoch whose validation found nothing
    # (NaN) ranks as 0 rather than poisoning the comparison; inf stays finite so 0 * inf is 0.
    if math.isnan(value):
        return 0.0
    return max(-sys.float_info.max, min(sys.float_info.max, value))


def best_epoch(rows: Sequence[Mapping[str, float]]) -> int | None:
    """The epoch whose weights Ultralytics left in best.pt, from its results.csv rows.

    The last epoch with the highest fitness, not the first: the trainer rewrites best.pt at
    every epoch whose fitness equals the best so far. (results.csv keeps 6 significant
    digits, so epochs that differed only beyond that read as tied.)
    """
    best: Mapping[str, float] | None = None
    for row in rows:
        if best is None or fitness(row) >= fitness(best):
            best = row
    return None if best is None else int(best["epoch"])


def summarize(run_dir: Path) -> dict[str, float | int]:
    """Final metrics of a finished run directory.

    The final numbers are Ultralytics' validation of best.pt (what a user deploys), not the
    last epoch; ``best_epoch`` (1-based, as in results.csv) is the epoch best.pt holds.
    """
    rows = read_results_csv(run_dir / "results.csv")
    outcome = TrainOutcome.read(run_dir)
    final_src = dict(outcome.final_metrics) if outcome and outcome.final_metrics else (dict(rows[-1]) if rows else {})
    summary: dict[str, float | int] = {
        short: round(float(final_src[key]), 5) for key, short in FINAL_KEYS.items() if key in final_src
    }
    best = best_epoch(rows)
    if best is not None:
        summary["best_epoch"] = best
        summary["epochs"] = int(rows[-1]["epoch"])
    return summary


def write_metrics(run_dir: Path, dest: Path) -> dict[str, float | int]:
    summary = summarize(run_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
