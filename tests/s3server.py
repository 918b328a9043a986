"""Pytest plugin: a real S3 API (moto's standalone server) and a fault-injecting proxy.

Tests talk HTTP to a real server through boto3 -- nothing in boto3 is mocked -- so
retries, timeouts, connection pools and streaming are exercised as in production.

- :class:`MotoServer` / ``moto_server`` (session scope): ``python -m moto.server`` in its
  own process group on a free loopback port; ``stop()``/``start()`` can kill and restart it
  (same port). moto keeps everything in memory: **a restart loses all buckets**. Tests that
  stop the server should use their own :class:`MotoServer` rather than the shared one.
- ``s3_env`` (function scope): AWS_* variables pointing boto3 at ``moto_server`` with
  dummy credentials, and every other credential source disabled.
- :class:`FaultProxy` / ``fault_proxy``: a reverse proxy in front of moto that injects
  500s, timeouts, stalls mid-body, corrupted and truncated bodies -- deterministically.
- :func:`make_bucket`, :func:`put_multipart`, :func:`unique_bucket`: test data helpers.

Every server here binds 127.0.0.1 only and is stopped by its fixture.
"""

from __future__ import annotations

import collections
import hashlib
import html
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection, HTTPException
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import pytest

TEST_KEY_ID = "testing"
TEST_SECRET = "testing"
TEST_REGION = "us-east-1"

