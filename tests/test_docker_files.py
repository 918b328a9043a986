"""The image recipe and the team stack, checked as files (no registry here to pull bases)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO


def test_compose_stack_has_tracking_orchestration_and_storage_without_inline_secrets() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"mlflow", "prefect", "minio", "postgres"} <= set(services)
    assert any("5000" in p for p in services["mlflow"]["ports"]) and any(
        "4200" in p for p in services["prefect"]["ports"]
    )
    text = (REPO / "docker" / "compose.yaml").read_text()
    for line in text.splitlines():
        m = re.search(r"(PASSWORD|SECRET_ACCESS_KEY|ROOT_PASSWORD)\s*[:=]\s*(\S+)", line)
        if m:
            assert m.group(2).startswith(("${", '"${')), f"secret not from the environment: {line.strip()}"


def test_training_image_recipe_is_by_base_arg_non_root_and_labelled() -> None:
    text = (REPO / "docker" / "train.Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:\S+-runtime$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users[-1] not in ("root", "0"), "the final stage must run as a non-root user"
    assert 'ENTRYPOINT ["python", "-m", "tasks.adapters.ultralytics_trainer"]' in text
    assert "org.trainyard.cuda" in text and "org.opencontainers.image.version" in text
