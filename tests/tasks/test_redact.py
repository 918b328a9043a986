"""Passwords in endpoint URLs never reach messages, logs or records."""

from __future__ import annotations

import logging

import pytest

from tasks.redact import RedactingFilter, redact, split_userinfo


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://ci:s3cret@mlflow:5000", "http://ci:***@mlflow:5000"),
        ("MLflow at https://a:b%40c@host/x failed", "MLflow at https://a:***@host/x failed"),
        ("s3 http://key:secret@minio:9000 and http://u:p@h", "s3 http://key:***@minio:9000 and http://u:***@h"),
        ("http://mlflow:5000 (no password)", "http://mlflow:5000 (no password)"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_passwords_in_urls_are_masked(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_userinfo_is_split_off_for_a_client_that_cannot_read_it() -> None:
    assert split_userinfo("http://ci:p%40ss@h:5/x") == ("http://h:5/x", "ci", "p@ss")
    assert split_userinfo("http://h:5") == ("http://h:5", None, None)


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redact")
    handler_filter = RedactingFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        logger.warning("tracking at %s", "http://ci:s3cret@h:5000")
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert "s3cret" not in caplog.text and "ci:***@h:5000" in caplog.text
