"""The "up to date" question asked of an MLflow store without importing mlflow.

Importing mlflow and opening its store costs about 2 s of CPU (bench/overhead.py measures it),
more than the whole answer may take (issue 15's target: 2 s, within 2x of `dvc repro`'s no-op).
The question is narrow: the newest FINISHED, active run of one experiment whose tags equal
given values, plus the aliases of the model version it registered. That much is read here:

- from a tracking server, through MLflow's documented REST API (``/api/2.0/mlflow/...``), the
  same calls MlflowClient makes;
- from a SQLite store, with one read-only query on MLflow's tables (``runs``, ``tags``,
  ``params``, ``latest_metrics``, ``registered_model_aliases``), in MLflow's own order
  (start_time descending, then run id).

tests/tasks/test_mlflow_lookup.py pins both against MlflowClient's answers on real stores (a
SQLite file and a real `mlflow server`), so an MLflow upgrade that changes either shows there.
Anything this module does not know (another scheme, an auth plugin, workspaces, a table it
cannot read) raises :class:`LookupUnavailable`, and the caller asks MLflow itself.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from tasks.adapters.mlflow_tracking import ModelVersionRecord, RunRecord
from tasks.errors import TrackingError
from tasks.redact import redact, split_userinfo

# settings MlflowClient honours that change how it reaches a server; with any of them set, it answers
_CLIENT_SETTINGS = (
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_WORKSPACE",
    "MLFLOW_ENABLE_WORKSPACES",
)


class LookupUnavailable(Exception):
    """This store (or this configuration) is not one the quick lookup reads; ask MLflow."""


class StoreLookup:
    """Read-only answers from the store at ``uri`` (``sqlite:///...`` or ``http(s)://...``)."""

    def __init__(self, uri: str, timeout: float = 5.0) -> None:
        if any(os.environ.get(name) for name in _CLIENT_SETTINGS):
            raise LookupUnavailable("MLflow client settings in the environment")
        if uri.startswith("sqlite:///"):
            self._impl: _Sqlite | _Rest = _Sqlite(Path(uri.removeprefix("sqlite:///")))
        elif uri.startswith(("http://", "https://")):
            self._impl = _Rest(uri, timeout)
        else:
            raise LookupUnavailable(f"tracking URI scheme of {redact(uri)}")

    def latest_finished_run(self, experiment: str, tags: Mapping[str, str]) -> RunRecord | None:
        """The most recently started FINISHED, active run of ``experiment`` carrying every tag in ``tags``."""
        return self._impl.latest_finished_run(experiment, dict(tags))

    def model_version(self, name: str, version: str) -> ModelVersionRecord:
        """Registered model ``name``'s ``version``: its run and aliases (tags and source left empty)."""
        return self._impl.model_version(name, version)


class _Sqlite:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection | None:
        if not self.path.is_file():
            return None  # no store yet: no runs (the flow creates it)
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=10)

    def latest_finished_run(self, experiment: str, tags: dict[str, str]) -> RunRecord | None:
        db = self._connect()
        if db is None:
            return None
        try:
            ids = db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)).fetchall()
            if len(ids) != 1:
                if ids:  # one name in several workspaces: MLflow knows which one is meant
                    raise LookupUnavailable(f"experiment {experiment!r} is in several workspaces")
                return None
            sql = [
                "SELECT run_uuid, name, status, experiment_id FROM runs r",
                "WHERE experiment_id = ? AND status = 'FINISHED' AND lifecycle_stage = 'active'",
            ]
            args: list[Any] = [ids[0][0]]
            for key, value in tags.items():
                sql.append(
                    "AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ?)"
                )
                args += [key, value]
            sql.append("ORDER BY start_time DESC, run_uuid LIMIT 1")  # MLflow's order for this search
            row = db.execute(" ".join(sql), args).fetchone()
            if row is None:
                return None
            run_id = row[0]

            def pairs(table: str) -> dict[str, str]:
                return dict(db.execute(f"SELECT key, value FROM {table} WHERE run_uuid = ?", (run_id,)).fetchall())  # noqa: S608 - fixed table names

            metrics = {
                key: math.nan if is_nan else float(value)
                for key, value, is_nan in db.execute(
                    "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)
                )
            }
            return RunRecord(
                run_id=run_id,
                name=row[1] or "",
                status=row[2],
                experiment_id=str(row[3]),
                params=pairs("params"),
                tags=pairs("tags"),
                metrics=metrics,
            )
        except sqlite3.Error as exc:  # a schema this module does not know, a store being migrated
            raise LookupUnavailable(f"SQLite store {self.path}: {exc}") from exc
        finally:
            db.close()

    def model_version(self, name: str, version: str) -> ModelVersionRecord:
        db = self._connect()
        if db is None:
            raise LookupUnavailable(f"no SQLite store at {self.path}")
        try:
            found = db.execute(
                "SELECT run_id FROM model_versions WHERE name = ? AND version = ? AND current_stage != 'Deleted_Internal'",
                (name, int(version)),
            ).fetchone()
            if found is None:
                raise LookupUnavailable(f"no version {version} of {name!r}")
            aliases = [
                a
                for (a,) in db.execute(
                    "SELECT alias FROM registered_model_aliases WHERE name = ? AND version = ? ORDER BY alias",
                    (name, int(version)),
                )
            ]
        except (sqlite3.Error, ValueError) as exc:
            raise LookupUnavailable(f"SQLite store {self.path}: {exc}") from exc
        finally:
            db.close()
        return ModelVersionRecord(name, version, found[0] or "", "", {}, tuple(aliases))


