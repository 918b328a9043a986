"""tasks.adapters.s3 against a real moto S3 server over HTTP (boto3 is never mocked).

Faults (500s, timeouts, stalls, corrupted/truncated bodies) come from tests.s3server's
FaultProxy between the client and moto; "server gone" comes from killing a moto process.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.errors import DataSourceError
from tasks.adapters.s3 import ChecksumError, RemoteObject, S3Client, S3Location, etag_md5, parse_s3_url
from tasks.adapters.git_dvc import dir_manifest
from tests.conftest import REPO
from tests.s3server import FaultProxy, MotoServer, make_bucket, put_multipart, put_object, unique_bucket


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324


def leftovers(root: Path) -> list[Path]:
    """Temporary download files anywhere under root (must never survive a failure)."""
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


# --------------------------------------------------------------------------- no I/O


def test_import_does_not_import_boto3_or_obstore() -> None:
    code = "import sys, tasks.adapters.s3; bad = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 's3transfer', 'obstore')]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "canonical"),
    [
        ("s3://bucket", "bucket", "", "s3://bucket"),
        ("s3://bucket/", "bucket", "", "s3://bucket"),
        ("s3://my.bucket-1/a/b", "my.bucket-1", "a/b/", "s3://my.bucket-1/a/b"),
        ("s3://b12/a/b/", "b12", "a/b/", "s3://b12/a/b"),
        ("s3://b12/data set/v1.2", "b12", "data set/v1.2/", "s3://b12/data set/v1.2"),
    ],
)
def test_parse_s3_url_valid(url: str, bucket: str, prefix: str, canonical: str) -> None:
    loc = parse_s3_url(url)
    assert (loc.bucket, loc.prefix, loc.url) == (bucket, prefix, canonical)
    assert parse_s3_url(loc.url) == loc
    assert S3Location(bucket, prefix.rstrip("/")) == loc  # the constructor normalises too


@pytest.mark.parametrize(
    "url",
    [
        "",
        "bucket/prefix",
        "http://bucket/prefix",
        "s3:/bucket/prefix",
        "s3://",
        "s3:///prefix",
        "s3://Bad_Bucket/x",
        "s3://ab/x",
        "s3://-bucket/x",
        "s3://bucket-/x",
        "s3://a..b/x",
        "s3://192.168.1.1/x",
        "s3://bucket/a/../x",
        "s3://bucket/./x",
        "s3://bucket/a//x",
        "s3://bucket//x",
    ],
)
def test_parse_s3_url_invalid(url: str) -> None:
    with pytest.raises(DataSourceError) as info:
        parse_s3_url(url)
    assert repr(url) in str(info.value)
    assert '"s3://bucket/prefix"' in str(info.value)


def test_etag_md5() -> None:
    plain = "9e107d9d372bb6826bd81d3542a419d6"
    assert etag_md5(plain) == plain
    assert etag_md5(f'"{plain}"') == plain
    assert etag_md5(plain.upper()) == plain
    assert etag_md5(f"{plain}-2") is None  # multipart
    assert etag_md5("") is None
    assert etag_md5("not-an-md5") is None


# --------------------------------------------------------------------------- listing


def test_list_paginates_sorts_and_reads_md5_from_etag(s3_env: str) -> None:
    bucket = unique_bucket()
    files = {f"ds/img/{i:04d}.jpg": f"image {i}".encode() for i in range(1100)}
    keys = list(files)
    random.Random(0).shuffle(keys)  # upload order must not matter
    make_bucket(
        s3_env, bucket, {k: files[k] for k in keys} | {"ds-old/x.jpg": b"sibling prefix", "ds/": b"", "ds/img/": b""}
    )
    part1 = os.urandom(5 * 1024 * 1024)
    multipart_etag = put_multipart(s3_env, bucket, "ds/big.bin", [part1, b"tail"])
    assert multipart_etag.endswith("-2")

    objs = S3Client(max_workers=8).list_objects(parse_s3_url(f"s3://{bucket}/ds"))

    assert len(objs) == 1101  # > 1000: needed a second page; markers and sibling prefix excluded
    assert [o.relpath for o in objs] == sorted(o.relpath for o in objs)
    by_rel = {o.relpath: o for o in objs}
    big = by_rel["big.bin"]
    assert (big.size, big.md5, big.etag) == (len(part1) + 4, None, multipart_etag)
    for rel, obj in by_rel.items():
        if rel != "big.bin":
            data = files["ds/" + rel]
            assert (obj.key, obj.bucket, obj.size, obj.md5, obj.etag) == (
                "ds/" + rel,
                bucket,
                len(data),
                md5(data),
                md5(data),
            )


@pytest.mark.parametrize(
    ("prefix", "key"), [("ds", "ds/a/../b"), ("", "/abs"), ("ds", "ds//abs"), ("ds", "ds/a//b"), ("ds", "ds/./c")]
)
def test_unsafe_keys_are_rejected(s3_env: str, prefix: str, key: str) -> None:
    bucket = unique_bucket()
    make_bucket(s3_env, bucket, {"ds/ok.txt": b"fine", key: b"evil"})
    with pytest.raises(DataSourceError) as info:
        S3Client().list_objects(S3Location(bucket, prefix))
    assert repr(key) in str(info.value) or f"s3://{bucket}/{key}" in str(info.value)
    assert "unsafe" in str(info.value)


def test_directory_markers_are_skipped_but_nonempty_slash_keys_rejected(s3_env: str) -> None:
    bucket = unique_bucket()
    make_bucket(s3_env, bucket, {"ds/": b"", "ds/sub/": b"", "ds/sub/a.txt": b"a"})
    objs = S3Client().list_objects(parse_s3_url(f"s3://{bucket}/ds/"))
    assert [o.relpath for o in objs] == ["sub/a.txt"]

    put_object(s3_env, bucket, "ds/weird/", b"not a marker")
    with pytest.raises(DataSourceError, match="ds/weird/"):
        S3Client().list_objects(parse_s3_url(f"s3://{bucket}/ds/"))


def test_file_and_directory_with_the_same_name_are_rejected(s3_env: str) -> None:
    bucket = unique_bucket()
    make_bucket(s3_env, bucket, {"ds/a": b"file", "ds/a/b": b"file below it"})
    with pytest.raises(DataSourceError, match="file and a directory"):
        S3Client().list_objects(parse_s3_url(f"s3://{bucket}/ds"))


def test_missing_bucket_and_empty_prefix(s3_env: str) -> None:
    client = S3Client()
    missing = unique_bucket("missing")
    with pytest.raises(DataSourceError) as info:
        client.list_objects(parse_s3_url(f"s3://{missing}/ds"))
    assert f"bucket '{missing}' does not exist" in str(info.value)
    assert s3_env in str(info.value)  # names the endpoint

    bucket = unique_bucket()
    make_bucket(s3_env, bucket, {"other/x": b"x", "ds/": b""})  # only a marker under ds/
    with pytest.raises(DataSourceError, match=rf"s3://{bucket}/ds holds no objects"):
        client.list_objects(parse_s3_url(f"s3://{bucket}/ds"))


def test_no_credentials_is_a_clear_error(no_aws_credentials: str) -> None:
    client = S3Client()  # constructing needs no credentials yet; using it does
    with pytest.raises(DataSourceError) as info:
        client.list_objects(parse_s3_url("s3://some-bucket/ds"))
    message = str(info.value)
    assert message.startswith("no AWS credentials found for s3://some-bucket/ds")
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role" in message


def test_unknown_profile_is_a_clear_error(s3_env: str) -> None:
    with pytest.raises(DataSourceError, match="profile 'nope' is not configured"):
        S3Client(profile="nope")


# --------------------------------------------------------------------------- downloads


def _proxied_objects(
    endpoint: str, proxy: FaultProxy, files: dict[str, bytes], **client_kw: object
) -> tuple[S3Client, list[RemoteObject]]:
    bucket = unique_bucket()
    make_bucket(endpoint, bucket, files)
    client = S3Client(endpoint_url=proxy.endpoint, **client_kw)  # type: ignore[arg-type]
    return client, client.list_objects(S3Location(bucket, ""))


def test_download_verifies_md5_and_never_leaves_a_corrupt_file(
    s3_env: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    data = os.urandom(50_000)
    client, [obj] = _proxied_objects(s3_env, fault_proxy, {"img.jpg": data}, retries=3)
    dest = tmp_path / "out" / "img.jpg"

    fault_proxy.configure(corrupt={"img.jpg": 1000})
    with pytest.raises(ChecksumError) as info:
        client.download(obj, dest)
    message = str(info.value)
    assert obj.url in message and md5(data) in message and "after 3 attempts" in message
    assert fault_proxy.counts["corrupt"] == 3  # retried: a corrupted transfer may be transient
    assert not dest.exists() and leftovers(tmp_path) == []

    fault_proxy.configure(corrupt={"img.jpg": 1}, truncate={"img.jpg": 1})  # one of each, then clean
    assert client.download(obj, dest) == md5(data)
    assert dest.read_bytes() == data and leftovers(tmp_path) == []


def test_object_changed_between_list_and_get_is_not_retried(
    s3_env: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    client, objs = _proxied_objects(s3_env, fault_proxy, {"a.txt": b"version 1", "b.txt": b"b"})
    put_object(s3_env, objs[0].bucket, "a.txt", b"version 2 -- same key, new content")
    changed = f"s3://{objs[0].bucket}/a.txt changed since it was listed; rerun to stage the new version"

    with pytest.raises(DataSourceError) as info:
        client.download(objs[0], tmp_path / "one" / "a.txt")
    assert not isinstance(info.value, ChecksumError) and changed in str(info.value)
    assert fault_proxy.counts["get"] == 1  # a 412 is permanent: not retried

    with pytest.raises(DataSourceError, match="changed since it was listed") as info:
        client.download_many(objs, tmp_path / "out")
    assert changed in str(info.value)
    assert not (tmp_path / "out" / "a.txt").exists() and leftovers(tmp_path) == []


def test_keys_with_any_characters_s3_allows_are_fetched_byte_exact(s3_env: str, tmp_path: Path) -> None:
    names = ["a b.jpg", "ü/日本.png", "a+b.jpg", "a%20b.jpg", "x#y?.jpg", "[x]~^{}.jpg", "tab\tname.txt", "d/.hidden"]
    files = {name: name.encode() * 3 for name in names}
    bucket = unique_bucket()
    make_bucket(s3_env, bucket, files)
    client = S3Client(endpoint_url=s3_env)

    got = client.download_many(client.list_objects(S3Location(bucket, "")), tmp_path / "out")

    assert got == {name: md5(data) for name, data in files.items()}
    assert {name: (tmp_path / "out" / name).read_bytes() for name in names} == files


def test_a_bucket_in_another_region_is_fetched_through_botocores_redirects(
    s3_env: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    files = {"a.txt": b"first", "b.txt": b"second"}
    client, objs = _proxied_objects(s3_env, fault_proxy, files)
    fault_proxy.configure(redirect={"a.txt": 1})  # the fast path's GET is answered 301 once

    got = client.download_many(objs, tmp_path / "out")

    assert got == {rel: md5(data) for rel, data in files.items()}
    assert fault_proxy.counts["redirect"] == 1 and fault_proxy.counts["get"] == 3  # a.txt asked again
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"first" and leftovers(tmp_path) == []


def test_deleted_object_fails_fast(s3_env: str, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    client, objs = _proxied_objects(s3_env, fault_proxy, {f"f{i}": b"x" * i for i in range(1, 40)}, max_workers=4)
    import boto3  # test-side setup only

    boto3.client("s3", endpoint_url=s3_env).delete_object(Bucket=objs[0].bucket, Key="f1")
    start = time.monotonic()
    with pytest.raises(DataSourceError, match="f1 no longer exists"):
        client.download_many(objs, tmp_path / "out")
    assert time.monotonic() - start < 5
    assert fault_proxy.counts["get"] < len(objs)  # pending downloads were cancelled
    assert leftovers(tmp_path) == []


def test_download_many_survives_injected_errors_and_timeouts(
    s3_env: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    files = {f"train/images/{i:04d}.jpg": os.urandom(2_000 + i) for i in range(300)}
    client, objs = _proxied_objects(
        s3_env, fault_proxy, files, max_workers=16, retries=5, read_timeout=0.5, connect_timeout=1
    )
    fault_proxy.configure(seed=7, error_rate=0.05, timeout_rate=0.02, stall_rate=0.02, delay=1.0)
    progress: list[tuple[int, int]] = []

    result = client.download_many(objs, tmp_path / "out", on_progress=lambda n, b: progress.append((n, b)))

    assert result == {rel: md5(files[rel]) for rel in files}
    for rel, data in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == data
    assert fault_proxy.counts["error"] >= 5 and fault_proxy.counts["timeout"] >= 1 and fault_proxy.counts["stall"] >= 1
    assert [n for n, _ in progress] == list(range(1, 301))
    assert progress[-1][1] == sum(len(d) for d in files.values())
    assert all(b2 > b1 for (_, b1), (_, b2) in zip(progress, progress[1:], strict=False))
    assert leftovers(tmp_path) == []


def test_server_stopped_mid_transfer_raises_and_leaves_only_verified_files(tmp_path: Path, s3_env: str) -> None:
    files = {f"img/{i:04d}.jpg": os.urandom(20_000) for i in range(400)}
    with MotoServer(log_path=tmp_path / "moto.log") as server:
        bucket = unique_bucket()
        make_bucket(server.endpoint, bucket, files)
        client = S3Client(endpoint_url=server.endpoint, max_workers=8, retries=2, connect_timeout=1, read_timeout=2)
        objs = client.list_objects(S3Location(bucket, ""))
        stopper: list[threading.Thread] = []

        def on_progress(done: int, _bytes: int) -> None:
            if done == 50 and not stopper:
                stopper.append(threading.Thread(target=server.stop, kwargs={"kill": True}))
                stopper[0].start()

        start = time.monotonic()
        with pytest.raises(DataSourceError) as info:
            client.download_many(objs, tmp_path / "out", on_progress=on_progress)
        elapsed = time.monotonic() - start
        stopper[0].join(timeout=30)
    assert "s3://" + bucket in str(info.value)
    assert elapsed < 30
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert 50 <= len(written) < len(files)
    for path in written:  # only complete, verified files
        assert path.read_bytes() == files[path.relative_to(tmp_path / "out").as_posix()]
    assert leftovers(tmp_path) == []


def test_upload_dir_round_trip(s3_env: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = random.Random(3)
    for i in range(60):
        path = src / f"d{i % 4}" / f"sub{i % 3}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(0, 40_000)))
    (src / "data.yaml").write_text("names: [a]\n")
    (src / "empty").write_bytes(b"")
    bucket = unique_bucket()
    make_bucket(s3_env, bucket, {})

    client = S3Client(max_workers=8)  # endpoint from AWS_ENDPOINT_URL
    assert client.endpoint == s3_env
    loc = parse_s3_url(f"s3://{bucket}/datasets/v1")
    assert client.upload_dir(src, loc) == 62
    objs = client.list_objects(loc)
    assert all(o.md5 is not None for o in objs)
    got = client.download_many(objs, tmp_path / "dst")

    expected = dir_manifest(src)
    assert dir_manifest(tmp_path / "dst") == expected
    assert got == {rel: file_md5 for rel, _size, file_md5 in expected}
    assert {o.relpath: o.md5 for o in objs} == got  # listed ETags are the content MD5s


def test_multipart_objects_are_verified_by_composite_checksum_or_part_etags(s3_env: str, tmp_path: Path) -> None:
    import boto3
    import botocore.config

    part = 5 << 20
    unequal = [os.urandom(part + 7), os.urandom(part), os.urandom(10)]  # not the usual equal parts
    bucket = unique_bucket("mp")
    make_bucket(s3_env, bucket, {})
    put_multipart(s3_env, bucket, "unequal.bin", unequal)
    raw = boto3.client(
        "s3", endpoint_url=s3_env, config=botocore.config.Config(request_checksum_calculation="when_required")
    )
    up = raw.create_multipart_upload(Bucket=bucket, Key="sha.bin", ChecksumAlgorithm="SHA256")
    done = []
    for n, data in enumerate(unequal[:2], start=1):
        r = raw.upload_part(
            Bucket=bucket, Key="sha.bin", UploadId=up["UploadId"], PartNumber=n, Body=data, ChecksumAlgorithm="SHA256"
        )
        done.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]})
    raw.complete_multipart_upload(
        Bucket=bucket, Key="sha.bin", UploadId=up["UploadId"], MultipartUpload={"Parts": done}
    )
    client = S3Client(endpoint_url=s3_env)
    objs = {o.relpath: o for o in client.list_objects(S3Location(bucket, ""))}
    assert objs["unequal.bin"].md5 is None and objs["unequal.bin"].etag.endswith("-3")
    for name, how in (("unequal.bin", "multipart etag"), ("sha.bin", "sha256 (composite)")):
        dest = tmp_path / name
        client.download(objs[name], dest)
        assert client.verify_file(objs[name], dest) == how
        dest.chmod(0o644)
        with open(dest, "r+b") as fh:  # the same bytes but one: caught, whatever the method
            fh.seek(part + 3)
            byte = fh.read(1)
            fh.seek(part + 3)
            fh.write(bytes([byte[0] ^ 1]))
        with pytest.raises(ChecksumError, match="mismatch"):
            client.verify_file(objs[name], dest)
