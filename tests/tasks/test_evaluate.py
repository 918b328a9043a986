"""tasks.evaluate: the best epoch is the one Ultralytics keeps in best.pt, by its own fitness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tasks.evaluate import FINAL_KEYS, FITNESS_WEIGHTS, fitness, summarize
from tasks.job import TrainJob
from tests.conftest import copy_dataset
from tests.tasks.adapters.test_ultralytics_trainer import ARGS, child_env, train

# The header of a real YOLO11 detect run's results.csv (Ultralytics 8.4).
HEADER = (
    "epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),metrics/recall(B),"
    "metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,val/dfl_loss,lr/pg0,lr/pg1,lr/pg2"
)

# Runs the training entry point with a callback that logs, after every checkpoint save, the epoch
# best.pt then holds: the finished best.pt cannot say, as Ultralytics' strip_optimizer sets its
# "epoch" to -1.
LOG_BEST_PT_EPOCH = """
import json, os, runpy, sys, torch
from ultralytics.utils.callbacks.base import default_callbacks

def log(trainer):
    with open(os.environ["BEST_PT_LOG"], "a") as f:
        f.write(json.dumps(torch.load(trainer.best, weights_only=False)["epoch"]) + "\\n")

default_callbacks["on_model_save"].append(log)
sys.argv = ["tasks.adapters.ultralytics_trainer", sys.argv[1]]
runpy.run_module("tasks.adapters.ultralytics_trainer", run_name="__main__")
"""


def write_results(run_dir: Path, metrics: list[tuple[float, float, float, float]]) -> Path:
    """results.csv with one row per epoch of (precision, recall, mAP50, mAP50-95)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [HEADER] + [
        ",".join(["%.6g" % v for v in (epoch, 1.5 * epoch, 1.2, 1.1, 1.0, *m, 1.3, 1.2, 1.1, 0.01, 0.01, 0.01)])
        for epoch, m in enumerate(metrics, start=1)
    ]
    (run_dir / "results.csv").write_text("\n".join(lines) + "\n")
    return run_dir


ROWS = [
    (0.5, 0.4, 0.3, 0.2),
    (0.9, 0.8, 0.7, 0.6),
    (0.0, 0.0, 0.0, 0.0),
    (math.nan, math.nan, math.nan, math.nan),
    (0.7, math.nan, 0.5, math.nan),
    (math.nan, 0.2, math.nan, 0.35),
    (1.0, 1.0, 1.0, 1.0),
]


def ultralytics_fitness(values: tuple[float, float, float, float]) -> float:
    """Fitness of one validation's mean (P, R, mAP50, mAP50-95), computed by the installed Ultralytics."""
    from ultralytics.utils.metrics import DetMetrics

    metrics = DetMetrics(names={0: "shape"})
    metrics.box.mean_results = lambda: list(values)  # what a validation would have averaged
    return float(metrics.fitness)


def test_fitness_weights_and_columns_are_those_of_the_installed_ultralytics() -> None:
    from ultralytics.utils.metrics import DetMetrics

    keys = DetMetrics().keys  # results.csv columns, in mean_results() order
    assert set(FINAL_KEYS) == set(keys)
    unit = [tuple(float(i == j) for j in range(len(keys))) for i in range(len(keys))]
    assert FITNESS_WEIGHTS == {key: ultralytics_fitness(u) for key, u in zip(keys, unit, strict=True)}


@pytest.mark.parametrize("values", ROWS, ids=str)
def test_fitness_equals_ultralytics_fitness(values: tuple[float, float, float, float]) -> None:
    from ultralytics.utils.metrics import DetMetrics

    row = dict(zip(DetMetrics().keys, values, strict=True))
    assert fitness(row) == pytest.approx(ultralytics_fitness(values), abs=1e-12)


def test_best_epoch_follows_map50_95_not_the_old_mixed_fitness(tmp_path: Path) -> None:
    # Epoch 2 wins under the old 0.1 * mAP50 + 0.9 * mAP50-95 (0.231 > 0.21); Ultralytics now
    # ranks by mAP50-95 alone, where epoch 1 wins. Epoch 4's NaNs rank as 0.
    run_dir = write_results(
        tmp_path,
        [(0.5, 0.5, 0.30, 0.20), (0.6, 0.6, 0.60, 0.19), (0.4, 0.4, 0.20, 0.10), (math.nan, 0.1, math.nan, math.nan)],
    )
    summary = summarize(run_dir)
    assert summary["best_epoch"] == 1 and summary["epochs"] == 4


def test_of_tied_epochs_the_last_is_best_as_best_pt_is_rewritten_on_a_tie(tmp_path: Path) -> None:
    run_dir = write_results(
        tmp_path,
        [(0.5, 0.5, 0.5, 0.1), (0.5, 0.5, 0.9, 0.3), (0.5, 0.5, 0.5, 0.2), (0.1, 0.1, 0.1, 0.3), (0.5, 0.5, 0.5, 0.25)],
    )
    assert summarize(run_dir)["best_epoch"] == 4


def test_a_run_without_results_has_no_best_epoch(tmp_path: Path) -> None:
    assert "best_epoch" not in summarize(tmp_path)


@pytest.mark.slow
def test_best_epoch_is_the_epoch_ultralytics_saved_to_best_pt(tmp_path: Path, tiny_dataset: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = tmp_path / "best_pt_epochs.log"
    data = copy_dataset(tiny_dataset, tmp_path / "data")  # Ultralytics writes labels/*.cache beside the labels
    job = TrainJob(run_dir=str(run_dir), data_yaml=str(data / "data.yaml"), args=ARGS)
    proc = train(job, child_env(tmp_path, BEST_PT_LOG=str(log)), LOG_BEST_PT_EPOCH)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    saved = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(saved) == ARGS["epochs"]
    # A run this small usually scores 0 at every epoch, so this also checks the tie rule.
    # checkpoints count epochs from 0, results.csv from 1
    assert summarize(run_dir)["best_epoch"] == saved[-1] + 1
