"""`trainyard serve`: prefect.yaml's deployments, served with their schedules from one process.

The single-GPU-box case: no work pool, no worker. Prefect's runner registers each
deployment with the API (schedules included), polls for due runs and executes each in a
subprocess of this machine. ``limit`` (default 1) keeps two trainings off one GPU.
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from tasks.deployments import DeploymentSpec
from tasks.errors import DeploymentError


def build_deployments(prefect_file: Path, specs: list[DeploymentSpec]) -> list[Any]:
    """RunnerDeployments for ``specs`` (read from ``prefect_file``); checked, nothing registered yet."""
    return [_runner_deployment(prefect_file, spec) for spec in specs]


def serve_file(prefect_file: Path, specs: list[DeploymentSpec], limit: int = 1) -> None:
    """Serve ``specs`` until interrupted (Ctrl-C / SIGTERM pauses their schedules)."""
    from prefect import serve

    prefect_file = prefect_file.resolve()
    # Flow runs resolve params_path and other relative paths against the project folder, as
    # with `prefect deploy`, whatever folder `trainyard serve` was started from.
    os.chdir(prefect_file.parent)
    if str(prefect_file.parent) not in sys.path:
        sys.path.insert(0, str(prefect_file.parent))
    serve(*build_deployments(prefect_file, specs), limit=limit)


def _runner_deployment(prefect_file: Path, spec: DeploymentSpec) -> Any:
    from prefect.flows import Flow
    from prefect.types.entrypoint import EntrypointType

    where = f"{prefect_file}: deployment {spec.name!r}"
    try:
        flow = getattr(importlib.import_module(spec.module), spec.function)
    except (ImportError, AttributeError) as exc:
        raise DeploymentError(f"{where}: cannot load entrypoint {spec.entrypoint} ({exc})") from None
    if not isinstance(flow, Flow):
        raise DeploymentError(f"{where}: {spec.entrypoint} is not a Prefect flow")
    accepted = inspect.signature(flow.fn).parameters
    unknown = [p for p in spec.parameters if p not in accepted]
    if unknown:
        raise DeploymentError(
            f"{where}: {spec.entrypoint} has no parameter {unknown[0]!r}; valid: {', '.join(accepted)}"
        )
    schedules = [_schedule(where, s) for s in spec.schedules]
    # A module path, not a file path: the runner's subprocess imports the installed package,
    # so the flow runs the same code whichever folder the file path would be relative to.
    return flow.to_deployment(
        name=spec.name,
        description=spec.description or None,
        tags=list(spec.tags),
        parameters=spec.parameters,
        schedules=schedules,
        concurrency_limit=spec.concurrency_limit,
        paused=spec.paused,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def _schedule(where: str, raw: dict[str, Any]) -> Any:
    from prefect.schedules import Schedule

    values = dict(raw)
    if values.get("interval") is not None:
        values["interval"] = datetime.timedelta(seconds=float(values["interval"]))
    if isinstance(values.get("anchor_date"), str):
        values["anchor_date"] = datetime.datetime.fromisoformat(values["anchor_date"])
    try:
        return Schedule(**values)
    except (ValueError, TypeError) as exc:
        raise DeploymentError(f"{where}: invalid schedule {raw}: {exc}") from None
