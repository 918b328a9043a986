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
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from tasks.errors import TrackingError
from tasks.file_locks import held
from tasks.redact import redact, split_userinfo

if TYPE_CHECKING:  # mlflow is imported lazily: importing it costs seconds
    from mlflow.tracking import MlflowClient

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
ERROR_TAG = "trainyard.error"  # why a run stopped: set when it ends FAILED or KILLED, cleared when it resumes
RUN_ID_ENV = "MLFLOW_RUN_ID"
DEFAULT_STORE = "mlflow.db"
LOCAL_UI = "http://127.0.0.1:5000"  # where `trainyard ui` serves a local store

# MLflow's own defaults retry an unreachable server 7 times with exponential backoff and wait
# 120 s per request: one call against a dead server blocked a training for 255 s. These
# bound a call to ~3 s when the server is down (refused) and ~35 s when it hangs; the
# training logs from a background thread anyway, and nothing is lost (results.csv is the
# spool). A user's own MLFLOW_HTTP_REQUEST_* settings win.
BOUNDED_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

_MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a logged model: [{"name", "version"}] (mlflow.utils.mlflow_tags)

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


@dataclass(frozen=True)
class ModelVersionRecord:
    """A registered model version, as read back: what promotion compares."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]


def _version_record(mv: Any) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or "",
        source=mv.source or "",
        tags=dict(mv.tags or {}),
        aliases=tuple(mv.aliases or ()),
    )


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _detector_signature(imgsz: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from tasks.adapters.yolo_pyfunc import INPUT_COLUMN

    outputs: list[Any] = [ColSpec("long", "image"), ColSpec("long", "class_id"), ColSpec("string", "class_name")]
    outputs += [ColSpec("double", c) for c in ("confidence", "x1", "y1", "x2", "y2")]
    params = [ParamSpec("conf", "double", 0.25), ParamSpec("iou", "double", 0.7), ParamSpec("imgsz", "long", imgsz)]
    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema(outputs),
        params=ParamSchema(params),
    )


def _example_image() -> str:
    """A 32x32 grey PNG as base64: the input example shows the form, it is not a test image."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (114, 114, 114)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _pinned(packages: Iterable[str]) -> list[str]:
    """``name==version`` of what is installed here (a local build tag like +cu128 left out: pip cannot fetch it)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in packages:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


class _UncheckedPyfunc:
    """``mlflow.pyfunc`` as a flavor for ``Model.log``, minus its check of the input example.

    That check loads the model and predicts with it: torch and Ultralytics imported into the flow's
    process (+700 MiB, about 3 s of every run, measured by bench/overhead.py) to re-prove code that is
    the same for every run. The tests prove it instead (tests/flows/test_train_flow.py loads the
    logged model and predicts). ``Model.log`` skips the check on ``validate_serving_input=False`` but
    hands its kwargs on to the flavor, and pyfunc's ``save_model`` refuses unknown ones.
    """

    __name__ = "mlflow.pyfunc"

    @staticmethod
    def save_model(**kwargs: Any) -> Any:
        import mlflow.pyfunc

        kwargs.pop("validate_serving_input", None)
        return mlflow.pyfunc.save_model(**kwargs)


class Tracker:
    """A thin, typed wrapper over MlflowClient with errors that say what to do."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.shown = redact(uri)  # what messages and records say: no password
        self._client: MlflowClient | None = None
        for name, value in BOUNDED_HTTP.items():  # MLflow reads them per request
            os.environ.setdefault(name, value)
        # MLflow prints "View run … at: <tracking URI>" on end_run, password and all; trainyard prints its own link
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # its download bars (model logging checks its example) would break the flow's one-line log
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    @property
    def client(self) -> "MlflowClient":
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:///"):
                # MLflow creates and migrates a SQLite store on first use, unguarded: three first runs at
                # once raced its migrations ("table _alembic_tmp_endpoints already exists"). One at a time.
                with held(Path(self.uri.removeprefix("sqlite:///") + ".lock")):
                    client = self._call(lambda: MlflowClient(tracking_uri=self.uri))
                    self._call(lambda: client.search_experiments(max_results=1))
            else:
                client = MlflowClient(tracking_uri=self.uri)
            self._client = client
        return self._client

    # ------------------------------------------------------------------ health

    def ping(self, timeout: float = 5.0) -> None:
        """Fail fast with a clear message when a tracking server is down.

        MlflowClient itself retries an unreachable server with backoff for minutes.
        """
        if not self.uri.startswith(("http://", "https://")):
            return
        bare, user, password = split_userinfo(self.uri)  # urllib does not read credentials from a URL
        request = urllib.request.Request(bare.rstrip("/") + "/health")
        if user is not None:
            import base64

            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - user-configured URI
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {self.shown} answered {resp.status} on /health")
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {self.shown} is not reachable ({reason}); start it, fix "
                f"tracking.uri / ${TRACKING_URI_ENV}, or unset both to use the local store",
                transient=True,
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
                if artifact_location is None and self.uri.startswith("sqlite:///"):
                    # MLflow's default is ./mlruns of whatever directory the process runs in
                    store_dir = Path(self.uri.removeprefix("sqlite:///")).parent
                    artifact_location = default_artifact_root(self.uri, store_dir)
                exp_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
            else:
                if exp.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"MLflow experiment {experiment!r} is deleted at {self.shown}; restore it or set tracking.experiment"
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
            raise TrackingError(
                f"could not create an MLflow run at {self.shown}: {_short(exc)}", transient=_unreachable(exc)
            ) from exc

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(lambda: self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        self.send_batch(run_id, self.metric_batch(metrics, step))

    def send_batch(self, run_id: str, batch: list[Any]) -> None:
        """Log prebuilt ``Metric`` objects (see :meth:`metric_batch`): resending the same ones is idempotent."""
        if batch:
            self._call(lambda: self.client.log_batch(run_id, metrics=batch))

    @staticmethod
    def metric_batch(metrics: Mapping[str, float], step: int) -> list[Any]:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [Metric(metric_name(k), float(v), now, step) for k, v in metrics.items() if _finite(v)]

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.client.log_artifacts(run_id, str(local_dir), artifact_path))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call(lambda: self.client.set_terminated(run_id, status))

    def log_dataset(
        self, run_id: str, name: str, digest: str, source: str, profile: Mapping[str, Any], context: str = "training"
    ) -> None:
        """The dataset as an MLflow input (the runs table's Dataset column): ``digest`` is the data hash."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        source_type = "s3" if source.startswith("s3://") else "local"
        dataset = Dataset(
            name=name,
            digest=digest[:36],  # MLflow's limit; the DVC md5 "<32 hex>.dir" is 36
            source_type=source_type,
            source=json.dumps({"uri": redact(source)}),
            profile=json.dumps(dict(profile)),
        )
        tag = InputTag(key="mlflow.data.context", value=context)
        self._call(lambda: self.client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset, tags=[tag])]))

    def datasets(self, run_id: str) -> list[tuple[str, str]]:
        """(name, digest) of every dataset input of the run."""
        run = self._call(lambda: self.client.get_run(run_id))
        return [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs]

    def record_failure(self, run_id: str, text: str, status: str, warn: Callable[[str], None]) -> None:
        """End ``run_id`` as ``status`` (KILLED, FAILED) with ``text`` in ``trainyard.error``; ``warn`` hears
        when the tracking store itself cannot be reached to say so (the next `trainyard sync` will)."""
        try:
            self.set_tags(run_id, {ERROR_TAG: redact(text)[:5000]})
            self.end_run(run_id, status)
        except TrackingError:
            warn(f"could not mark MLflow run {run_id} as {status}; `trainyard sync` will once MLflow is reachable")

    # ------------------------------------------------------------------ models and the registry

    def log_model(self, run_id: str, weights: Path, imgsz: int, step: int) -> str:
        """``weights`` (best.pt) as the run's MLflow model ``model``: a pyfunc that predicts boxes
        (tasks/adapters/yolo_pyfunc.py), with a signature and an input example; returns its models:/ URI.

        """
        import pandas as pd
        from mlflow.models import Model

        from tasks.adapters import yolo_pyfunc

        experiment_id = self.get_run(run_id).experiment_id
        with self._process_uri(experiment_id):
            info = self._call(
                lambda: Model.log(
                    artifact_path=None,
                    name="model",
                    flavor=_UncheckedPyfunc(),
                    run_id=run_id,
                    python_model=yolo_pyfunc.__file__,
                    artifacts={yolo_pyfunc.WEIGHTS: str(weights)},
                    model_config={"imgsz": imgsz},
                    signature=_detector_signature(imgsz),
                    input_example=pd.DataFrame({yolo_pyfunc.INPUT_COLUMN: [_example_image()]}),
                    pip_requirements=_pinned(("mlflow", "ultralytics", "torch", "torchvision", "pandas", "pillow")),
                    step=step,
                    # MLflow would load the model and predict on the example here: torch and
                    # Ultralytics imported into the flow's process (+700 MiB, ~3 s per run) to
                    # re-prove code that does not change between runs; the tests prove it instead
                    # (tests/flows/test_train_flow.py loads the logged model and predicts with it)
                    validate_serving_input=False,
                )
            )
        return str(info.model_uri)

    @contextlib.contextmanager
    def _process_uri(self, experiment_id: str | None = None) -> Iterator[None]:
        """MLflow's model logging and its SQLite registry find the store (and the experiment a logged model
        belongs to) through process-wide settings, not the client's; point them here for the call."""
        import mlflow

        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses), which trainyard
        # reads as the user's choice: put back exactly what the environment held, or nothing
        before = {name: os.environ.get(name) for name in (TRACKING_URI_ENV, "MLFLOW_EXPERIMENT_ID")}
        mlflow.set_tracking_uri(self.uri)
        if experiment_id is not None:
            os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
        try:
            yield
        finally:
            mlflow.set_tracking_uri(before[TRACKING_URI_ENV])  # type: ignore[arg-type]  # None unsets it
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def register_version(self, name: str, model_uri: str, run_id: str, tags: Mapping[str, str]) -> str:
        """A new version of registered model ``name`` (created if missing) from ``model_uri``; its number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise TrackingError(
                    f"could not create registered model {name!r} at {self.shown}: {_short(exc)}",
                    transient=_unreachable(exc),
                ) from exc
        except _store_errors() as exc:
            raise TrackingError(f"MLflow at {self.shown} failed: {_short(exc)}", transient=_unreachable(exc)) from exc
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        with self._process_uri():
            version = self._call(
                lambda: self.client.create_model_version(
                    name,
                    source=model_uri,
                    run_id=run_id,
                    tags=dict(tags),
                    await_creation_for=0,
                    # a server refuses a models:/<id> source without the id (MLflow 3's logged models)
                    model_id=model_id,
                )
            )
        if model_id:
            self._link_version(model_id, name, str(version.version))
        return str(version.version)

    def _link_version(self, model_id: str, name: str, version: str) -> None:
        """Tag the logged model with its registered version, as ``mlflow.register_model`` does: the runs
        table's Models column shows ``<name> v<version>`` from it (a bare client call leaves it out)."""
        import json

        model = self._call(lambda: self.client.get_logged_model(model_id))
        linked = json.loads(model.tags.get(_MODEL_VERSIONS_TAG) or "[]")
        # a tracking server adds the entry itself (version as a number); a local store does not
        if not any(e.get("name") == name and str(e.get("version")) == version for e in linked):
            value = json.dumps([*linked, {"name": name, "version": int(version)}])
            self._call(lambda: self.client.set_logged_model_tags(model_id, {_MODEL_VERSIONS_TAG: value}))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._call(lambda: self.client.set_registered_model_alias(name, alias, version))

    def alias_version(self, name: str, alias: str) -> ModelVersionRecord | None:
        """The version of ``name`` that ``alias`` points at; None when the model or the alias does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise TrackingError(f"MLflow at {self.shown} failed: {_short(exc)}", transient=_unreachable(exc)) from exc
        except _store_errors() as exc:
            raise TrackingError(f"MLflow at {self.shown} failed: {_short(exc)}", transient=_unreachable(exc)) from exc
        return _version_record(mv)

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call(lambda: self.client.set_model_version_tag(name, version, key, value))

    def model_version(self, name: str, version: str) -> ModelVersionRecord:
        return _version_record(self._call(lambda: self.client.get_model_version(name, version)))

    def model_versions(self, name: str) -> list[ModelVersionRecord]:
        """Every version of registered model ``name``, oldest first (none when it does not exist); one
        search, so without their aliases (see :meth:`alias_version`)."""
        found = self._call(lambda: self.client.search_model_versions(f"name = '{_quote(name)}'"))
        return sorted((_version_record(mv) for mv in found), key=lambda v: int(v.version))

    def run_versions(self, name: str, run_id: str) -> list[ModelVersionRecord]:
        """The versions of ``name`` registered from run ``run_id``, oldest first."""
        found = self._call(
            lambda: self.client.search_model_versions(f"name = '{_quote(name)}' and run_id = '{run_id}'")
        )
        # a search leaves the aliases out: read each version (a run has one, rarely more)
        return [self.model_version(name, v) for v in sorted((str(mv.version) for mv in found), key=int)]

    # ------------------------------------------------------------------ reading back

    def get_run(self, run_id: str) -> RunRecord:
        try:
            run = self.client.get_run(run_id)
        except _store_errors() as exc:
            if _unreachable(exc):
                raise TrackingError(f"MLflow at {self.shown} failed: {_short(exc)}", transient=True) from exc
            raise TrackingError(
                f"no MLflow run {run_id!r} at {self.shown}: {_short(exc)}; copy the run id from the MLflow UI "
                "(Run ID on the run's page) and check tracking.uri / $MLFLOW_TRACKING_URI"
            ) from exc
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

    def download_artifact(self, run_id: str, path: str, dest: Path) -> Path:
        """One artifact of ``run_id`` into the folder ``dest``; returns the local file."""
        dest.mkdir(parents=True, exist_ok=True)
        return Path(self._call(lambda: self.client.download_artifacts(run_id, path, str(dest))))

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
        # a browser asks for the password itself; a link must not carry it
        base = split_userinfo(self.uri)[0].rstrip("/") if self.uri.startswith(("http://", "https://")) else LOCAL_UI
        return f"{base}/#/experiments/{run.experiment_id}/runs/{run.run_id}"

    def reopen_run(self, run_id: str) -> None:
        """Mark an interrupted run RUNNING again, so a resumed training can log into it."""
        self._call(lambda: self.client.update_run(run_id, status="RUNNING"))
        if ERROR_TAG in self.get_run(run_id).tags:  # it is no longer the run's last word
            self._call(lambda: self.client.delete_tag(run_id, ERROR_TAG))

    def runs_with_status(self, experiment: str, status: str, max_results: int = 200) -> list[RunRecord]:
        """The newest ``max_results`` runs of ``experiment`` in ``status`` (RUNNING, KILLED, ...)."""
        return self.search_runs(
            experiment, f"attributes.status = '{status}'", newest_first=True, max_results=max_results
        )

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except _store_errors() as exc:
            raise TrackingError(f"MLflow at {self.shown} failed: {_short(exc)}", transient=_unreachable(exc)) from exc


def _store_errors() -> tuple[type[BaseException], ...]:
    """What MLflow's client raises when the tracking server or store fails (never for a bug of ours)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, RequestException, SQLAlchemyError, OSError)


