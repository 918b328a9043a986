"""The work pool templates of docker/pools/, rendered exactly as Prefect's workers render them.

This lives in flows/ because it is Prefect, not trainyard logic: the prefect-docker and
prefect-kubernetes workers' own job configuration classes fill a base job template with a
deployment's job variables and prepare it for a flow run, as a worker does before it
starts a container or creates a Job. The Kubernetes result is then checked against the
API schema by tasks/adapters/kubernetes_manifest.py (the kubernetes client seam).

    python -m flows.pools docker/pools/kubernetes-gpu.json '{"gpus": 2}'

prints the Job a worker would create (or the docker-py create arguments for a docker
template) and exits 2 with every problem listed when it is invalid.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any, Mapping

from tasks.errors import DeploymentError, RunnerError, TrainyardError
from tasks.adapters.kubernetes_manifest import validate_job_manifest

POOLS_DIR = Path(__file__).resolve().parent.parent / "docker" / "pools"

# prefect-kubernetes refuses a manifest without these two in the *pod* spec (its
# _validate_job_manifest compares against a base manifest that has them there), though they
# are Job fields; the API server drops them with a warning. Nothing else is let through.
PREFECT_POD_SPEC_EXTRAS = ("spec.template.spec.parallelism", "spec.template.spec.completions")


def load_template(path: Path) -> dict[str, Any]:
    """A base job template file (what `prefect work-pool create --base-job-template` reads)."""
    try:
        template = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DeploymentError(
            f"work pool template {path} does not exist (the shipped ones are in {POOLS_DIR})"
        ) from None
    except json.JSONDecodeError as exc:
        raise DeploymentError(f"work pool template {path} is not valid JSON: {exc}") from None
    if not isinstance(template, dict) or not {"job_configuration", "variables"} <= set(template):
        raise DeploymentError(
            f"work pool template {path} needs the two keys job_configuration and variables "
            "(start from `prefect work-pool get-default-base-job-template --type kubernetes`)"
        )
    return template


def render_kubernetes_job(
    template: Mapping[str, Any],
    job_variables: Mapping[str, Any] | None = None,
    *,
    flow_name: str = "train",
    flow_run_name: str = "trainyard-check",
) -> dict[str, Any]:
    """The Job manifest a prefect-kubernetes worker would submit for a run of a deployment with ``job_variables``."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config = _configuration(KubernetesWorkerJobConfiguration, template, job_variables)
    flow_run, flow = _flow_run(flow_name, flow_run_name)
    config.prepare_for_flow_run(flow_run, flow=flow)
    return config.job_manifest


def check_kubernetes_template(
    template: Mapping[str, Any],
    job_variables: Mapping[str, Any] | None = None,
    *,
    source: str = "kubernetes work pool template",
) -> dict[str, Any]:
    """Render like the worker, then validate against the Kubernetes API schema; the manifest, or DeploymentError."""
    manifest = render_kubernetes_job(template, job_variables)
    where = f"{source} with job variables {json.dumps(dict(job_variables or {}), sort_keys=True)}"
    validate_job_manifest(manifest, ignore=PREFECT_POD_SPEC_EXTRAS, source=where)
    return manifest


def render_docker_create_kwargs(
    template: Mapping[str, Any],
    job_variables: Mapping[str, Any] | None = None,
    *,
    docker_client: Any | None = None,
    flow_name: str = "train",
    flow_run_name: str = "trainyard-check",
) -> dict[str, Any]:
    """The keyword arguments a prefect-docker worker would pass to docker-py's ``containers.create``.

    The engine is asked (for its version) only when the Prefect API URL is on loopback, where
    the worker maps host.docker.internal; ``docker_client`` defaults to the local engine then.
    """
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    config = _configuration(DockerWorkerJobConfiguration, template, job_variables)
    flow_run, flow = _flow_run(flow_name, flow_run_name)
    config.prepare_for_flow_run(flow_run, flow=flow)
    if docker_client is None and _asks_engine(config):
        from tasks.adapters.docker_engine import docker_client as local_engine

        try:
            docker_client = local_engine()
        except RunnerError:
            raise DeploymentError(
                "with the Prefect API on loopback (PREFECT_API_URL unset or local) the docker worker asks the Docker "
                "engine for its version (to map host.docker.internal), and no engine answers here: start Docker, or "
                'set the job variable env: {"PREFECT_API_URL": "http://<prefect server>:4200/api"}'
            ) from None
    # The worker's own method (prefect-docker 0.7.x), the one _create_and_start_container calls.
    return DockerWorker(work_pool_name="trainyard-check")._build_container_settings(docker_client, config)


