"""Runs side by side in a terminal: `trainyard runs` (recent runs, like `dvc exp show`) and
`trainyard compare RUN RUN…` (what differs, and the final metrics).

Plain functions over :class:`~tasks.adapters.mlflow_tracking.RunRecord`: they only pick
columns and format text, so they are tested on in-memory records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from tasks.evaluate import FINAL_METRICS

if TYPE_CHECKING:
    from tasks.adapters.mlflow_tracking import RunRecord

FINAL = tuple(k for k in FINAL_METRICS if k != "best_epoch")  # best.pt's values, as logged
IGNORED_PARAMS = ("data.source", "stage.root", "tracking.uri")  # where things are, not what trained


def differing_params(runs: Sequence["RunRecord"]) -> list[str]:
    """Param keys whose value is not the same in every run (a missing key counts as a value)."""
    keys = sorted({k for r in runs for k in r.params} - set(IGNORED_PARAMS))
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value != int(value) else str(int(value))
    return "-" if value is None else str(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def runs_table(runs: Sequence["RunRecord"], max_params: int = 6) -> str:
    """One line per run: id, name, status, data version, the params that differ, the final metrics."""
    if not runs:
        return "no runs yet"
    varying = differing_params(runs)[:max_params]
    header = ["run", "name", "status", "data", *[k.removeprefix("train.") for k in varying], "mAP50-95", "mAP50"]
    rows = []
    for r in runs:
        rows.append(
            [
                r.run_id[:8],
                r.name[:32],
                r.status,
                r.tags.get("trainyard.data_hash", "")[:8],
                *[r.params.get(k, "-") for k in varying],
                _cell(r.metrics.get("mAP50-95")),
                _cell(r.metrics.get("mAP50")),
            ]
        )
    return table(header, rows)


def compare_table(runs: Sequence["RunRecord"]) -> str:
    """Params that differ, the reproduction key's parts, and the final metrics, one column per run."""
    header = ["", *[f"{r.run_id[:8]} {r.name[:24]}" for r in runs]]
    rows = [["status", *[r.status for r in runs]]]
    for tag in ("trainyard.data_hash", "trainyard.params_hash", "trainyard.code_commit", "trainyard.env_digest"):
        rows.append([tag.removeprefix("trainyard."), *[r.tags.get(tag, "-")[:16] for r in runs]])
    rows += [[k, *[r.params.get(k, "-") for r in runs]] for k in differing_params(runs)]
    rows += [[k, *[_cell(r.metrics.get(k)) for r in runs]] for k in FINAL]
    same = "" if differing_params(runs) else "\n(no params differ)"
    return table(header, rows) + same
