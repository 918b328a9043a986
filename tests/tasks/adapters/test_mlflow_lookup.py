"""The quick "up to date" lookup gives MlflowClient's answers, without mlflow, on real stores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tasks.adapters.mlflow_lookup import LookupUnavailable, StoreLookup
from tasks.adapters.mlflow_tracking import RunRecord, Tracker
from tasks.errors import TrackingError
from tasks.repro_key import same_inputs_filter, same_inputs_tags
from tests.conftest import free_port

SAME = {"data_hash": "d" * 32 + ".dir", "params_hash": "p" * 16, "env_digest": "sha256:" + "e" * 16}
OTHER = {**SAME, "params_hash": "q" * 16}


def _fill(tracker: Tracker, experiment: str) -> dict[str, str]:
    """Runs that test each part of the search; returns their ids by role."""
    client = tracker.client
    exp = client.create_experiment(experiment)
    elsewhere = client.create_experiment(experiment + "-other")
    ids: dict[str, str] = {}

    def run(role: str, start: int, values: dict[str, str], status: str, exp_id: str = exp) -> str:
        r = client.create_run(exp_id, start_time=start, run_name=f"run-{role}", tags=same_inputs_tags(values))
        client.log_param(r.info.run_id, "epochs", "3")
        client.log_metric(r.info.run_id, "mAP50-95", 0.1 * start, step=1)
        client.log_metric(r.info.run_id, "mAP50-95", 0.2 * start, step=2)  # the latest value is the answer
        client.log_metric(r.info.run_id, "lost", math.nan, step=2)
        if status != "RUNNING":
            client.set_terminated(r.info.run_id, status)
        ids[role] = r.info.run_id
        return r.info.run_id

    run("older", 1, SAME, "FINISHED")
    run("answer", 2, SAME, "FINISHED")
    run("running", 3, SAME, "RUNNING")
    run("failed", 4, SAME, "FAILED")
    run("other-params", 5, OTHER, "FINISHED")
    run("other-experiment", 6, SAME, "FINISHED", elsewhere)
    client.delete_run(run("deleted", 7, SAME, "FINISHED"))
    incomplete = run("incomplete", 8, SAME, "FINISHED")
    client.set_tag(incomplete, "trainyard.complete", "false")
    # the answer registered a version, now both candidate and champion
    client.create_registered_model("detector")
    mv = client.create_model_version("detector", source="s3://bucket/model", run_id=ids["answer"], await_creation_for=0)
    client.set_registered_model_alias("detector", "candidate", mv.version)
    client.set_registered_model_alias("detector", "champion", mv.version)
    client.set_tag(ids["answer"], "trainyard.model_version", f"detector/{mv.version}")
    return ids


def _same(a: RunRecord | None, b: RunRecord | None) -> None:
    assert a is not None and b is not None
    assert math.isnan(a.metrics.pop("lost")) and math.isnan(b.metrics.pop("lost"))
    assert a == b


def _check(uri: str, experiment: str) -> None:
    tracker = Tracker(uri)
    ids = _fill(tracker, experiment)
    lookup = StoreLookup(uri)

    found = lookup.latest_finished_run(experiment, same_inputs_tags(SAME))
    assert found is not None and found.run_id == ids["answer"], "newest FINISHED, active, complete run, same inputs"
    _same(found, tracker.latest_run(experiment, same_inputs_filter(SAME)))
    assert found.metrics["mAP50-95"] == pytest.approx(0.4)

    other = lookup.latest_finished_run(experiment, same_inputs_tags(OTHER))
    assert other is not None and other.run_id == ids["other-params"]
    _same(other, tracker.latest_run(experiment, same_inputs_filter(OTHER)))

    nothing = {**SAME, "env_digest": "sha256:new"}
    assert lookup.latest_finished_run(experiment, same_inputs_tags(nothing)) is None
    assert tracker.latest_run(experiment, same_inputs_filter(nothing)) is None
    assert lookup.latest_finished_run("no-such-experiment", same_inputs_tags(SAME)) is None

    version = found.tags["trainyard.model_version"].rpartition("/")[2]
    quick, full = lookup.model_version("detector", version), tracker.model_version("detector", version)
    assert (
        (quick.run_id, sorted(quick.aliases))
        == (full.run_id, sorted(full.aliases))
        == (
            ids["answer"],
            ["candidate", "champion"],
        )
    )


def test_a_sqlite_store_answers_as_mlflow_does(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'mlflow.db'}", "quick")


@pytest.mark.slow
def test_a_tracking_server_answers_as_mlflow_does(mlflow_server: str) -> None:
    _check(mlflow_server, "quick-rest")


def test_a_missing_sqlite_store_has_no_runs_and_is_not_created(tmp_path: Path) -> None:
    lookup = StoreLookup(f"sqlite:///{tmp_path / 'none.db'}")
    assert lookup.latest_finished_run("trainyard", same_inputs_tags(SAME)) is None
    assert not (tmp_path / "none.db").exists()


def test_stores_and_settings_it_does_not_read_are_left_to_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(LookupUnavailable):
        StoreLookup(f"file://{tmp_path}/mlruns")
    with pytest.raises(LookupUnavailable):
        StoreLookup("databricks")
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "my_plugin")  # an auth plugin only MLflow's client can run
    with pytest.raises(LookupUnavailable):
        StoreLookup("http://127.0.0.1:5000")
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    (tmp_path / "not-mlflow.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(LookupUnavailable):
        StoreLookup(f"sqlite:///{tmp_path / 'not-mlflow.db'}").latest_finished_run("x", {})


def test_an_unreachable_server_is_a_transient_tracking_error_without_its_password() -> None:
    lookup = StoreLookup(f"http://ci:s3cret@127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(TrackingError) as err:
        lookup.latest_finished_run("trainyard", same_inputs_tags(SAME))
    assert err.value.transient and "s3cret" not in str(err.value) and "not reachable" in str(err.value)
