"""prefect.yaml as `trainyard serve` reads it: the shipped file, and bad files failing with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.deployments import PROCESS_POOL, read_deployments, select
from tasks.errors import DeploymentError
from tests.conftest import REPO


def _write(tmp_path: Path, deployments: object) -> Path:
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "deployments": deployments}))
    return path


def test_the_shipped_prefect_yaml_has_a_nightly_cron_in_a_timezone_and_a_reproduce_deployment() -> None:
    specs = {s.name: s for s in read_deployments(REPO / "prefect.yaml")}
    nightly = specs["nightly-train"]
    assert nightly.entrypoint == "flows/train.py:train_flow"
    assert nightly.schedules[0]["cron"] == "0 2 * * *" and nightly.schedules[0]["timezone"]
    assert nightly.parameters["force"] is False
    assert nightly.concurrency_limit == 1
    assert specs["reproduce"].entrypoint == "flows/reproduce.py:reproduce_flow"
    assert specs["reproduce"].module == "flows.reproduce" and specs["reproduce"].function == "reproduce_flow"
    served = {s.name for s in select(list(specs.values()), [])}
    assert {"nightly-train", "train", "reproduce"} <= served
    assert all(specs[n].work_pool == PROCESS_POOL for n in served)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ({"cron": "0 2 * * *", "interval": 60}, "exactly one of cron, interval, rrule"),
        ({"timezone": "UTC"}, "exactly one of cron, interval, rrule"),
        ({"interval": -5}, "interval must be a number of seconds > 0"),
        ({"interval": "hourly"}, "interval must be a number of seconds > 0"),
        ({"cron": "0 2 * * *", "timezone": "Berlin/Europe"}, "not an IANA name"),
        ({"cron": "0 2 * * *", "tz": "UTC"}, "unknown key 'tz'"),
    ],
)
def test_a_bad_schedule_names_the_deployment_and_the_valid_form(tmp_path: Path, schedule: dict, expected: str) -> None:
    path = _write(tmp_path, [{"name": "nightly", "entrypoint": "flows/train.py:train_flow", "schedules": [schedule]}])
    with pytest.raises(DeploymentError) as err:
        read_deployments(path)
    assert expected in str(err.value) and "'nightly'" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "deployments, expected",
    [
        ([{"name": "a", "entrypoint": "flows.train.train_flow"}], "must look like flows/train.py:train_flow"),
        ([{"name": "a", "entrypoint": "flows/train.py:train_flow", "paramters": {}}], "unknown key 'paramters'"),
        ([{"name": "a", "entrypoint": "flows/train.py:train_flow"}] * 2, "two deployments are named 'a'"),
        ([{"entrypoint": "flows/train.py:train_flow"}], "`name` must be a non-empty string"),
        ([], "non-empty list"),
        (
            [{"name": "a", "entrypoint": "flows/train.py:train_flow", "schedule": {"cron": "0 2 * * *"}}],
            "unknown key 'schedule'; valid keys: .*schedules",
        ),
        ([{"name": "a", "entrypoint": "flows/train.py:train_flow", "paused": "yes"}], "`paused` must be true or false"),
    ],
)
def test_a_bad_deployment_is_refused(tmp_path: Path, deployments: list, expected: str) -> None:
    with pytest.raises(DeploymentError, match=expected):
        read_deployments(_write(tmp_path, deployments))


def test_select_by_name_and_unknown_names(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {"name": "box", "entrypoint": "flows/train.py:train_flow", "work_pool": {"name": PROCESS_POOL}},
            {"name": "k8s", "entrypoint": "flows/train.py:train_flow", "work_pool": {"name": "trainyard-k8s"}},
        ],
    )
    specs = read_deployments(path)
    assert [s.name for s in select(specs, [])] == ["box"]  # the cluster deployment needs its worker
    assert [s.name for s in select(specs, ["k8s"])] == ["k8s"]
    with pytest.raises(DeploymentError, match="no deployment named 'nightly'; valid: box, k8s"):
        select(specs, ["nightly"])


def test_a_missing_file_says_what_serve_reads(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="reads the deployments from a prefect.yaml"):
        read_deployments(tmp_path / "prefect.yaml")
