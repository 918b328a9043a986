"""MLflow seam: the one module that imports mlflow.

trainyard opens exactly one MLflow run per training, in the flow, and hands its id to the
training process through MLFLOW_TRACKING_URI / MLFLOW_RUN_ID (the names MLflow itself
uses, so a container gets the same two variables). Only ``MlflowClient`` is used, never
the fluent ``mlflow.start_run`` API: its process-global "active run" is what makes
integrations open a second run behind the caller's back.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from tasks.errors import TrackingError

if TYPE_CHECKING:  # mlflow is imported lazily: importing it costs seconds
    from mlflow.tracking import MlflowClient

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
RUN_ID_ENV = "MLFLOW_RUN_ID"
DEFAULT_STORE = "mlflow.db"
LOCAL_UI = "http://127.0.0.1:5000"  # where `trainyard ui` serves a local store

# MLflow param values are capped (6000 chars in MLflow 3); longer values are cut with a marker.
_PARAM_MAX = 6000


def resolve_tracking_uri(configured: str | None, base_dir: Path) -> tuple[str, str]:
    """Pick the tracking URI and say where it came from.

    Precedence: MLFLOW_TRACKING_URI (so one shell or one deployment can redirect every
    tool at once, as with MLflow itself) > ``tracking.uri`` in params.yaml > a SQLite
    store beside params.yaml (MLflow 3 rejects the old ./mlruns file store).
    """
    env = os.environ.get(TRACKING_URI_ENV, "").strip()
    if env:
        return env, f"${TRACKING_URI_ENV}"
    if configured:
        return configured, "params.yaml tracking.uri"
    return f"sqlite:///{(base_dir / DEFAULT_STORE).resolve()}", "default local store"


def default_artifact_root(uri: str, base_dir: Path) -> str | None:
    """Where a new experiment keeps artifacts: beside a local SQLite store; a server decides itself."""
    if uri.startswith("sqlite:"):
        return (base_dir / "mlartifacts").resolve().as_uri()
    return None


def metric_name(ultralytics_key: str) -> str:
    """Ultralytics' keys as MLflow accepts them: 'metrics/mAP50(B)' -> 'metrics/mAP50B'.

    The same rule as Ultralytics' own MLflow callback, so dashboards built on it keep working.
    """
    return ultralytics_key.replace("(", "").replace(")", "").strip()


@dataclass(frozen=True)
class RunRecord:
    """What a run holds, as read back from the tracking store."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # latest value per key


