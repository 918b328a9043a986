"""The reproduction key: the inputs that, together, determine a trained model.

image/environment digest + data version (DVC md5) + params hash + code commit + seed.
It is written on every MLflow run as ``trainyard.*`` tags so runs can be compared in the
MLflow UI and a run can later be reproduced (and proven so) from its record alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Mapping

from tasks.errors import TrackingError


TAG_PREFIX = "trainyard."
# Tags that must be present for a run to be reproducible; checked when reading a key back.
REQUIRED_TAGS = ("data_hash", "params_hash", "code_commit", "env_digest", "seed")

if TYPE_CHECKING:
    from tasks.params import Params
    from tasks.validate import ValidationReport


@dataclass(frozen=True)
class ReproKey:
    data_hash: str  # DVC md5 of the dataset directory ("<hex>.dir")
    params_hash: str  # sha256 of the train section, see tasks.params.params_hash
    code_commit: str  # git HEAD, or "none" outside a git checkout
    code_dirty: bool  # tracked code differs from the commit
    code_diff: str  # sha256 of the uncommitted diff, "" when clean
    env_kind: str  # "local" (interpreter digest) or "docker" (image digest)
    env_digest: str  # "sha256:..."
    seed: int
    version: str  # trainyard's own version

    @property
    def digest(self) -> str:
        """One hash over every input that shapes the model (the version is informative only)."""
        fields = {k: v for k, v in asdict(self).items() if k != "version"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def tags(self) -> dict[str, str]:
        out = {f"{TAG_PREFIX}{k}": _text(v) for k, v in asdict(self).items()}
        out[f"{TAG_PREFIX}key"] = self.digest
        if self.code_commit != "none":
            out["mlflow.source.git.commit"] = self.code_commit  # shown by the MLflow UI
        return out

    @classmethod
    def from_tags(cls, tags: dict[str, str], run_id: str = "?") -> "ReproKey":
        missing = [k for k in REQUIRED_TAGS if f"{TAG_PREFIX}{k}" not in tags]
        if missing:
            raise TrackingError(
                f"MLflow run {run_id} has no reproduction key (missing tags: "
                f"{', '.join(TAG_PREFIX + k for k in missing)}); only runs made by trainyard can be reproduced"
            )

        def get(key: str, default: str = "") -> str:
            return tags.get(f"{TAG_PREFIX}{key}", default)

        return cls(
            data_hash=get("data_hash"),
            params_hash=get("params_hash"),
            code_commit=get("code_commit"),
            code_dirty=get("code_dirty") == "true",
            code_diff=get("code_diff"),
            env_kind=get("env_kind", "local"),
            env_digest=get("env_digest"),
            seed=int(get("seed", "0")),
            version=get("version"),
        )

    def differences(self, other: "ReproKey") -> list[str]:
        """Names of the inputs that differ, in the order a user should look at them."""
        order = ("data_hash", "params_hash", "env_digest", "code_commit", "code_dirty", "code_diff", "seed")
        mine, theirs = asdict(self), asdict(other)
        return [k for k in order if mine[k] != theirs[k]]


# The inputs that decide whether a scheduled training would produce a new model. The code
# commit is left out on purpose: the nightly schedule exists for new labels, and a commit to
# docs, tests or CI must not cost a night of GPU time (`--force` retrains after a code change).
UNCHANGED_IF_SAME = ("data_hash", "params_hash", "env_digest")
COMPLETE_TAG = f"{TAG_PREFIX}complete"  # "true" on runs that trained every epoch and finished


def same_inputs_tags(key: "ReproKey | Mapping[str, object]") -> dict[str, str]:
    """The tags a finished, complete run trained on the same inputs as ``key`` carries (a key, or
    just its :data:`UNCHANGED_IF_SAME` values); with status FINISHED, they are the whole search."""
    values = asdict(key) if isinstance(key, ReproKey) else dict(key)
    return {**{f"{TAG_PREFIX}{name}": str(values[name]) for name in UNCHANGED_IF_SAME}, COMPLETE_TAG: "true"}


def same_inputs_filter(key: "ReproKey | Mapping[str, object]") -> str:
    """MLflow search filter for finished, complete runs trained on the same inputs as ``key``."""
    clauses = [f"tags.`{name}` = '{value}'" for name, value in same_inputs_tags(key).items()]
    return " and ".join([*clauses, "attributes.status = 'FINISHED'"])


def trainyard_version() -> str:
    try:
        return metadata.version("trainyard")
    except metadata.PackageNotFoundError:
        return "0+checkout"


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_tags(params: Params, key: ReproKey, data_source: str, report: ValidationReport) -> dict[str, str]:
    """The tags a new MLflow run gets: the reproduction key plus what a person filters runs by."""
    from tasks.redact import redact

    tags = {
        **key.tags(),
        "trainyard.data_source": redact(data_source),
        "trainyard.overrides": redact(" ".join(params.overrides)),
        "trainyard.runner": params.runner.kind,
        "trainyard.images_train": str(report.splits["train"].images if "train" in report.splits else 0),
        "trainyard.data_warnings": str(len(report.warnings)),
        # the runs table's Source column (with the commit beside it, from mlflow.source.git.commit)
        "mlflow.source.name": "trainyard train flow",
        "mlflow.source.type": "JOB",
    }
    if key.env_kind == "docker":
        tags |= {"trainyard.image": str(params.container.image), "trainyard.image_digest": key.env_digest}
    return tags