class _Rest:
    def __init__(self, uri: str, timeout: float) -> None:
        bare, user, password = split_userinfo(uri)
        self.base = bare.rstrip("/") + "/api/2.0/mlflow/"
        self.shown = redact(uri)
        self.timeout = timeout
        user = user if user is not None else os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = password if password is not None else os.environ.get("MLFLOW_TRACKING_PASSWORD")
        self.auth: str | None = None
        if user is not None:  # as MlflowClient: basic auth from the URL or MLFLOW_TRACKING_USERNAME/PASSWORD
            self.auth = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            self.auth = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]

    def _call(self, endpoint: str, query: Mapping[str, str] | None = None, body: Any = None) -> Any:
        url = self.base + endpoint + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
        request.add_header("Content-Type", "application/json")
        if self.auth:
            request.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310 - user-configured URI
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                code = json.loads(exc.read() or b"{}").get("error_code")
            except ValueError:
                code = None
            if code == "RESOURCE_DOES_NOT_EXIST":
                return None
            # 401/403, a proxy's page, an old server: MlflowClient explains those better
            raise LookupUnavailable(f"{self.shown} answered {exc.code} on {endpoint}") from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {self.shown} is not reachable ({reason})", transient=True
            ) from None

    def latest_finished_run(self, experiment: str, tags: dict[str, str]) -> RunRecord | None:
        found = self._call("experiments/get-by-name", {"experiment_name": experiment})
        if not found:
            return None
        clauses = [f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items()] + ["attributes.status = 'FINISHED'"]
        answer = self._call(
            "runs/search",
            body={
                "experiment_ids": [found["experiment"]["experiment_id"]],
                "filter": " and ".join(clauses),
                "run_view_type": "ACTIVE_ONLY",
                "max_results": 1,
                "order_by": ["attributes.start_time DESC"],
            },
        )
        runs = (answer or {}).get("runs") or []
        if not runs:
            return None
        info, data = runs[0]["info"], runs[0].get("data", {})

        def pairs(name: str) -> dict[str, str]:
            return {p["key"]: p.get("value", "") for p in data.get(name, [])}

        return RunRecord(
            run_id=info["run_id"],
            name=info.get("run_name", ""),
            status=info["status"],
            experiment_id=str(info["experiment_id"]),
            params=pairs("params"),
            tags=pairs("tags"),
            metrics={m["key"]: float(m["value"]) for m in data.get("metrics", [])},
        )

    def model_version(self, name: str, version: str) -> ModelVersionRecord:
        found = self._call("model-versions/get", {"name": name, "version": version})
        if not found:
            raise LookupUnavailable(f"no version {version} of {name!r}")
        mv = found["model_version"]
        return ModelVersionRecord(
            name,
            str(mv["version"]),
            mv.get("run_id", ""),
            mv.get("source", ""),
            {t["key"]: t.get("value", "") for t in mv.get("tags", [])},
            tuple(mv.get("aliases", [])),
        )


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