# Variables that could make boto3 use something other than the test server/credentials.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_bucket(prefix: str = "ty") -> str:
    """A fresh valid bucket name, so tests sharing one moto server never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# --------------------------------------------------------------------------- moto server


class MotoServer:
    """moto's standalone S3 server in a child process (its own process group).

    ``start()`` waits until it answers HTTP; ``stop()`` terminates it (SIGTERM, then
    SIGKILL after 10 s). Restarting reuses the port; moto's state is in memory, so a
    restart starts with no buckets.
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        if self.running:
            return
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto server on {self.endpoint} did not answer within {timeout:.0f} s")

    def stop(self, kill: bool = False) -> None:
        """Terminate the server (``kill=True``: SIGKILL at once, like a crash)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            proc.wait(timeout=10)

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- data helpers


def _boto_client(endpoint: str) -> Any:
    import boto3
    import botocore.config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=TEST_REGION,
        aws_access_key_id=TEST_KEY_ID,
        aws_secret_access_key=TEST_SECRET,
        config=botocore.config.Config(max_pool_connections=16, retries={"max_attempts": 3, "mode": "standard"}),
    )


def make_bucket(endpoint: str, name: str, files: dict[str, bytes], workers: int = 16) -> str:
    """Create bucket ``name`` on ``endpoint`` and put ``files`` (key -> bytes) concurrently.

    Uses plain boto3 with the dummy test credentials (independent of the code under test).
    Returns ``s3://name``.
    """
    client = _boto_client(endpoint)
    client.create_bucket(Bucket=name)
    if files:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=name, Key=kv[0], Body=kv[1]), files.items()))
    return f"s3://{name}"


def put_object(endpoint: str, bucket: str, key: str, data: bytes) -> str:
    """Put one object; return its ETag without quotes."""
    return str(_boto_client(endpoint).put_object(Bucket=bucket, Key=key, Body=data)["ETag"]).strip('"')


def put_multipart(endpoint: str, bucket: str, key: str, parts: list[bytes]) -> str:
    """Upload ``key`` as a multipart upload of ``parts`` (all but the last >= 5 MiB); return the ETag."""
    client = _boto_client(endpoint)
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    done = []
    for number, data in enumerate(parts, start=1):
        resp = client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data)
        done.append({"PartNumber": number, "ETag": resp["ETag"]})
    resp = client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    return str(resp["ETag"]).strip('"')


# --------------------------------------------------------------------------- fault proxy

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class FaultProxy:
    """A threaded HTTP reverse proxy in front of an S3 endpoint that injects faults.

    Rate faults apply only to GET-object requests (a GET whose path names a key, so
    listings are never hit). Whether request number ``n`` for ``key`` fails is decided by
    ``random.Random(f"{seed}:{key}:{n}")`` -- deterministic whatever the thread order:

    - ``error_rate``: answered ``500 InternalError`` without reaching the upstream;
    - ``timeout_rate``: nothing is sent for ``delay`` s, then the connection is closed
      (set ``delay`` above the client's read timeout);
    - ``stall_rate``: headers and half the body are sent, then it stalls ``delay`` s
      and closes (a read timeout in the middle of the body).

    Keyed faults (``corrupt`` / ``truncate`` / ``redirect``: key -> how many more GETs of
    that key to hit; use a large number for "always"): ``corrupt`` flips one byte of the
    body (same length, so only a checksum can notice); ``truncate`` announces the full
    Content-Length, sends half and closes the connection; ``redirect`` answers AWS's
    ``301 PermanentRedirect`` for a bucket in another region.

    ``kms_keys`` (a set of keys) emulates what AWS does and moto does not: an object
    encrypted with SSE-KMS gets an ETag that is not its MD5. The proxy rewrites those
    keys' ETags in listings and GET/HEAD responses and maps ``If-Match`` back.

    Only bodies with a Content-Length are forwarded (boto3 sends those for the requests
    tests make); ``counts`` tallies requests and injected faults.
    """

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        error_rate: float = 0.0,
        timeout_rate: float = 0.0,
        stall_rate: float = 0.0,
        delay: float = 3.0,
    ) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.seed = seed
        self.error_rate = error_rate
        self.timeout_rate = timeout_rate
        self.stall_rate = stall_rate
        self.delay = delay
        self.corrupt: dict[str, int] = {}
        self.truncate: dict[str, int] = {}
        self.redirect: dict[str, int] = {}
        self.kms_keys: set[str] = set()
        self._real_etags: dict[str, str] = {}  # rewritten ETag -> moto's
        self.counts: collections.Counter[str] = collections.Counter()
        self._per_key: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def configure(self, **settings: Any) -> None:
        """Change fault settings (any constructor keyword, ``corrupt``, ``truncate``)."""
        with self._lock:
            for name, value in settings.items():
                if not hasattr(self, name) or name.startswith("_"):
                    raise AttributeError(f"FaultProxy has no setting {name!r}")
                setattr(self, name, value)

    def decide(self, method: str, key: str) -> str | None:
        """The fault for this request (``None`` for none); counts it."""
        if method != "GET" or not key:
            return None
        with self._lock:
            self.counts["get"] += 1
            for name, table in (("corrupt", self.corrupt), ("truncate", self.truncate), ("redirect", self.redirect)):
                if table.get(key, 0) > 0:
                    table[key] -= 1
                    self.counts[name] += 1
                    return name
            n = self._per_key[key]
            self._per_key[key] += 1
            r = random.Random(f"{self.seed}:{key}:{n}").random()
            for name, rate in (("error", self.error_rate), ("timeout", self.timeout_rate), ("stall", self.stall_rate)):
                if r < rate:
                    self.counts[name] += 1
                    return name
                r -= rate
        return None

    def kms_etag(self, real: str) -> str:
        """The ETag AWS would give an SSE-KMS object: 32 hex digits that are not its MD5."""
        fake = hashlib.md5(b"sse-kms:" + real.encode()).hexdigest()
        with self._lock:
            self._real_etags[fake] = real
        return fake

    def real_etag(self, etag: str) -> str:
        with self._lock:
            return self._real_etags.get(etag, etag)

    def start(self) -> None:
        proxy = self

        class Handler(_ProxyHandler):
            pass

        Handler.proxy = proxy
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._stopping.clear()
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a timeout/stall
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: FaultProxy
    _conn: HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._conn is not None:
                self._conn.close()

    def _upstream(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):  # a kept-alive upstream connection may have been closed
            if self._conn is None:
                self._conn = HTTPConnection(*self.proxy._upstream, timeout=30)
            try:
                self._conn.request(self.command, self.path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                return resp.status, resp.getheaders(), data
            except (OSError, HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _forward(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(501, "FaultProxy forwards only bodies with a Content-Length")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = urlsplit(self.path).path.lstrip("/")
        key = unquote(path.partition("/")[2])
        fault = self.proxy.decide(self.command, key)
        stopping = self.proxy._stopping
        if key in self.proxy.kms_keys and self.headers.get("If-Match"):
            real = self.proxy.real_etag(self.headers["If-Match"].strip('"'))
            del self.headers["If-Match"]
            self.headers["If-Match"] = f'"{real}"'

        if fault == "error":
            payload = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code><Message>injected by FaultProxy</Message></Error>"
            self.send_response(500)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if fault == "redirect":
            bucket = path.partition("/")[0]
            payload = (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>PermanentRedirect</Code><Message>The bucket "
                "you are attempting to access must be addressed using the specified endpoint.</Message>"
                f"<Bucket>{bucket}</Bucket><Endpoint>{bucket}.s3.eu-west-1.amazonaws.com</Endpoint></Error>"
            ).encode()
            self.send_response(301)
            self.send_header("Content-Type", "application/xml")
            self.send_header("x-amz-bucket-region", "us-east-1")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if fault == "timeout":
            stopping.wait(self.proxy.delay)
            self.close_connection = True
            return
        try:
            status, headers, data = self._upstream(body)
        except (OSError, HTTPException):
            self.send_error(502, "FaultProxy: upstream unreachable")
            return
        if self.proxy.kms_keys:
            headers, data = self._rewrite_kms_etags(key, headers, data)
        if fault == "corrupt" and data:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        self.send_response(status)
        upstream_length = None
        for name, value in headers:
            if name.lower() == "content-length":
                upstream_length = value
            elif name.lower() not in _HOP_BY_HOP and name.lower() not in ("date", "server"):
                self.send_header(name, value)
        announced = upstream_length if self.command == "HEAD" and upstream_length else str(len(data))
        self.send_header("Content-Length", announced)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault in ("truncate", "stall"):
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if fault == "stall":
                stopping.wait(self.proxy.delay)
            self.close_connection = True
            return
        self.wfile.write(data)

    def _rewrite_kms_etags(
        self, key: str, headers: list[tuple[str, str]], data: bytes
    ) -> tuple[list[tuple[str, str]], bytes]:
        proxy = self.proxy
        if key in proxy.kms_keys and self.command in ("GET", "HEAD"):
            headers = [(n, f'"{proxy.kms_etag(v.strip(chr(34)))}"' if n.lower() == "etag" else v) for n, v in headers]
        elif not key and self.command == "GET" and b"<ListBucketResult" in data[:500]:

            def one(match: re.Match[bytes]) -> bytes:
                block = match.group(0)
                listed = re.search(rb"<Key>([^<]*)</Key>", block)
                if listed is None or html.unescape(listed.group(1).decode()) not in proxy.kms_keys:
                    return block
                return re.sub(
                    rb"([0-9a-f]{32})(?=(&quot;|&#34;|\")</ETag>)",
                    lambda m: proxy.kms_etag(m.group(1).decode()).encode(),
                    block,
                )

            data = re.sub(rb"<Contents>.*?</Contents>", one, data, flags=re.DOTALL)
        return headers, data

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the session (see :class:`MotoServer`; restart loses state)."""
    server = MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _point_env_at(monkeypatch: pytest.MonkeyPatch, tmp: Path, endpoint: str | None) -> None:
    for name in _AWS_VARS_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    # No ~/.aws files, no instance metadata lookups (slow, and never the test's creds).
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    if endpoint is not None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def s3_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Point boto3's default chain at ``moto_server`` with dummy credentials; return its endpoint."""
    _point_env_at(monkeypatch, tmp_path, moto_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    return moto_server.endpoint


@pytest.fixture
def no_aws_credentials(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Like ``s3_env`` but with no credentials anywhere in the chain; returns the endpoint."""
    _point_env_at(monkeypatch, tmp_path, moto_server.endpoint)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    return moto_server.endpoint


@pytest.fixture
def fault_proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    """A started :class:`FaultProxy` in front of ``moto_server`` (no faults until configured)."""
    proxy = FaultProxy(moto_server.endpoint)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
