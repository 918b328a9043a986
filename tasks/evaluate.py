"""Evaluation outputs for DVC: metrics.json (``dvc metrics show``) and the per-epoch plot data."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.track import read_results_csv
from tasks.train import TrainOutcome

# Ultralytics' result keys -> the short names users compare in `dvc metrics diff`.
_FINAL_KEYS = {
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
}


def summarize(run_dir: Path) -> dict[str, float | int]:
    """Final metrics of a finished run directory.

    The final numbers are Ultralytics' validation of best.pt (what a user deploys), not
    the last epoch; the best epoch is the one with the highest fitness, as Ultralytics
    picks it (0.1 * mAP50 + 0.9 * mAP50-95).
    """
    rows = read_results_csv(run_dir / "results.csv")
    outcome = TrainOutcome.read(run_dir)
    final_src = dict(outcome.final_metrics) if outcome and outcome.final_metrics else (dict(rows[-1]) if rows else {})
    summary: dict[str, float | int] = {
        short: round(float(final_src[key]), 5) for key, short in _FINAL_KEYS.items() if key in final_src
    }
    if rows:
        def fitness(row: dict[str, float]) -> float:
            return 0.1 * row.get("metrics/mAP50(B)", 0.0) + 0.9 * row.get("metrics/mAP50-95(B)", 0.0)

        best = max(rows, key=fitness)
        summary["best_epoch"] = int(best["epoch"])
        summary["epochs"] = int(rows[-1]["epoch"])
    return summary


def write_metrics(run_dir: Path, dest: Path) -> dict[str, float | int]:
    summary = summarize(run_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
