"""Kubernetes seam: the one module that imports the kubernetes client.

There is no cluster to dry-run a Job against, so a rendered Job manifest is checked
against the API schema as the client ships it: kubernetes 37's models are pydantic
models with ``extra="forbid"`` and strict types, one per API object. Validating the
manifest through ``V1Job`` rejects unknown fields (a typo such as ``resouces``), wrong
types and missing required fields, each with its path in the manifest. The API server
itself would drop an unknown field with a mere warning (its default field validation)
and start a pod without the GPU limit you meant to ask for.
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from typing import Any, Iterable, Mapping

from tasks.errors import DeploymentError

# Where the API reads a resource.Quantity: a JSON number is a valid quantity there (the
# server parses `2` as "2"), though the client types the field as a string.
_QUANTITY_PATH = re.compile(r"(\.resources\.(limits|requests)\.[^\[]+|\.overhead\.[^\[]+|\.emptyDir\.sizeLimit)$")


def validate_job_manifest(
    manifest: Mapping[str, Any], *, ignore: Iterable[str] = (), source: str = "job manifest"
) -> Any:
    """Check a ``batch/v1`` Job manifest against the Kubernetes API schema; return it as a ``V1Job``.

    ``ignore``: dotted paths (``spec.template.spec.parallelism``) dropped before the check,
    for fields a tool requires that the API server discards. Every problem is listed in
    one :class:`DeploymentError`, each with its path and the valid form.
    """
    import pydantic
    from kubernetes.client.models import V1Job

    doc = _normalised(manifest, set(ignore))
    problems: list[str] = []
    if doc.get("apiVersion") != "batch/v1" or doc.get("kind") != "Job":
        problems.append(f"apiVersion/kind: {doc.get('apiVersion')!r}/{doc.get('kind')!r}; a Job is batch/v1 / Job")
    job = None
    try:
        job = V1Job.model_validate(doc)
    except pydantic.ValidationError as exc:
        problems += [_describe(err) for err in exc.errors()]
    if job is not None:
        problems += _volume_problems(job)
    if problems:
        raise DeploymentError(f"{source} is not a valid Kubernetes Job:\n  " + "\n  ".join(problems))
    return job


def _normalised(manifest: Mapping[str, Any], ignore: set[str]) -> dict[str, Any]:
    doc = copy.deepcopy(dict(manifest))

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {
                k: walk(v, f"{path}.{k}" if path else str(k))
                for k, v in node.items()
                if (f"{path}.{k}" if path else str(k)) not in ignore
            }
        if isinstance(node, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, (int, float)) and not isinstance(node, bool) and _QUANTITY_PATH.search(path):
            return str(node)
        return node

    normalised: dict[str, Any] = walk(doc, "")
    return normalised


def _describe(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    path = _path(loc)
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    if err["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        fields = sorted(model.attribute_map.values()) if model is not None else []
        near = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        where = model.__name__ if model is not None else "this object"
        listing = ", ".join(fields) if len(fields) <= 15 else f"`kubectl explain {_explain_path(loc[:-1])}`"
        return f"{path}: unknown field; {hint}({where} fields: {listing})"
    if err["type"] == "missing":
        return f"{path}: required field missing"
    return f"{path}: {err['msg'].lower()} (got {got})"


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][\w$]*", str(part)):
            out += f".{part}" if out else str(part)
        else:  # map keys such as nvidia.com/gpu
            out += f"[{str(part)!r}]"
    return out or "(top level)"


def _explain_path(loc: tuple[Any, ...]) -> str:
    return ".".join(["job", *(str(p) for p in loc if not isinstance(p, int))])


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The client model that the object at ``loc`` (JSON keys and list indices) is validated as."""
    from kubernetes.client.models import V1Job

    model: Any = V1Job
    map_key_next = False
    for part in loc:
        if isinstance(part, int):
            continue
        if map_key_next:  # a key of a Dict[str, Model] field
            map_key_next = False
            continue
        by_json = {v: k for k, v in model.attribute_map.items()}
        name = by_json.get(part, part)
        field = model.model_fields.get(name)
        if field is None:
            return None
        model, map_key_next = _inner_model(field.annotation)
        if model is None:
            return None
    return model


def _inner_model(annotation: Any) -> tuple[Any, bool]:
    """(the model class inside Optional/List/Dict, whether a Dict key comes first)."""
    import pydantic

    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        model, map_key = _inner_model(arg)
        if model is not None:
            return model, map_key or origin is dict
    return None, False


def _volume_problems(job: Any) -> list[str]:
    """A volume takes exactly one source; the schema cannot say so, the API server refuses it."""
    pod = job.spec.template.spec if job.spec and job.spec.template else None
    problems = []
    for i, volume in enumerate((pod.volumes or []) if pod else []):
        sources = [
            volume.attribute_map[name]
            for name in volume.attribute_map
            if name != "name" and getattr(volume, name) is not None
        ]
        if len(sources) != 1:
            have = ", ".join(sources) if sources else "none"
            problems.append(
                f"spec.template.spec.volumes[{i}] ({volume.name}): sets {len(sources)} volume sources "
                f"({have}); a volume takes exactly one, e.g. emptyDir or hostPath"
            )
    return problems
