"""The Kubernetes Job check against the API schema of the kubernetes client (no cluster here)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tasks.errors import DeploymentError
from tasks.adapters.kubernetes_manifest import validate_job_manifest


def _job(**pod: Any) -> dict[str, Any]:
    spec = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "train",
                "image": "trainyard-train@sha256:" + "0" * 64,
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }
        ],
        **pod,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"generateName": "train-"},
        "spec": {"backoffLimit": 0, "template": {"spec": spec}},
    }


def test_a_valid_job_comes_back_as_the_clients_v1job_with_quantities_as_the_api_reads_them() -> None:
    manifest = _job(volumes=[{"name": "stage", "emptyDir": {"medium": "Memory", "sizeLimit": 64}}])
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 2

    job = validate_job_manifest(manifest)

    pod = job.spec.template.spec
    assert pod.containers[0].resources.limits == {"nvidia.com/gpu": "2"}  # a JSON number is a valid quantity
    assert pod.volumes[0].empty_dir.size_limit == "64"
    assert manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_a_typo_is_refused_with_its_path_and_the_field_it_meant() -> None:
    manifest = _job()
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["resouces"] = container.pop("resources")
    manifest["spec"]["template"]["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "efect": "NoSchedule"}]

    with pytest.raises(DeploymentError) as err:
        validate_job_manifest(manifest, source="gpu.json")

    message = str(err.value)
    assert message.startswith("gpu.json is not a valid Kubernetes Job")
    assert "spec.template.spec.containers[0].resouces: unknown field; did you mean 'resources'?" in message
    assert "kubectl explain job.spec.template.spec.containers" in message
    assert (
        "spec.template.spec.tolerations[0].efect: unknown field; did you mean 'effect'? "
        "(V1Toleration fields: effect, key, operator, tolerationSeconds, value)"
    ) in message


def test_wrong_types_and_missing_required_fields_are_all_listed_with_their_paths() -> None:
    manifest = _job()
    pod = manifest["spec"]["template"]["spec"]
    pod["containers"][0]["args"] = "prefect flow-run execute"  # a string where the API takes a list
    pod["containers"][0]["resources"]["limits"]["memory"] = ["8Gi"]
    pod["containers"].append({"image": "sidecar:1"})  # no name
    pod["nodeSelector"] = ["gpu"]

    with pytest.raises(DeploymentError) as err:
        validate_job_manifest(manifest)

    message = str(err.value)
    assert (
        "spec.template.spec.containers[0].args: input should be a valid list (got 'prefect flow-run execute')"
        in message
    )
    assert "spec.template.spec.containers[0].resources.limits.memory: input should be a valid string" in message
    assert "spec.template.spec.containers[1].name: required field missing" in message
    assert "spec.template.spec.nodeSelector: input should be a valid dictionary" in message


def test_map_keys_that_are_not_identifiers_are_quoted_in_the_path() -> None:
    manifest = _job()
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = True

    with pytest.raises(
        DeploymentError, match=r"resources\.limits\['nvidia\.com/gpu'\]: input should be a valid string"
    ):
        validate_job_manifest(manifest)


def test_a_volume_takes_exactly_one_source_and_null_means_unset() -> None:
    both = _job(volumes=[{"name": "stage", "emptyDir": {}, "hostPath": {"path": "/mnt/nvme/stage"}}])
    with pytest.raises(DeploymentError, match=r"volumes\[0\] \(stage\): sets 2 volume sources \(emptyDir, hostPath\)"):
        validate_job_manifest(both)

    host_only = _job(volumes=[{"name": "stage", "emptyDir": None, "hostPath": {"path": "/mnt/nvme/stage"}}])
    assert validate_job_manifest(host_only).spec.template.spec.volumes[0].host_path.path == "/mnt/nvme/stage"


def test_only_the_named_paths_are_ignored_and_kind_must_be_a_batch_v1_job() -> None:
    manifest = _job(parallelism=1, completions=1)
    with pytest.raises(DeploymentError, match=r"spec\.template\.spec\.parallelism: unknown field"):
        validate_job_manifest(manifest)
    assert validate_job_manifest(
        copy.deepcopy(manifest), ignore=("spec.template.spec.parallelism", "spec.template.spec.completions")
    )

    manifest["apiVersion"], manifest["kind"] = "v1", "Pod"
    with pytest.raises(DeploymentError, match="a Job is batch/v1 / Job"):
        validate_job_manifest(manifest, ignore=("spec.template.spec.parallelism", "spec.template.spec.completions"))
