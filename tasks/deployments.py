"""prefect.yaml, read and checked: the deployments `trainyard serve` serves.

The same file drives `prefect deploy` (work pools) and `trainyard serve` (one box, no
workers), so a schedule is written once. Reading it here, without Prefect, lets a typo
in a schedule fail with the file, the deployment and the valid form before anything is
registered with a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import DeploymentError

PROCESS_POOL = "trainyard"  # the process work pool: one box, the flows run from the checkout

_SCHEDULE_KINDS = ("cron", "interval", "rrule")
_SCHEDULE_KEYS = (*_SCHEDULE_KINDS, "timezone", "anchor_date", "day_or", "active", "parameters", "slug")
# build/push/pull/triggers/version/enforce_parameter_schema are `prefect deploy`'s business;
# `serve` runs this checkout's code. Prefect 2's singular `schedule:` is refused (it would be
# ignored, and a nightly training would silently never run).
_DEPLOYMENT_KEYS = (
    "name",
    "entrypoint",
    "description",
    "tags",
    "parameters",
    "schedules",
    "work_pool",
    "concurrency_limit",
    "version",
    "pull",
    "build",
    "push",
    "enforce_parameter_schema",
    "paused",
    "triggers",
)


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of prefect.yaml, as `trainyard serve` needs it."""

    name: str
    entrypoint: str  # path/to/file.py:flow_function
    description: str = ""
    tags: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[dict[str, Any], ...] = ()  # each: exactly one of cron / interval (seconds) / rrule
    work_pool: str | None = None
    concurrency_limit: int | None = None
    paused: bool = False  # registered with its schedules switched off

    @property
    def module(self) -> str:
        """The entrypoint as an importable module path ("flows/train.py" -> "flows.train")."""
        path = self.entrypoint.split(":", 1)[0]
        return path.removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        return self.entrypoint.split(":", 1)[1]


def read_deployments(path: Path) -> list[DeploymentSpec]:
    """Every deployment in ``path`` (a prefect.yaml), checked; DeploymentError names what is wrong and where."""
    if not path.is_file():
        raise DeploymentError(
            f"{path} does not exist; `trainyard serve` reads the deployments from a prefect.yaml "
            "(see the one at the top of the trainyard checkout)"
        )
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DeploymentError(f"{path} is not valid YAML: {exc}") from None
    items = doc.get("deployments") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise DeploymentError(f"{path}: `deployments:` must be a non-empty list of deployments (name, entrypoint, ...)")
    specs = [_deployment(path, i, item) for i, item in enumerate(items)]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise DeploymentError(f"{path}: two deployments are named {spec.name!r}; names must be unique")
        seen.add(spec.name)
    return specs


def select(specs: list[DeploymentSpec], names: list[str] | tuple[str, ...]) -> list[DeploymentSpec]:
    """The named deployments, or by default those of the process pool (the ones one box can run)."""
    if not names:
        chosen = [s for s in specs if s.work_pool in (None, PROCESS_POOL)]
        if not chosen:
            raise DeploymentError(
                f"no deployment uses the {PROCESS_POOL!r} process pool; name the ones to serve "
                f"with --deployment (there are: {', '.join(s.name for s in specs)})"
            )
        return chosen
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DeploymentError(f"no deployment named {unknown[0]!r}; valid: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def _deployment(path: Path, index: int, item: Any) -> DeploymentSpec:
    where = f"{path}: deployments[{index}]"
    if not isinstance(item, dict):
        raise DeploymentError(f"{where} must be a mapping with at least name and entrypoint")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DeploymentError(f"{where}: `name` must be a non-empty string")
    where = f"{path}: deployment {name!r}"
    unknown = [k for k in item if k not in _DEPLOYMENT_KEYS]
    if unknown:
        raise DeploymentError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(_DEPLOYMENT_KEYS)}")
    entrypoint = item.get("entrypoint")
    if not isinstance(entrypoint, str) or ":" not in entrypoint or not entrypoint.split(":", 1)[0].endswith(".py"):
        raise DeploymentError(f"{where}: `entrypoint` must look like flows/train.py:train_flow, not {entrypoint!r}")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise DeploymentError(f"{where}: `parameters` must be a mapping of flow parameter names to values")
    raw_schedules = item.get("schedules") or []
    if not isinstance(raw_schedules, list):
        raise DeploymentError(f'{where}: `schedules` must be a list like [{{cron: "0 2 * * *", timezone: UTC}}]')
    pool = item.get("work_pool") or {}
    if not isinstance(pool, dict):
        raise DeploymentError(f"{where}: `work_pool` must be a mapping like {{name: {PROCESS_POOL}}}")
    paused = item.get("paused", False)
    if not isinstance(paused, bool):
        raise DeploymentError(f"{where}: `paused` must be true or false")
    limit = item.get("concurrency_limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise DeploymentError(f"{where}: `concurrency_limit` must be a whole number >= 1 or absent")
    return DeploymentSpec(
        name=name,
        entrypoint=entrypoint,
        description=str(item.get("description") or ""),
        tags=tuple(str(t) for t in item.get("tags") or ()),
        parameters=dict(params),
        schedules=tuple(_schedule(f"{where}: schedules[{i}]", s) for i, s in enumerate(raw_schedules)),
        work_pool=pool.get("name"),
        concurrency_limit=limit,
        paused=paused,
    )


def _schedule(where: str, item: Any) -> dict[str, Any]:
    form = 'cron: "0 2 * * *" (with timezone: Europe/Berlin), interval: 3600 (seconds) or rrule: "FREQ=DAILY"'
    if not isinstance(item, dict):
        raise DeploymentError(f"{where} must be a mapping: {form}")
    unknown = [k for k in item if k not in _SCHEDULE_KEYS]
    if unknown:
        raise DeploymentError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(_SCHEDULE_KEYS)}")
    kinds = [k for k in _SCHEDULE_KINDS if item.get(k) is not None]
    if len(kinds) != 1:
        raise DeploymentError(
            f"{where} needs exactly one of cron, interval, rrule (found {', '.join(kinds) or 'none'}): {form}"
        )
    interval = item.get("interval")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0):
        raise DeploymentError(f"{where}: interval must be a number of seconds > 0, like 3600, not {interval!r}")
    timezone = item.get("timezone")
    if timezone is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(str(timezone))
        except (ZoneInfoNotFoundError, ValueError):
            raise DeploymentError(
                f"{where}: timezone {timezone!r} is not an IANA name like Europe/Berlin or UTC"
            ) from None
    return dict(item)