def _asks_engine(config: Any) -> bool:
    """The condition of DockerWorkerJobConfiguration.get_extra_hosts for calling the engine."""
    api_url = str(config.env.get("PREFECT_API_URL") or "")
    local = ("localhost", "127.0.0.1", "host.docker.internal")
    return sys.platform == "linux" and (not api_url or any(host in api_url for host in local))


def _configuration(cls: Any, template: Mapping[str, Any], job_variables: Mapping[str, Any] | None) -> Any:
    from prefect.client.orchestration import PrefectClient

    if (
        _needs_api(template.get("job_configuration"))
        or _needs_api(template["variables"].get("properties"))
        or _needs_api(job_variables)
    ):
        raise DeploymentError(
            "this template reads Prefect variables or blocks, which only a Prefect server can "
            "resolve: render it with that server's worker (`prefect worker start`) instead"
        )
    _check_job_variables(template, dict(job_variables or {}))
    # from_template_and_values asks the API only for variables and blocks (refused above); given
    # no client it would start a temporary Prefect server (~10 s) for nothing.
    unused = PrefectClient(api="http://127.0.0.1:9/api")
    try:
        return asyncio.run(cls.from_template_and_values(dict(template), dict(job_variables or {}), client=unused))
    except ValueError as exc:  # pydantic's ValidationError is one; prefect-kubernetes raises plain ones
        raise DeploymentError(f"the work pool template does not render to a valid {cls.__name__}: {exc}") from None


def _check_job_variables(template: Mapping[str, Any], job_variables: dict[str, Any]) -> None:
    """What the Prefect server checks on `prefect deploy`, plus: no job variable the pool does not define.

    The server lets an unknown name through and the worker ignores it, so a typo such as
    ``gpu: 2`` would start a pod with the default GPU count; here it is an error.
    """
    import difflib

    from prefect.utilities.schema_tools.validation import ValidationError, is_valid_schema, validate

    schema = template["variables"]
    known = sorted(schema.get("properties", {}))
    for name in job_variables:
        if name.split(".", 1)[0] not in known:
            near = difflib.get_close_matches(name, known, n=1)
            raise DeploymentError(
                f"job variable {name!r} is not a variable of this work pool"
                f"{f'; did you mean {near[0]!r}' if near else ''} (valid: {', '.join(known)})"
            )
    defaults = {k: v["default"] for k, v in schema.get("properties", {}).items() if v.get("default") is not None}
    try:
        is_valid_schema(schema, preprocess=False)
        validate(
            {**defaults, **{k: v for k, v in job_variables.items() if "." not in k}},
            schema,
            raise_on_error=True,
            preprocess=True,
            ignore_required=True,
            allow_none_with_default=True,
        )
    except (ValidationError, ValueError) as exc:
        raise DeploymentError(f"job variables {json.dumps(job_variables, sort_keys=True)}: {exc}") from None


def _needs_api(node: Any) -> bool:
    """Whether ``node`` holds a block document reference or a {{ prefect.variables.* }} placeholder."""
    if isinstance(node, Mapping):
        return isinstance(node.get("$ref"), Mapping) or any(_needs_api(v) for v in node.values())
    if isinstance(node, list):
        return any(_needs_api(v) for v in node)
    return isinstance(node, str) and "prefect.variables." in node


def _flow_run(flow_name: str, flow_run_name: str) -> tuple[Any, Any]:
    from prefect.client.schemas.objects import Flow, FlowRun

    flow = Flow(id=uuid.uuid4(), name=flow_name)  # type: ignore[call-arg]  # labels has a default; mypy cannot see it
    return FlowRun(id=uuid.uuid4(), flow_id=flow.id, name=flow_run_name), flow


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print('usage: python -m flows.pools TEMPLATE.json [\'{"job": "variables"}\']', file=sys.stderr)
        return 2
    try:
        template = load_template(Path(args[0]))
        try:
            variables = json.loads(args[1]) if len(args) > 1 else {}
        except json.JSONDecodeError as exc:
            raise DeploymentError(f"job variables {args[1]!r} are not a JSON object: {exc}") from None
        if not isinstance(variables, dict):
            raise DeploymentError(f"job variables {args[1]!r} must be a JSON object, e.g. '{{\"gpus\": 2}}'")
        if "job_manifest" in template["job_configuration"]:
            out = check_kubernetes_template(template, variables, source=args[0])
        else:
            out = render_docker_create_kwargs(template, variables)
    except TrainyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
