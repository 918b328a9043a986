"""The Prefect artifact's Markdown: what a person sees for a scheduled run."""

from __future__ import annotations

from tasks.summary import RunSummary


def test_summary_shows_outcome_link_hashes_digest_and_metrics() -> None:
    text = RunSummary(
        outcome="up to date",
        run_name="yolo11n-dabc-p123",
        run_id="r1",
        run_url="http://mlflow:5000/#/experiments/1/runs/r1",
        data_hash="6db155e7.dir",
        params_hash="f" * 64,
        env_kind="docker",
        env_digest="sha256:" + "a" * 64,
        code_commit="c" * 40,
        metrics={"mAP50": 0.50951, "mAP50-95": 0.335, "epochs": 40.0},
        image="trainyard-train:latest",
        notes=("nothing changed",),
    ).markdown()
    assert "**up to date**" in text
    assert "[yolo11n-dabc-p123](http://mlflow:5000/#/experiments/1/runs/r1)" in text
    assert "| image digest | `sha256:" + "a" * 64 + "` (trainyard-train:latest) |" in text
    assert "`6db155e7.dir`" in text and "| mAP50 | 0.5095 |" in text and "| epochs | 40 |" in text
    assert text.index("mAP50-95") < text.index("| mAP50 |")
    assert "- nothing changed" in text


def test_local_runs_show_the_environment_digest_and_no_image() -> None:
    text = RunSummary(
        outcome="trained",
        run_name="n",
        run_id="r",
        run_url="u",
        data_hash="d",
        params_hash="p",
        env_kind="local",
        env_digest="sha256:e",
        code_commit="none",
    ).markdown()
    assert "| environment digest | `sha256:e` |" in text and "image" not in text
