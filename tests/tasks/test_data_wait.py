"""tasks.data_wait: the data-starvation verdict from the per-epoch wait figures a training records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.data_wait import IMAGES_PER_S, LOOP_S, STARVED_PCT, WAIT_PCT, WAIT_S, diagnose, diagnose_run
from tasks.job import OUTCOME_FILE, append_epoch


def epoch(wait_s: float, loop_s: float, images: int = 64) -> dict[str, float]:
    return {
        "train/box_loss": 1.0,
        WAIT_S: wait_s,
        LOOP_S: loop_s,
        WAIT_PCT: 100 * wait_s / loop_s,
        IMAGES_PER_S: images / loop_s,
    }


def test_a_loop_waiting_41_percent_for_batches_is_data_starved_with_the_knobs_to_turn() -> None:
    runtime = {"workers": 2, "cache": "False", "data_dir": "/mnt/nfs/coco", "data_fs": "nfs4"}
    verdict = diagnose({1: epoch(9.0, 10.0), 2: epoch(4.1, 10.0), 3: epoch(4.1, 10.0)}, runtime)
    assert verdict is not None and verdict.starved
    assert verdict.wait_pct == pytest.approx(41.0) and verdict.epochs == 2  # epoch 1 (worker start-up) left out
    assert verdict.images_per_s == pytest.approx(6.4)
    assert verdict.text.startswith("data-starved: 41 % of step time waiting for batches, 6.4 images/s over 2 epochs")
    assert "(workers=2, cache=False, data on /mnt/nfs/coco (nfs4))" in verdict.text
    assert "stage the data to local SSD or tmpfs" in verdict.text
    assert "raise train.workers" in verdict.text and "train.cache=ram" in verdict.text


def test_below_the_thresholds_the_verdict_says_so() -> None:
    quiet = diagnose({1: epoch(0.2, 10.0), 2: epoch(0.2, 10.0)})
    assert quiet is not None and not quiet.starved and quiet.text.startswith("not data-starved: 2 %")
    some = diagnose({1: epoch(1.0, 10.0)})  # one epoch: it is all there is
    assert some is not None and not some.starved and some.text.startswith("some data wait: 10 %")
    edge = diagnose({1: epoch(STARVED_PCT / 10, 10.0)}, {"cache": "ram", "data_fs": "ext4"})
    assert edge is not None and edge.starved and "train.cache" not in edge.text and "stage to tmpfs" in edge.text


def test_no_figures_no_verdict(tmp_path: Path) -> None:
    assert diagnose({1: {"train/box_loss": 1.0}, 2: {"train/box_loss": 0.9}}) is None
    assert diagnose_run(tmp_path) is None  # no epochs.jsonl (a run of an older build, back-filled from results.csv)


def test_the_run_directory_is_read_as_the_training_left_it(tmp_path: Path) -> None:
    for n, (wait, loop) in enumerate([(5.0, 6.0), (3.0, 6.0), (3.0, 6.0)], start=1):
        append_epoch(tmp_path, n, epoch(wait, loop))
    runtime = {"workers": 0, "cache": "False", "data_dir": str(tmp_path), "data_fs": "tmpfs"}
    outcome = {"epochs": 3, "best": None, "last": None, "final_metrics": {}, "runtime": runtime}
    (tmp_path / OUTCOME_FILE).write_text(json.dumps(outcome))
    verdict = diagnose_run(tmp_path)
    assert verdict is not None and verdict.starved and verdict.wait_pct == pytest.approx(50.0)
    assert f"workers=0, cache=False, data on {tmp_path} (tmpfs)" in verdict.text
