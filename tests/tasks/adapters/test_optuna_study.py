"""tasks/adapters/optuna_study.py against real Optuna storages (SQLite files)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from tasks.adapters.optuna_study import Study
from tasks.errors import SweepError


def _open_at(storage: str, start: float) -> str:
    while time.time() < start:  # all processes create the database in the same instant
        time.sleep(0.001)
    try:
        Study.open(storage, "shared", "maximize")
    except SweepError as exc:
        return str(exc)
    return "ok"


def test_sweep_processes_started_together_on_a_new_database_all_open_the_study(tmp_path: Path) -> None:
    # Before the retry, 5 of 8 such rounds had a process fail with "table ... already exists"
    # or a duplicate alembic_version row: both had created Optuna's tables at once.
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        storage = f"sqlite:///{tmp_path / f'optuna-{round_}.db'}"
        start = time.time() + 4  # after the spawned interpreters have imported Optuna
        with ctx.Pool(3) as pool:
            results = pool.starmap(_open_at, [(storage, start)] * 3)
        assert results == ["ok"] * 3


def test_a_study_made_to_maximize_is_not_reopened_to_minimize(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    Study.open(storage, "s", "maximize")
    with pytest.raises(SweepError, match="created to maximize its objective, not to minimize; set sweep.study"):
        Study.open(storage, "s", "minimize")


def test_an_unusable_storage_url_names_the_valid_form(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"cannot open the Optuna study 's' at nosuchdb://x.*postgresql://"):
        Study.open("nosuchdb://x", "s", "maximize")
