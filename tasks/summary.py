"""The one-screen summary of a flow run, as Markdown (published as a Prefect artifact).

A person looking at a scheduled run in the Prefect UI wants four answers without opening
anything else: did it train (or was it up to date), on which data and image, how good is
the model, and where is the MLflow run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

# Final metrics in the order a detector engineer reads them.
_METRICS = ("mAP50-95", "mAP50", "precision", "recall", "best_epoch", "epochs")


@dataclass(frozen=True)
class RunSummary:
    outcome: str  # "trained", "up to date", "resumed after a crash", "reproduced: identical", ...
    run_name: str
    run_id: str
    run_url: str
    data_hash: str
    params_hash: str
    env_kind: str  # local | docker
    env_digest: str  # the image digest for docker, the interpreter's package digest for local
    code_commit: str
    metrics: Mapping[str, float | int] = field(default_factory=dict)
    image: str | None = None
    notes: tuple[str, ...] = ()

    def markdown(self) -> str:
        env = "image" if self.env_kind == "docker" else "environment"
        rows = [
            ("outcome", f"**{self.outcome}**"),
            ("MLflow run", f"[{self.run_name}]({self.run_url}) (`{self.run_id}`)"),
            ("data (DVC md5)", f"`{self.data_hash}`"),
            ("params hash", f"`{self.params_hash[:16]}`"),
            (f"{env} digest", f"`{self.env_digest}`" + (f" ({self.image})" if self.image else "")),
            ("code commit", f"`{self.code_commit[:12]}`"),
        ]
        rows += [(name, _number(self.metrics[name])) for name in _METRICS if name in self.metrics]
        lines = [f"# trainyard: {self.outcome}", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def _number(value: float | int) -> str:
    # counts come back from MLflow as floats (40.0): show them as the whole numbers they are
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


ARTIFACT_KEY = "trainyard-train"  # the train flow's Prefect artifact; a sweep reads work-pool trials' back
_DESCRIPTION = re.compile(r"^trainyard train: (?P<outcome>.+), MLflow run (?P<run_id>[0-9a-f]{32})$")


def artifact_description(outcome: str, run_id: str) -> str:
    """The Prefect artifact's one line; a sweep reads a work-pool trial's outcome back from it."""
    return f"trainyard train: {outcome}, MLflow run {run_id}"


def parse_artifact_description(text: str) -> tuple[str, str] | None:
    """(outcome, MLflow run id) from :func:`artifact_description`'s line, or None."""
    match = _DESCRIPTION.match(text.strip())
    return (match["outcome"], match["run_id"]) if match else None