class Tracker:
    """A thin, typed wrapper over MlflowClient with errors that say what to do."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client: MlflowClient | None = None

    @property
    def client(self) -> "MlflowClient":
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ------------------------------------------------------------------ health

    def ping(self, timeout: float = 5.0) -> None:
        """Fail fast with a clear message when a tracking server is down.

        MlflowClient itself retries an unreachable server with backoff for minutes.
        """
        if not self.uri.startswith(("http://", "https://")):
            return
        url = self.uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-configured URI
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {self.uri} answered {resp.status} on /health")
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {self.uri} is not reachable ({reason}); start it, fix "
                f"tracking.uri / ${TRACKING_URI_ENV}, or unset both to use the local store"
            ) from None

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, str],
        artifact_location: str | None = None,
    ) -> str:
        """Create the run (and the experiment if needed); return its id."""
        from mlflow.entities import Param, RunTag

        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
            else:
                if exp.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"MLflow experiment {experiment!r} is deleted at {self.uri}; restore it or set tracking.experiment"
                    )
                exp_id = exp.experiment_id
            run = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags))
            run_id = run.info.run_id
            items = [Param(k, _cap(v)) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
                self.client.log_batch(run_id, params=items[i : i + 100])
            self.client.log_batch(run_id, tags=[RunTag("mlflow.runName", run_name)])
            return str(run_id)
        except TrackingError:
            raise
        except _store_errors() as exc:  # the user needs one message; a bug of ours keeps its traceback
            raise TrackingError(f"could not create an MLflow run at {self.uri}: {_short(exc)}") from exc

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(lambda: self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_name(k), float(v), now, step) for k, v in metrics.items() if _finite(v)]
        if batch:
            self._call(lambda: self.client.log_batch(run_id, metrics=batch))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.client.log_artifacts(run_id, str(local_dir), artifact_path))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call(lambda: self.client.set_terminated(run_id, status))

    @contextlib.contextmanager
    def ends_run_on_error(self, run_id: str, warn: Callable[[str], None]) -> Iterator[None]:
        """Within it, an exception ends ``run_id`` as KILLED (Ctrl-C) or FAILED with ``trainyard.error``, then
        propagates; a run never stays RUNNING because its training failed. ``warn`` hears when the
        tracking store itself cannot be reached to say so.
        """
        try:
            yield
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            try:
                self.set_tags(run_id, {"trainyard.error": str(exc)[:5000]})
                self.end_run(run_id, status)
            except TrackingError:
                warn(f"could not mark MLflow run {run_id} as {status}")
            raise

    # ------------------------------------------------------------------ reading back

    def get_run(self, run_id: str) -> RunRecord:
        try:
            run = self.client.get_run(run_id)
        except _store_errors() as exc:
            raise TrackingError(f"no MLflow run {run_id!r} at {self.uri}: {_short(exc)}") from exc
        return RunRecord(
            run_id=run.info.run_id,
            name=run.info.run_name,
            status=run.info.status,
            experiment_id=run.info.experiment_id,
            params=dict(run.data.params),
            tags=dict(run.data.tags),
            metrics=dict(run.data.metrics),
        )

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        history = self._call(lambda: self.client.get_metric_history(run_id, metric_name(key)))
        return sorted((m.step, m.value) for m in history)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Every artifact path under ``path``, recursively."""
        out: list[str] = []
        for info in self._call(lambda: self.client.list_artifacts(run_id, path)):
            if info.is_dir:
                out.extend(self.list_artifacts(run_id, info.path))
            else:
                out.append(info.path)
        return out

    def read_artifact_text(self, run_id: str, path: str) -> str:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            local = self._call(lambda: self.client.download_artifacts(run_id, path, tmp))
            return Path(local).read_text()

    def search_runs(
        self, experiment: str, filter_string: str = "", newest_first: bool = False, max_results: int = 1000
    ) -> list[RunRecord]:
        exp = self._call(lambda: self.client.get_experiment_by_name(experiment))
        if exp is None:
            return []
        order = ["attributes.start_time DESC"] if newest_first else None
        runs = self._call(
            lambda: self.client.search_runs(
                [exp.experiment_id], filter_string=filter_string, order_by=order, max_results=max_results
            )
        )
        return [self.get_run(r.info.run_id) for r in runs]

    def latest_run(self, experiment: str, filter_string: str) -> RunRecord | None:
        """The most recently started run of ``experiment`` matching ``filter_string``, if any."""
        runs = self.search_runs(experiment, filter_string, newest_first=True, max_results=1)
        return runs[0] if runs else None

    def run_url(self, run: RunRecord) -> str:
        """Where a person opens ``run``: the server's UI, or `trainyard ui`'s for a local store."""
        base = self.uri.rstrip("/") if self.uri.startswith(("http://", "https://")) else LOCAL_UI
        return f"{base}/#/experiments/{run.experiment_id}/runs/{run.run_id}"

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except _store_errors() as exc:
            raise TrackingError(f"MLflow at {self.uri} failed: {_short(exc)}") from exc


def _store_errors() -> tuple[type[BaseException], ...]:
    """What MLflow's client raises when the tracking server or store fails (never for a bug of ours)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, RequestException, SQLAlchemyError, OSError)


def backfill_epochs(tracker: Tracker, run_id: str, results_csv: Path) -> int:
    """Log every epoch of Ultralytics' results.csv that the run is missing; return how many.

    The training process logs each epoch live, but a logging hiccup must never kill a
    training, so the flow closes any gap from results.csv once training has ended.
    """
    rows = read_results_csv(results_csv)
    if not rows:
        return 0
    probe = next(k for k in rows[0] if k != "epoch")
    have = {step for step, _ in tracker.metric_history(run_id, probe)}
    missing = [row for row in rows if int(row["epoch"]) not in have]
    for row in missing:
        step = int(row["epoch"])
        tracker.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=step)
    return len(missing)


def read_results_csv(path: Path) -> list[dict[str, float]]:
    """Ultralytics' results.csv as numbers; 'time' (wall seconds) is dropped: it is not a result."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = []
        for raw in csv.DictReader(f):
            row = {k.strip(): float(v) for k, v in raw.items() if k and k.strip() != "time" and v not in ("", None)}
            rows.append(row)
    return rows


def _cap(value: str) -> str:
    return value if len(value) <= _PARAM_MAX else value[: _PARAM_MAX - 12] + "...[cut]"


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def iter_artifacts(run_dir: Path, patterns: Iterable[str]) -> list[Path]:
    """Files in ``run_dir`` matching any glob pattern, sorted, without duplicates."""
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in run_dir.glob(pattern) if p.is_file())
    return sorted(found)
