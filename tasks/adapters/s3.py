"""S3 / MinIO access for staging datasets: the one module of trainyard that imports boto3.

Why a module of its own
-----------------------
Flows stage datasets from object storage onto local SSD before training (training from
the network starves GPUs). Everything S3-specific lives here, behind a small typed API,
so the rest of the project never sees a botocore exception: every failure becomes a
:class:`~tasks.errors.DataSourceError` whose message names the object and says what to do.

``boto3``/``botocore`` are imported lazily (inside :class:`S3Client`), never at import
time: importing them costs ~0.3 s and most commands never touch S3.

Design notes
------------
* **Credentials** come only from the standard AWS chain (environment variables, a
  profile, SSO, a container/instance role) through ``boto3.Session(profile_name=...)``.
  They are never accepted as arguments and never logged or put in messages.
  The endpoint comes from ``endpoint_url`` or, when that is ``None``, from
  ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` / the profile's ``endpoint_url``,
  which botocore >= 1.31 resolves itself (MinIO and moto are reached this way).
* **One client** per :class:`S3Client`, shared by all worker threads (botocore clients
  are thread-safe; sessions are not, so the session is used only in the constructor).
  Its connection pool is as large as the thread pool, because datasets are many small
  files and throughput is bound by request latency, not bandwidth.
* **Small objects** are fetched with one streamed GET, not ``download_file``:
  s3transfer's per-object setup (HEAD request, futures, temp file bookkeeping)
  dominates for 30 KB images. The GET is presigned locally (SigV4) and sent through
  the botocore client's own HTTP session (same pool, proxies, TLS, timeouts), which
  skips botocore's per-request machinery; ``get_object`` remains the fallback (and is
  used for buckets that answer with a cross-region redirect). Signed URLs carry
  credentials, so they are never logged by this module or put into messages.
* **Integrity**: every download is hashed while it streams and checked against the
  store's own checksum before the file is renamed into place -- never by size alone:
  the MD5 when the ETag is a plain MD5 (single-part, not SSE-KMS/SSE-C); else an S3
  additional checksum (``HEAD`` with ``ChecksumMode=ENABLED``: SHA256, SHA1, CRC32, and
  CRC32C/CRC64NVME where botocore has awscrt; full-object or composite); else the
  multipart ETag ``md5(md5(part 1) .. md5(part N))-N``, recomputed from the file with
  the part size from ``HEAD ?partNumber=1``. An object none of these can vouch for is
  refused with a :class:`~tasks.errors.DataSourceError` (see docs/staging.md). The GET
  carries ``If-Match: <listed ETag>`` so an object overwritten between listing and
  download fails loudly instead of silently mixing two dataset versions.
* **Retries**, two layers, both bounded:

  1. botocore's ``standard`` retry mode (``max_attempts=retries``; mirrored by
     :meth:`S3Client._fetch` for presigned GETs) retries each HTTP
     request on 5xx, throttling, and connection/read timeouts, with jittered
     exponential backoff (0.05 s * 2^n for errors, 1 s * 2^n for throttling, at most
     20 s) and a client-wide retry quota that stops retry storms when a server is down.
  2. :meth:`S3Client.download` / :meth:`S3Client.download_many` retry a whole object
     download up to ``retries`` attempts with 0.2 s * 2^n backoff (+ jitter, at most
     5 s) for what botocore cannot retry: errors while the body streams (resets,
     truncation, read timeouts mid-body), checksum mismatches, and transient errors
     left over after layer 1. 403/404/412 and local disk errors are never retried.

  Worst case a single object therefore sees ``retries * retries`` HTTP attempts; the
  retry quota caps this across the client when the endpoint is really gone.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import random
import re
import tempfile
import threading
import zlib
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tasks.errors import DataSourceError, TransientSourceError

__all__ = [
    "ChecksumError",
    "RemoteObject",
    "S3Client",
    "S3Location",
    "etag_md5",
    "parse_s3_url",
]

VALID_FORM = '"s3://bucket/prefix"'
_CHUNK = 1024 * 1024
# put_object takes bodies up to 5 GiB, but above this upload_file's multipart is faster.
_MULTIPART_THRESHOLD = 64 * 1024 * 1024
_BACKOFF_BASE = 0.2
_BACKOFF_MAX = 5.0
_CREDENTIALS_HINT = "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role"
# S3 bucket naming rules (general purpose buckets): 3-63 chars of a-z, 0-9, ".", "-",
# starting and ending with a letter or digit; not formatted like an IPv4 address.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_MD5_RE = re.compile(r"[0-9a-f]{32}")
_MULTIPART_ETAG_RE = re.compile(r"([0-9a-f]{32})-(\d{1,5})")
# S3 additional checksums, in order of preference (HEAD response field suffixes).
_CHECKSUM_ALGOS = ("SHA256", "SHA1", "CRC64NVME", "CRC32C", "CRC32")
# Error codes that mean "try again later" even when the HTTP status is not 5xx.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "TooManyRequestsException",
    }
)
_ACCESS_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem"})
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)


class ChecksumError(TransientSourceError):
    """A downloaded object's size or MD5 differs from what the listing promised.

    Raised separately from other source errors because it may be transient (a
    corrupted transfer) and is retried, and because it must never be ignored: a
    mismatching file would silently change the dataset that gets trained on.
    """


# --------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix: where one dataset version lives.

    ``prefix`` is normalised on construction (no leading ``/``, a trailing ``/`` unless
    empty) so ``s3://b/data`` can never also match the sibling ``s3://b/data-old``.
    """

    bucket: str
    prefix: str = ""

    def __post_init__(self) -> None:
        if not _valid_bucket(self.bucket):
            raise DataSourceError(
                f"invalid S3 bucket name {self.bucket!r}: use 3-63 lowercase letters, digits, "
                "'.' or '-', starting and ending with a letter or digit"
            )
        prefix = self.prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        bad = _unsafe_reason(prefix[:-1]) if prefix else None
        if bad:
            raise DataSourceError(f"invalid S3 prefix {self.prefix!r}: {bad}")
        object.__setattr__(self, "prefix", prefix)

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` without the trailing ``/`` (parses back to the same location)."""
        return f"s3://{self.bucket}/{self.prefix.rstrip('/')}" if self.prefix else f"s3://{self.bucket}"

    def key_url(self, key: str) -> str:
        """The ``s3://`` URL of one key in this bucket, for messages."""
        return f"s3://{self.bucket}/{key}"


def parse_s3_url(url: str) -> S3Location:
    """Parse ``s3://bucket/some/prefix`` (prefix optional) into an :class:`S3Location`.

    Strict on purpose: a typo in ``data.source`` should fail here with the valid form,
    not later as an empty listing or a request against a different bucket.
    """
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise DataSourceError(f"not an S3 URL: {url!r}; the valid form is {VALID_FORM}")
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise DataSourceError(f"S3 URL {url!r} names no bucket; the valid form is {VALID_FORM}")
    if not _valid_bucket(bucket):
        raise DataSourceError(
            f"S3 URL {url!r} has an invalid bucket name {bucket!r} (3-63 lowercase letters, "
            f"digits, '.' or '-'); the valid form is {VALID_FORM}"
        )
    body = prefix[:-1] if prefix.endswith("/") else prefix
    if body:
        bad = _unsafe_reason(body)
        if bad:
            raise DataSourceError(f"S3 URL {url!r} has an invalid prefix: {bad}; the valid form is {VALID_FORM}")
    return S3Location(bucket, prefix)


def _valid_bucket(name: str) -> bool:
    return (
        isinstance(name, str)
        and _BUCKET_RE.fullmatch(name) is not None
        and ".." not in name
        and _IPV4_RE.fullmatch(name) is None
    )


def _unsafe_reason(path: str) -> str | None:
    """Why a "/"-separated relative path is unsafe to map onto a local directory, or None."""
    if not path:
        return "it is empty"
    if path.startswith("/"):
        return "it starts with '/'"
    if "\x00" in path:
        return "it contains a NUL character"
    for segment in path.split("/"):
        if segment == "":
            return "it has an empty path segment ('//')"
        if segment in (".", ".."):
            return f"it has a {segment!r} path segment"
    return None


# --------------------------------------------------------------------------- objects


def etag_md5(etag: str) -> str | None:
    """The MD5 an ETag stands for, or None when it is not a plain MD5.

    Single-part uploads get their content MD5 as ETag; multipart uploads get
    ``<md5 of part md5s>-<parts>``, which says nothing about the bytes. (Objects
    encrypted with SSE-KMS/SSE-C also have non-MD5 ETags; :class:`S3Client` detects
    those from the GET response and then skips the comparison.)
    """
    tag = etag.strip().strip('"').lower()
    return tag if _MD5_RE.fullmatch(tag) else None


@dataclass(frozen=True)
class RemoteObject:
    """One listed object: what to fetch and how to verify it.

    ``bucket`` is carried along (an addition to the key/relpath/size/etag/md5 the caller
    needs) so :meth:`S3Client.download` needs nothing but the object itself.
    """

    bucket: str
    key: str
    relpath: str  # key relative to the listed prefix, "/"-separated, validated safe
    size: int
    etag: str  # without quotes
    md5: str | None  # the ETag when it is a plain single-part MD5, else None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


# --------------------------------------------------------------------------- client


class S3Client:
    """A thread-safe S3 client for listing, verified downloads and test/snapshot uploads.

    Construction creates one botocore client (loading its service model takes ~0.1 s);
    reuse the instance for a whole staging run.
    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        max_workers: int = 32,
        retries: int = 5,
        connect_timeout: float = 5,
        read_timeout: float = 30,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        if retries < 1:
            raise ValueError("retries must be >= 1 (it counts attempts, the first included)")
        import boto3
        import botocore.config
        import botocore.exceptions

        _load_urllib3()

        self._exc = botocore.exceptions
        self.max_workers = max_workers
        self.retries = retries
        try:
            session = boto3.Session(profile_name=profile)
        except botocore.exceptions.ProfileNotFound:
            raise DataSourceError(
                f"AWS profile {profile!r} is not configured; add it to ~/.aws/config or unset it "
                "and use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance role"
            ) from None
        try:
            # Resolved once here; the client keeps (and refreshes) the same credentials.
            self._has_credentials = session.get_credentials() is not None
        except botocore.exceptions.BotoCoreError as exc:
            raise DataSourceError(
                f"AWS credentials could not be loaded: {type(exc).__name__}; {_CREDENTIALS_HINT}"
            ) from None
        config = botocore.config.Config(
            max_pool_connections=max_workers,
            retries={"max_attempts": retries, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Only send checksums S3 requires: newer default trailers break many MinIO/Ceph
            # versions. Uploads carry Content-MD5 instead (see upload_dir).
            request_checksum_calculation="when_required",
        )
        try:
            self._client: Any = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        except (ValueError, botocore.exceptions.BotoCoreError) as exc:
            raise DataSourceError(f"cannot create an S3 client for endpoint {endpoint_url!r}: {exc}") from None
        self.endpoint: str = self._client.meta.endpoint_url
        # Fast GET path (see _fetch): presigned URLs sent through the client's own HTTP
        # session. Explicit SigV4, because botocore presigns with SigV2 unless told
        # otherwise; a second client, so the main one keeps botocore's signer choice.
        self._http: Any = getattr(getattr(self._client, "_endpoint", None), "http_session", None)
        self._presigner: Any = None
        if self._http is not None and hasattr(self._http, "send"):
            try:
                self._presigner = session.client(
                    "s3",
                    endpoint_url=endpoint_url,
                    region_name=region,
                    config=config.merge(botocore.config.Config(signature_version="s3v4")),
                )
            except (ValueError, botocore.exceptions.BotoCoreError):
                self._presigner = None
        self._slow_buckets: set[str] = set()  # buckets that need botocore's region redirects
        self._quota = _RetryQuota()

    # ------------------------------------------------------------------ listing

    def list_objects(self, loc: S3Location) -> list[RemoteObject]:
        """Every object under ``loc`` (all pages), sorted by relpath, each checked safe.

        Zero-byte keys ending in ``/`` are directory markers (made by consoles and some
        sync tools) and are skipped. Any key that could not be written inside a local
        directory (``..``/``.`` segments, ``//``, a leading ``/``, a file that is also a
        "directory" of another key) is an error naming the key: nothing may ever be
        written outside the staging directory, and silently dropping files would change
        the dataset.
        """
        self._require_credentials(loc.url)
        paginator = self._client.get_paginator("list_objects_v2")
        objects: list[RemoteObject] = []
        try:
            for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.prefix):
                for item in page.get("Contents", ()):
                    obj = self._remote_object(loc, item)
                    if obj is not None:
                        objects.append(obj)
        except (self._exc.ClientError, self._exc.BotoCoreError) as exc:
            raise self._error(exc, loc.url, "listing") from None
        if not objects:
            raise DataSourceError(f"{loc.url} holds no objects (endpoint {self.endpoint}); check the bucket and prefix")
        objects.sort(key=lambda o: o.relpath)
        _check_file_dir_clashes(objects)
        return objects

    def _remote_object(self, loc: S3Location, item: dict[str, Any]) -> RemoteObject | None:
        key: str = item["Key"]
        size = int(item.get("Size", 0))
        relpath = key[len(loc.prefix) :] if key.startswith(loc.prefix) else key
        if key.endswith("/") and size == 0:
            return None  # a directory marker, including the marker equal to the prefix
        bad = _unsafe_reason(relpath)
        if bad:
            raise DataSourceError(
                f"refusing to stage {loc.key_url(key)}: its path relative to {loc.url} "
                f"({relpath!r}) is unsafe because {bad}; rename or delete the key"
            )
        etag = str(item.get("ETag", "")).strip('"')
        return RemoteObject(loc.bucket, key, relpath, size, etag, etag_md5(etag))

    # ------------------------------------------------------------------ downloads

    def download(self, obj: RemoteObject, dest: Path) -> str:
        """Download one object to ``dest`` (parents created), verified; return its MD5.

        Retried like :meth:`download_many`. On any failure ``dest`` is left untouched
        (the bytes go to a temporary ``.part`` file beside it, renamed only once verified).
        """
        self._require_credentials(obj.url)
        _check_relpath(obj)
        dest = Path(dest)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataSourceError(f"cannot create {dest.parent} for {obj.url}: {exc.strerror or exc}") from None
        return self._download_retrying(obj, dest, threading.Event())

    def download_many(
        self,
        objs: Sequence[RemoteObject],
        dest_root: Path,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, str]:
        """Download ``objs`` concurrently to ``dest_root/<relpath>``; return relpath -> MD5.

        Uses ``max_workers`` threads and one shared connection pool. Transient failures
        are retried per object (see the module docstring); the first permanent failure
        (or exhausted retries) cancels everything not yet started, waits for running
        downloads to stop, and raises. Files already verified stay in place; no partial
        file is ever left at a destination path. ``on_progress(files_done, bytes_done)``
        is called from the calling thread after each file, with cumulative counts.
        """
        if not objs:
            return {}
        self._require_credentials(objs[0].url)
        dest_root = Path(dest_root)
        seen: set[str] = set()
        parents: set[Path] = {dest_root}
        for obj in objs:
            _check_relpath(obj)
            if obj.relpath in seen:
                raise DataSourceError(f"{obj.url}: relpath {obj.relpath!r} appears twice in the objects to download")
            seen.add(obj.relpath)
            parents.add((dest_root / obj.relpath).parent)
        try:
            for parent in sorted(parents):
                parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataSourceError(f"cannot create directories under {dest_root}: {exc.strerror or exc}") from None

        stop = threading.Event()
        results: dict[str, str] = {}
        files_done = bytes_done = 0
        pool = ThreadPoolExecutor(max_workers=min(self.max_workers, len(objs)), thread_name_prefix="s3-get")
        try:
            owner: dict[Future[str], RemoteObject] = {
                pool.submit(self._download_retrying, obj, dest_root / obj.relpath, stop): obj for obj in objs
            }
            for fut in as_completed(owner):
                md5 = fut.result()  # re-raises the worker's DataSourceError at once
                obj = owner[fut]
                results[obj.relpath] = md5
                files_done += 1
                bytes_done += obj.size
                if on_progress is not None:
                    on_progress(files_done, bytes_done)
        except BaseException:
            stop.set()  # running workers abort between chunks / before their next attempt
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    def _download_retrying(self, obj: RemoteObject, dest: Path, stop: threading.Event) -> str:
        """Up to ``retries`` attempts with 0.2 s * 2^n backoff; permanent errors raise at once."""
        last: BaseException | None = None
        for attempt in range(self.retries):
            if stop.is_set():
                raise DataSourceError(f"download of {obj.url} cancelled after another download failed")
            try:
                return self._download_once(obj, dest, stop)
            except ChecksumError as exc:
                last = exc
            except (
                self._exc.ClientError,
                self._exc.BotoCoreError,
                OSError,
                http.client.HTTPException,
                _Urllib3Error,
            ) as exc:
                if not self._transient(exc):
                    raise self._error(exc, obj.url, "downloading") from None
                last = exc
            if attempt + 1 < self.retries:
                delay = min(_BACKOFF_BASE * 2**attempt, _BACKOFF_MAX) * (0.5 + random.random() / 2)
                stop.wait(delay)
        assert last is not None
        if isinstance(last, ChecksumError):
            raise ChecksumError(f"{last} (still wrong after {self.retries} attempts)") from None
        raise TransientSourceError(  # the flow's stage task retries these (and resumes)
            f"{obj.url} could not be downloaded after {self.retries} attempts "
            f"(endpoint {self.endpoint}); last error: {_describe(last)}"
        ) from None

    def _download_once(self, obj: RemoteObject, dest: Path, stop: threading.Event) -> str:
        """One GET streamed to a temporary file beside ``dest``, verified, then renamed."""
        headers, body, close = self._fetch(obj, stop)
        # With SSE-KMS / SSE-C the ETag is not the content MD5: verify size only.
        encrypted = headers.get("ServerSideEncryption", "").startswith("aws:kms") or bool(
            headers.get("SSECustomerAlgorithm")
        )
        expected_md5 = None if encrypted else obj.md5
        digest = hashlib.md5()  # noqa: S324 - content address (DVC's hash), not security
        size = 0
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except BaseException:
            close(False)
            raise
        try:
            complete = False
            try:
                with os.fdopen(fd, "wb") as fh:
                    for chunk in body:
                        if stop.is_set():
                            raise DataSourceError(f"download of {obj.url} cancelled after another download failed")
                        digest.update(chunk)
                        size += len(chunk)
                        fh.write(chunk)
                complete = True
            except self._exc.FlexibleChecksumError as exc:
                # botocore checks the server's CRC (when it sent one) on the final, empty
                # read: every byte is in ``digest`` by then, so report MD5s as usual.
                raise ChecksumError(
                    f"{obj.url}: checksum mismatch: expected md5 {expected_md5 or '(unknown, multipart)'}, "
                    f"got {digest.hexdigest()} ({size} of {obj.size} bytes); server checksum: {exc}"
                ) from None
            finally:
                close(complete)
            md5 = digest.hexdigest()
            if size != obj.size:
                raise ChecksumError(
                    f"{obj.url}: size mismatch: expected {obj.size} bytes, got {size} "
                    "(a truncated or corrupted transfer)"
                )
            if expected_md5 is not None and md5 != expected_md5:
                raise ChecksumError(
                    f"{obj.url}: md5 mismatch: expected {expected_md5}, got {md5} (a corrupted transfer)"
                )
            if expected_md5 is None:
                self.verify_file(obj, Path(tmp_name), encrypted)
            os.replace(tmp_name, dest)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        return md5

    def verify_file(self, obj: RemoteObject, path: Path, encrypted: bool = False) -> str:
        """Check ``path`` (``obj``'s downloaded bytes) against a checksum the store keeps; return which.

        For objects whose ETag is not their MD5. Raises :class:`ChecksumError` when the bytes
        differ, :class:`~tasks.errors.DataSourceError` when no checksum can be established
        (an encrypted object without additional checksums, or a non-MD5 ETag of unknown form).
        """
        head = self._head(obj, ChecksumMode="ENABLED")
        multipart = _MULTIPART_ETAG_RE.fullmatch(obj.etag.lower())
        parts = int(multipart.group(2)) if multipart else 1
        for algo in _CHECKSUM_ALGOS:
            value = str(head.get(f"Checksum{algo}") or "")
            factory = _checksum_factory(algo)
            if not value or factory is None:
                continue
            expected, _dash, count = value.partition("-")
            kind = str(head.get("ChecksumType") or "")
            tried = []
            if not count and kind != "COMPOSITE":
                tried.append(_b64_checksum(path, [obj.size], factory, composite=False))
                if expected in tried:
                    return algo.lower()
            if parts > 1 and kind != "FULL_OBJECT":
                sizes = self._part_sizes(obj, int(count or parts))
                tried.append(_b64_checksum(path, sizes, factory, composite=True))
                if expected in tried:
                    return f"{algo.lower()} (composite)"
            raise ChecksumError(
                f"{obj.url}: {algo} mismatch: the store says {value}, the downloaded bytes give "
                f"{' or '.join(tried)} (a corrupted transfer)"
            )
        if multipart and not encrypted:
            sizes = self._part_sizes(obj, parts)
            got = _multipart_etag(path, sizes)
            if got != obj.etag.lower() and 2 < parts <= 1000:
                sizes = self._part_sizes(obj, parts, exact=True)  # uploaded with unequal parts?
                got = _multipart_etag(path, sizes)
            if got != obj.etag.lower():
                raise ChecksumError(
                    f"{obj.url}: multipart ETag mismatch: expected {obj.etag}, the downloaded bytes "
                    f"give {got} ({parts} parts of {sizes[0]} bytes) (a corrupted transfer)"
                )
            return "multipart etag"
        why = "it is encrypted with SSE-KMS/SSE-C, so its ETag is not an MD5" if encrypted else "its ETag is not an MD5"
        raise DataSourceError(
            f"{obj.url} cannot be verified: {why}, and the store keeps no additional checksum for it "
            "(HEAD with ChecksumMode=ENABLED returned none trainyard can compute). Refusing to stage "
            "unverifiable bytes; re-upload it with a checksum, e.g. `aws s3 cp --checksum-algorithm SHA256` "
            "(or copy it onto itself with one) -- see docs/staging.md"
        )

    def _head(self, obj: RemoteObject, **extra: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self._client.head_object(Bucket=obj.bucket, Key=obj.key, **extra)
        except (self._exc.ClientError, self._exc.BotoCoreError) as exc:
            if self._transient(exc):
                raise
            raise self._error(exc, obj.url, "downloading") from None
        return response

    def _part_sizes(self, obj: RemoteObject, parts: int, exact: bool = False) -> list[int]:
        """Sizes of the ``parts`` parts of a multipart object (HEAD ``?partNumber=``).

        Uploaders (boto3, aws cli, mc, rclone) use equal parts but the last, so one HEAD of
        part 1 usually settles it; ``exact`` asks for every part. No If-Match here: some
        servers compare it with the part's ETag. A changed object cannot pass anyway, since
        the result is checked against the listed ETag/checksum.
        """
        if exact:
            return [int(self._head(obj, PartNumber=n)["ContentLength"]) for n in range(1, parts + 1)]
        first = int(self._head(obj, PartNumber=1)["ContentLength"])
        last = obj.size - first * (parts - 1)
        if first <= 0 or not 0 < last <= first:
            raise ChecksumError(f"{obj.url}: {parts} parts of {first} bytes cannot make {obj.size} bytes")
        return [first] * (parts - 1) + [last]

    def _fetch(self, obj: RemoteObject, stop: threading.Event) -> tuple[dict[str, str], Any, Callable[[bool], None]]:
        """Start the GET of ``obj``: (headers by botocore name, iterable of chunks, close).

        The fast path presigns the GET locally (SigV4, ``If-Match`` sent as a plain header)
        and sends it through the botocore client's own HTTP session -- same connection
        pool, proxies, TLS settings and timeouts -- skipping botocore's per-request
        machinery (serialisation, event hooks, response parsing), which cost ~1 ms of CPU
        per object. Error statuses become the ``ClientError`` botocore would raise and
        are retried like botocore's standard mode (layer 1). Buckets that answer with a
        redirect (a bucket in another region than the client's) fall back to
        ``get_object``, whose region redirector handles them.
        """
        if self._presigner is None or obj.bucket in self._slow_buckets:
            return self._fetch_boto(obj)
        attempt = 0
        while True:
            try:
                resp = self._send_presigned(obj)
                status = resp.status_code
                if status == 200:
                    self._quota.success(attempt > 0)
                    return self._stream(resp)
                if status in (301, 307, 400):
                    resp.raw.close()
                    self._slow_buckets.add(obj.bucket)
                    return self._fetch_boto(obj)
                raise self._client_error(resp)
            except (self._exc.ClientError, self._exc.ConnectionError, self._exc.HTTPClientError) as exc:
                if not self._transient(exc):
                    raise
                attempt += 1
                throttled = _throttling(exc)
                if attempt >= self.retries or not self._quota.acquire(exc) or stop.is_set():
                    raise
                base = 1.0 if throttled else 0.05
                stop.wait(random.random() * min(base * 2 ** (attempt - 1), 20.0))

    def _send_presigned(self, obj: RemoteObject) -> Any:
        from botocore.awsrequest import AWSRequest

        url = self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": obj.bucket, "Key": obj.key}, ExpiresIn=900
        )
        request = AWSRequest(method="GET", url=url, headers={"If-Match": f'"{obj.etag}"'}).prepare()
        request.stream_output = True
        try:
            return self._http.send(request)
        except self._exc.BotoCoreError as exc:
            # botocore puts the request URL into its messages: drop the signed query.
            kwargs = getattr(exc, "kwargs", None)
            if isinstance(kwargs, dict) and kwargs.get("endpoint_url"):
                try:
                    clean = type(exc)(**{**kwargs, "endpoint_url": _strip_query(str(kwargs["endpoint_url"]))})
                except Exception:  # noqa: BLE001 - an exception class with another signature
                    clean = self._exc.HTTPClientError(error=_strip_query(str(exc)))
                raise clean from None
            raise

    def _client_error(self, resp: Any) -> Any:
        """The ClientError botocore would raise for an error response (body closed)."""
        try:
            text = resp.raw.read(64 * 1024).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - only for the message
            text = ""
        finally:
            resp.raw.close()
            resp.raw.release_conn()
        status = resp.status_code
        code = _xml_field(text, "Code") or str(status)
        message = _xml_field(text, "Message") or http.client.responses.get(status, "")
        return self._exc.ClientError(
            {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
            "GetObject",
        )

    def _stream(self, resp: Any) -> tuple[dict[str, str], Any, Callable[[bool], None]]:
        raw = resp.raw
        h = resp.headers
        headers = {
            "ServerSideEncryption": h.get("x-amz-server-side-encryption", ""),
            "SSECustomerAlgorithm": h.get("x-amz-server-side-encryption-customer-algorithm", ""),
        }
        exc = self._exc

        def chunks() -> Any:
            while True:
                try:
                    chunk = raw.read(_CHUNK)
                except _Urllib3ReadTimeout as e:
                    raise exc.ReadTimeoutError(
                        endpoint_url=_strip_query(str(getattr(e, "url", "") or "")), error=e
                    ) from None
                except _Urllib3Error as e:
                    raise exc.ResponseStreamingError(error=e) from None
                if not chunk:
                    return
                yield chunk

        def close(complete: bool) -> None:
            if not complete:
                raw.close()  # unread bytes: never hand this connection back for reuse
            raw.release_conn()

        return headers, chunks(), close

    def _fetch_boto(self, obj: RemoteObject) -> tuple[dict[str, str], Any, Callable[[bool], None]]:
        response = self._client.get_object(Bucket=obj.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
        body = response["Body"]
        headers = {
            "ServerSideEncryption": response.get("ServerSideEncryption", ""),
            "SSECustomerAlgorithm": response.get("SSECustomerAlgorithm", ""),
        }
        return headers, body.iter_chunks(_CHUNK), lambda _complete: body.close()

    # ------------------------------------------------------------------ uploads

    def upload_dir(self, src: Path, loc: S3Location) -> int:
        """Upload every file under ``src`` to ``loc`` concurrently; return how many.

        For tests, benchmarks and dataset snapshots. Keys are ``loc.prefix + relpath``.
        Each small file is one ``put_object`` with ``Content-MD5`` (the server rejects a
        corrupted upload) so its ETag is its MD5; files over 64 MiB use multipart uploads.
        """
        src = Path(src)
        if not src.is_dir():
            raise DataSourceError(f"cannot upload {src} to {loc.url}: it is not a directory")
        self._require_credentials(loc.url)
        files: list[tuple[Path, str]] = []
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, src)
            parts = [] if rel_dir == os.curdir else rel_dir.split(os.sep)
            for name in sorted(filenames):
                files.append((Path(dirpath) / name, "/".join([*parts, name])))
        if not files:
            return 0
        pool = ThreadPoolExecutor(max_workers=min(self.max_workers, len(files)), thread_name_prefix="s3-put")
        try:
            futures = [pool.submit(self._upload_one, path, loc, relpath) for path, relpath in files]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                fut.result()
            for fut in futures:
                fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return len(files)

    def _upload_one(self, path: Path, loc: S3Location, relpath: str) -> None:
        key = loc.prefix + relpath
        try:
            if path.stat().st_size > _MULTIPART_THRESHOLD:
                self._client.upload_file(str(path), loc.bucket, key)
                return
            data = path.read_bytes()
            content_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324
            self._client.put_object(Bucket=loc.bucket, Key=key, Body=data, ContentMD5=content_md5)
        except OSError as exc:
            raise DataSourceError(f"cannot read {path} to upload it: {exc.strerror or exc}") from None
        except (self._exc.ClientError, self._exc.BotoCoreError) as exc:
            raise self._error(exc, loc.key_url(key), "uploading") from None
        except Exception as exc:  # s3transfer wraps failures in its own exception types
            if type(exc).__module__.startswith("boto3") or type(exc).__module__.startswith("s3transfer"):
                raise DataSourceError(f"uploading {loc.key_url(key)} failed: {exc}") from None
            raise

    # ------------------------------------------------------------------ errors

    def _require_credentials(self, url: str) -> None:
        if not self._has_credentials:
            raise DataSourceError(f"no AWS credentials found for {url}: {_CREDENTIALS_HINT}")

    def _transient(self, exc: BaseException) -> bool:
        """Whether another attempt may succeed (5xx, throttling, timeouts, dropped connections)."""
        e = self._exc
        if isinstance(exc, e.ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(exc.response.get("Error", {}).get("Code", ""))
            return status >= 500 or status == 429 or code in _TRANSIENT_CODES
        if isinstance(exc, (e.ConnectionError, e.HTTPClientError, e.IncompleteReadError, e.FlexibleChecksumError)):
            # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
            # ConnectionClosedError, ResponseStreamingError (resets mid-body), ...
            return True
        if isinstance(exc, (ConnectionError, TimeoutError, http.client.HTTPException)):
            return True  # raw socket resets / IncompleteRead that escaped botocore's wrapping
        return False  # other OSErrors are local (disk full, permissions): not transient

    def _error(self, exc: BaseException, url: str, doing: str) -> DataSourceError:
        """A DataSourceError with an actionable message for a botocore/OS exception."""
        e = self._exc
        if isinstance(exc, DataSourceError):
            return exc
        if isinstance(exc, e.NoCredentialsError):
            return DataSourceError(f"no AWS credentials found for {url}: {_CREDENTIALS_HINT}")
        if isinstance(exc, e.ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(exc.response.get("Error", {}).get("Code", ""))
            bucket = url[len("s3://") :].split("/", 1)[0]
            if code == "NoSuchBucket":
                return DataSourceError(f"bucket {bucket!r} does not exist (endpoint {self.endpoint}); check {url}")
            if code in ("NoSuchKey", "404") or (status == 404 and doing == "downloading"):
                return DataSourceError(
                    f"{url} no longer exists (endpoint {self.endpoint}); it was deleted after it "
                    "was listed -- rerun to stage the current version"
                )
            if code in ("PreconditionFailed", "412") or status == 412:
                return DataSourceError(f"{url} changed since it was listed; rerun to stage the new version")
            if code in _ACCESS_CODES or (status == 403 and code not in _CREDENTIAL_CODES):
                need = (
                    "s3:ListBucket"
                    if doing == "listing"
                    else "s3:GetObject"
                    if doing == "downloading"
                    else "s3:PutObject"
                )
                return DataSourceError(
                    f"access denied {doing} {url} (endpoint {self.endpoint}): the AWS credentials "
                    f"in use lack {need} on bucket {bucket!r}; check their IAM/bucket policy"
                )
            if code in _CREDENTIAL_CODES:
                return DataSourceError(
                    f"the AWS credentials were rejected {doing} {url} ({code}, endpoint "
                    f"{self.endpoint}); check that they are current and meant for this endpoint"
                )
            return DataSourceError(f"{doing} {url} failed (endpoint {self.endpoint}): {_describe(exc)}")
        if isinstance(exc, (e.EndpointConnectionError, e.ConnectTimeoutError)):
            return DataSourceError(
                f"cannot reach the S3 endpoint {self.endpoint} while {doing} {url}: {exc}; "
                "check the endpoint URL (AWS_ENDPOINT_URL) and the network"
            )
        if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
            where = f" ({exc.filename})" if exc.filename else ""
            return DataSourceError(f"{doing} {url} failed writing locally{where}: {exc.strerror or exc}")
        return DataSourceError(f"{doing} {url} failed (endpoint {self.endpoint}): {_describe(exc)}")


class _Urllib3Error(Exception):
    """Placeholder until boto3 is imported (replaced by urllib3's HTTPError)."""


class _Urllib3ReadTimeout(Exception):
    """Placeholder until boto3 is imported (replaced by urllib3's ReadTimeoutError)."""


def _load_urllib3() -> None:
    global _Urllib3Error, _Urllib3ReadTimeout
    import urllib3.exceptions

    _Urllib3Error = urllib3.exceptions.HTTPError  # type: ignore[misc,assignment]
    _Urllib3ReadTimeout = urllib3.exceptions.ReadTimeoutError  # type: ignore[misc,assignment]


class _RetryQuota:
    """botocore's standard-mode retry quota: retries spend tokens, successes refill them."""

    def __init__(self, capacity: int = 500) -> None:
        self._capacity = self._available = capacity
        self._lock = threading.Lock()

    def acquire(self, exc: BaseException) -> bool:
        cost = 10 if isinstance(exc, (TimeoutError,)) or "Timeout" in type(exc).__name__ else 5
        with self._lock:
            if self._available < cost:
                return False
            self._available -= cost
            return True

    def success(self, retried: bool) -> None:
        with self._lock:
            self._available = min(self._capacity, self._available + (5 if retried else 1))


_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
    }
)
_SIGNED_QUERY_RE = re.compile(r"\?[^\s\"'<>]*(?:Signature|X-Amz-|AWSAccessKeyId)[^\s\"'<>]*")
_XML_FIELDS = {name: re.compile(rf"<{name}>([^<]*)</{name}>") for name in ("Code", "Message")}


class _Crc32:
    def __init__(self) -> None:
        self._crc = 0

    def update(self, chunk: bytes) -> None:
        self._crc = zlib.crc32(chunk, self._crc)

    def digest(self) -> bytes:
        return (self._crc & 0xFFFFFFFF).to_bytes(4, "big")


def _checksum_factory(algo: str) -> Callable[[], Any] | None:
    """A constructor of ``update()/digest()`` objects for an S3 checksum algorithm, or None."""
    if algo == "SHA256":
        return hashlib.sha256
    if algo == "SHA1":
        return hashlib.sha1
    if algo == "CRC32":
        return _Crc32
    import botocore.httpchecksum

    cls: Any = getattr(botocore.httpchecksum, "_CHECKSUM_CLS", {}).get(algo.lower())  # CRC32C/CRC64NVME need awscrt
    return cls if callable(cls) else None


def _read_parts(path: Path, sizes: list[int], factory: Callable[[], Any]) -> list[Any]:
    """One ``factory()`` hasher fed with each consecutive part of ``path``."""
    out = []
    with open(path, "rb") as fh:
        for size in sizes:
            hasher = factory()
            left = size
            while left > 0:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:
                    break
                hasher.update(chunk)
                left -= len(chunk)
            out.append(hasher)
    return out


def _b64_checksum(path: Path, sizes: list[int], factory: Callable[[], Any], composite: bool) -> str:
    """Base64 checksum of ``path``: of the whole file, or (``composite``) of its parts' raw checksums."""
    if not composite:
        return base64.b64encode(_read_parts(path, sizes, factory)[0].digest()).decode()
    outer = factory()
    for part in _read_parts(path, sizes, factory):
        outer.update(part.digest())
    return base64.b64encode(outer.digest()).decode()


def _multipart_etag(path: Path, sizes: list[int]) -> str:
    """``md5(md5(part 1) + .. + md5(part N))-N`` of ``path`` cut into ``sizes``."""
    outer = hashlib.md5()  # noqa: S324 - S3's ETag algorithm, not security
    for part in _read_parts(path, sizes, hashlib.md5):
        outer.update(part.digest())
    return f"{outer.hexdigest()}-{len(sizes)}"


def _throttling(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 429 or str(response.get("Error", {}).get("Code", "")) in _THROTTLE_CODES


def _xml_field(text: str, name: str) -> str:
    match = _XML_FIELDS[name].search(text)
    return match.group(1).strip() if match else ""


def _strip_query(text: str) -> str:
    """``text`` without signed query strings (presigned URLs carry credentials)."""
    return _SIGNED_QUERY_RE.sub("", text)


def _describe(exc: BaseException) -> str:
    """One line for an exception: ``Type: message`` (ClientError: code, status, message)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{err.get('Code', '?')} (HTTP {status}): {err.get('Message', '')}".rstrip(": ")
    text = _strip_query(str(exc).strip() or repr(exc))
    return f"{type(exc).__name__}: {text}"


def _check_relpath(obj: RemoteObject) -> None:
    bad = _unsafe_reason(obj.relpath)
    if bad:
        raise DataSourceError(f"refusing to write {obj.url} to relpath {obj.relpath!r}: {bad}")


def _check_file_dir_clashes(objects: list[RemoteObject]) -> None:
    """Reject listings where a key is both a file and a "directory" (``a`` and ``a/b``)."""
    files = {o.relpath: o for o in objects}
    for obj in objects:
        parts = obj.relpath.split("/")
        for i in range(1, len(parts)):
            clash = files.get("/".join(parts[:i]))
            if clash is not None:
                raise DataSourceError(
                    f"cannot stage both {clash.url} and {obj.url}: the first would have to be "
                    "a file and a directory at once locally; rename one of them"
                )