class EpochLogger:
    """Logs a training's epochs to its MLflow run from a thread, in order, so an absent or slow
    tracking server never holds up training.

    An epoch that cannot be sent waits at the head of the queue and is retried with backoff
    (1 s doubling to 15 s); later epochs queue behind it, so MLflow receives them in order once
    the server is back. A retry resends the very same Metric objects (same timestamps), which
    MLflow stores once even if the first try reached the server and only its answer was lost.
    The queue is memory; the durable spool is the run directory's epochs.jsonl (and results.csv),
    from which the flow (or `trainyard sync`) back-fills whatever is still unsent when the training ends.
    """

    def __init__(self, tracker: Tracker, run_id: str, say: Callable[[str], None]) -> None:
        self.tracker, self.run_id, self.say = tracker, run_id, say
        self._queue: list[tuple[int, list[Any]]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._send_loop, name="trainyard-mlflow", daemon=True)
        self._thread.start()

    def put(self, step: int, metrics: Mapping[str, float]) -> None:
        with self._cond:
            self._queue.append((step, Tracker.metric_batch(metrics, step)))
            self._cond.notify()

    def close(self, timeout: float) -> list[int]:
        """Send what is queued, waiting at most ``timeout`` s; return the epochs left unsent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            left = [step for step, _ in self._queue]
            # given up: the back-fill logs these with new timestamps, and a late resend of the
            # same epoch would then be a second point at the same step
            self._queue.clear()
            self._cond.notify()
        if left:
            self.say(
                f"MLflow at {self.tracker.shown} is still unreachable: epochs {left[0]}..{left[-1]} stay in the "
                "run directory and are logged when the flow (or `trainyard sync`) reaches it"
            )
        return left

    def _send_loop(self) -> None:
        delay = 1.0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                step, batch = self._queue[0]
            try:
                self.tracker.send_batch(self.run_id, batch)
            except TrackingError as exc:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    self.say(f"could not log epoch {step} to MLflow ({exc}); training goes on, epochs are spooled")
                with self._cond:
                    self._cond.wait(delay)  # close() wakes it for one more try
                    if self._closing:
                        delay = min(delay, 2.0)
                delay = min(delay * 2, 15.0)
                continue
            with self._cond:
                if self._queue:  # close() may have given the queue up while this one was in flight
                    self._queue.pop(0)
                waiting = len(self._queue)
            if self._down_since is not None:
                self.say(
                    f"MLflow is back after {time.monotonic() - self._down_since:.0f} s; "
                    f"logging spooled epochs from {step} ({waiting} more queued)"
                )
                self._down_since = None
            delay = 1.0


# MLflow's monitors that sample every GPU of the host (NVIDIA, AMD).
_HOST_GPU_MONITORS = frozenset({"GPUMonitor", "ROCMMonitor"})


def system_metrics(
    run_id: str, uri: str, say: Callable[[str], None], gpu: Any = None
) -> contextlib.AbstractContextManager[None]:
    """MLflow's own system metrics (``system/cpu_utilization_percentage``, memory, disk, network) for
    the run, while the training lasts; the UI's System metrics tab shows them. Never fails a training:
    without them it just goes on.

    GPUs: MLflow's own GPU monitor samples every GPU of the host, other jobs' included; it is
    replaced by ``gpu`` (tasks.adapters.nvml.GpuSampler, the job's GPUs only), or dropped for a
    training without GPUs."""

    monitors: list[Any] = []

    def start() -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            from tasks.redact import redact_log_handlers

            redact_log_handlers()  # mlflow's logger is configured now; its warnings may name the URI

            interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 5)
            monitor = SystemMetricsMonitor(  # type: ignore[no-untyped-call]
                run_id, sampling_interval=interval, resume_logging=True, tracking_uri=uri
            )
            # MLflow's monitors live in `monitors` (tests/tasks/adapters/test_mlflow_tracking.py pins it)
            kept = [m for m in monitor.monitors if type(m).__name__ not in _HOST_GPU_MONITORS]
            monitor.monitors = kept + ([gpu] if gpu is not None else [])
            monitor.start()  # type: ignore[no-untyped-call]
            monitors.append(monitor)
        except Exception as exc:  # psutil missing, a store that refuses: no system metrics, same training
            say(f"no system metrics for this run ({_short(exc)})")

    @contextlib.contextmanager
    def monitored() -> Iterator[None]:
        # started beside the training rather than before it: the monitor's set-up (its GPU probe, a
        # read of the run) took 0.5 s that the training's own start-up would otherwise wait for
        starter = threading.Thread(target=start, name="trainyard-system-metrics", daemon=True)
        starter.start()
        try:
            yield
        finally:
            starter.join()
            for monitor in monitors:
                with contextlib.suppress(Exception):
                    monitor.finish()

    return monitored()


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store could not be reached (worth a retry later), not that it refused."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, (RequestException, OSError, OperationalError)):
        return True  # connection refused/reset, timeouts, DNS; a locked or vanished SQLite file
    if isinstance(exc, MlflowException):
        text = str(exc)
        return (
            exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
            or "failed with exception" in text  # rest_utils wraps requests' connection errors so
            or "Max retries exceeded" in text
            or "timed out" in text
        )
    return False


def backfill_epochs(tracker: Tracker, run_id: str, run_dir: Path) -> int:
    """Log every epoch of ``run_dir`` that the run is missing; return how many.

    Epochs come from epochs.jsonl (exact values), else from Ultralytics' results.csv (6
    significant digits: a training that wrote no epochs.jsonl, or an epoch it could not record).
    Live logging never holds up a training, so the flow closes any gap once training has ended.
    """
    from tasks.job import EPOCHS_FILE, read_epochs

    exact, _ = read_epochs(run_dir / EPOCHS_FILE)
    rows = {
        int(row["epoch"]): {k: v for k, v in row.items() if k != "epoch"}
        for row in read_results_csv(run_dir / "results.csv")
    }
    epochs = {**rows, **exact}
    if not epochs:
        return 0
    probe = next(iter(epochs[min(epochs)]))
    have = {step for step, _ in tracker.metric_history(run_id, probe)}
    missing = sorted(e for e in epochs if e not in have)
    for step in missing:
        tracker.log_metrics(run_id, epochs[step], step=step)
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
    text = redact(str(exc)).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def iter_artifacts(run_dir: Path, patterns: Iterable[str]) -> list[Path]:
    """Files in ``run_dir`` matching any glob pattern, sorted, without duplicates."""
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in run_dir.glob(pattern) if p.is_file())
    return sorted(found)
