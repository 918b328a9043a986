"""Promotion rules against a real MLflow registry (a SQLite store): which version is champion, and when not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.adapters.mlflow_tracking import Tracker
from tasks.errors import UsageError
from tasks.registry import (
    CANDIDATE,
    CHAMPION,
    FORCED_TAG,
    PromotionRefused,
    auto_promotion,
    promote,
    resolve_run,
)

MODEL = "shapes"


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def version_of(tracker: Tracker, tmp_path: Path, data: str, score: float) -> str:
    """A finished run with a registered version, as a training leaves it (the weights are not needed here)."""
    run_id = tracker.start_run("exp", f"run {data} {score}", {"trainyard.data_hash": data}, {"epochs": "1"})
    tags = {"trainyard.data_hash": data, "trainyard.mAP50-95": str(score)}
    version = tracker.register_version(MODEL, (tmp_path / "model").as_uri(), run_id, tags)
    tracker.set_alias(MODEL, CANDIDATE, version)
    return run_id


def test_promote_moves_champion_to_the_runs_version(tracker: Tracker, tmp_path: Path) -> None:
    first = version_of(tracker, tmp_path, "a.dir", 0.3)
    second = version_of(tracker, tmp_path, "a.dir", 0.2)  # a person may promote a lower score: their call
    assert "there was none" in promote(tracker, MODEL, first).note
    result = promote(tracker, MODEL, second)
    assert result.version == "2" and "was version 1" in result.note
    champion = tracker.alias_version(MODEL, CHAMPION)
    assert champion is not None and champion.run_id == second
    assert "already is" in promote(tracker, MODEL, second).note


def test_promote_refuses_a_version_validated_on_other_data_unless_forced(tracker: Tracker, tmp_path: Path) -> None:
    old = version_of(tracker, tmp_path, "a.dir", 0.3)
    new = version_of(tracker, tmp_path, "b.dir", 0.9)
    promote(tracker, MODEL, old)
    with pytest.raises(PromotionRefused) as refused:
        promote(tracker, MODEL, new)
    message = str(refused.value)
    assert "b.dir" in message and "a.dir" in message and f"trainyard promote {new} --force" in message
    assert refused.value.exit_code == 2
    assert tracker.alias_version(MODEL, CHAMPION).run_id == old  # type: ignore[union-attr]  # nothing moved
    promote(tracker, MODEL, new, force=True)
    champion = tracker.alias_version(MODEL, CHAMPION)
    assert champion is not None and champion.run_id == new and champion.tags[FORCED_TAG] == "data of version 1"


def test_a_run_without_a_version_cannot_be_promoted(tracker: Tracker, tmp_path: Path) -> None:
    version_of(tracker, tmp_path, "a.dir", 0.3)
    bare = tracker.start_run("exp", "reproduction", {}, {})
    with pytest.raises(UsageError, match="no version in registered model 'shapes'"):
        promote(tracker, MODEL, bare)


def test_auto_promotion_needs_the_same_data_and_a_better_score(tracker: Tracker, tmp_path: Path) -> None:
    for data, score in (("a.dir", 0.3), ("a.dir", 0.4), ("a.dir", 0.35), ("b.dir", 0.9)):
        version_of(tracker, tmp_path, data, score)
    v1, v2, v3, v4 = tracker.model_versions(MODEL)
    assert auto_promotion(v1, None) == "there was no champion"
    assert auto_promotion(v2, v1) == "mAP50-95 0.4000 > 0.3000 of version 1"
    assert auto_promotion(v3, v2) is None  # worse
    assert auto_promotion(v4, v2) is None  # better, but on other data: not comparable


def test_an_alias_or_model_uri_stands_for_the_run_it_came_from(tracker: Tracker, tmp_path: Path) -> None:
    first = version_of(tracker, tmp_path, "a.dir", 0.3)
    second = version_of(tracker, tmp_path, "a.dir", 0.4)
    promote(tracker, MODEL, first)
    assert resolve_run(tracker, MODEL, CHAMPION) == first
    assert resolve_run(tracker, MODEL, CANDIDATE) == second
    assert resolve_run(tracker, MODEL, f"models:/{MODEL}@champion") == first
    assert resolve_run(tracker, MODEL, f"models:/{MODEL}/2") == second
    assert resolve_run(tracker, MODEL, second) == second  # a run id is a run id
    with pytest.raises(UsageError, match="neither an MLflow run id"):
        resolve_run(tracker, MODEL, "chmpion")


def test_registering_leaves_the_processs_tracking_settings_as_they_were(
    tracker: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    version_of(tracker, tmp_path, "a.dir", 0.3)  # MLflow's registry needs the process-wide URI set
    assert "MLFLOW_TRACKING_URI" not in os.environ  # else every later command would track into that store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user-choice:5000")
    version_of(tracker, tmp_path, "a.dir", 0.4)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://user-choice:5000"


def test_a_logged_models_version_link_is_written_once(tracker: Tracker, tmp_path: Path) -> None:
    """The runs table's Models column reads ``mlflow.modelVersions`` on the logged model; a local store
    gets it from trainyard (a server writes it itself: test_train_flow checks there is one entry)."""
    import json

    run_id = tracker.start_run("exp", "r", {}, {})
    experiment_id = tracker.get_run(run_id).experiment_id
    model = tracker.client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
    version = tracker.register_version(MODEL, f"models:/{model.model_id}", run_id, {})
    tracker._link_version(model.model_id, MODEL, version)  # a repeated finish
    tags = tracker.client.get_logged_model(model.model_id).tags
    assert json.loads(tags["mlflow.modelVersions"]) == [{"name": MODEL, "version": int(version)}]


@pytest.mark.slow
def test_register_run_under_auto_promotes_only_a_better_model_on_the_same_data(
    tracker: Tracker, tmp_path: Path
) -> None:
    """The flow's finish step (register_run) with ``promote: auto``, each run with its own weights file."""
    from tasks.registry import RegistryPlan, register_run

    plan = RegistryPlan(model=MODEL, promote="auto", imgsz=64)
    notes: list[str] = []

    def trained(score: float, data: str = "a.dir") -> str:
        run_id = tracker.start_run("exp", f"run {score}", {"trainyard.data_hash": data, "trainyard.key": "k"}, {})
        weights = tmp_path / run_id / "weights"
        weights.mkdir(parents=True)
        (weights / "best.pt").write_bytes(b"not a real checkpoint: only copied, never loaded here")
        registration = register_run(
            tracker, run_id, tmp_path / run_id, plan, {"mAP50-95": score, "epochs": 1}, notes.append
        )
        assert registration is not None
        assert tracker.alias_version(MODEL, CANDIDATE).run_id == run_id  # type: ignore[union-attr]
        return run_id

    first = trained(0.30)
    assert tracker.alias_version(MODEL, CHAMPION).run_id == first  # type: ignore[union-attr]  # none before
    trained(0.25)  # worse
    trained(0.90, data="b.dir")  # other data: not comparable
    assert tracker.alias_version(MODEL, CHAMPION).run_id == first  # type: ignore[union-attr]
    best = trained(0.35)
    assert tracker.alias_version(MODEL, CHAMPION).run_id == best  # type: ignore[union-attr]
    again = register_run(tracker, best, tmp_path / best, plan, {"mAP50-95": 0.35, "epochs": 1}, notes.append)
    assert again is not None and again.version == "4" and len(tracker.model_versions(MODEL)) == 4  # no new version
    assert tracker.get_run(best).tags["trainyard.model_version"] == f"{MODEL}/4"
