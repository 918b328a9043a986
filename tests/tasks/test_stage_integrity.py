"""Silent corruption must not reach training (issue 13): S3 bytes are checked against the store's
own checksum (never size alone), a damaged stage-cache copy is reported, moved aside and
restaged, stale ``.partial`` leftovers are collected. Real moto server, real fault proxy."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tasks.errors import DataSourceError
from tasks.stage import SourceSpec, source_spec, stage_dataset
from tasks.stage_cache import MANIFEST, StageCache, read_manifest, verify_files
from tasks.adapters.git_dvc import dvc_dir_md5, manifest_md5
from tests.conftest import copy_dataset
from tests.s3server import FaultProxy, _boto_client, make_bucket, put_multipart, unique_bucket

PART = 5 << 20  # S3's smallest multipart part


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Corrupted transfers are retried (a flipped byte may be transient): without the backoff."""
    from tasks.adapters import s3 as s3_mod

    monkeypatch.setattr(s3_mod, "_BACKOFF_BASE", 0.001)


def _published(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def _bucket_with(endpoint: str, dataset: Path) -> tuple[str, str]:
    """``dataset`` uploaded under datasets/tiny/ in a fresh bucket; returns (bucket, s3 url)."""
    bucket = unique_bucket("integ")
    files = {
        f"datasets/tiny/{p.relative_to(dataset).as_posix()}": p.read_bytes() for p in dataset.rglob("*") if p.is_file()
    }
    make_bucket(endpoint, bucket, files)
    return bucket, f"s3://{bucket}/datasets/tiny"


def _true_hash(staged_path: Path, md5: str) -> None:
    """The copy holds exactly the bytes its data hash names."""
    manifest = read_manifest(staged_path)
    assert manifest is not None and manifest_md5(manifest) == md5
    assert verify_files(staged_path, manifest) == []


def test_a_corrupted_multipart_object_is_refused_and_nothing_is_published(
    s3_env: str, fault_proxy: FaultProxy, tmp_path: Path, tiny_dataset: Path, fast_retries: None
) -> None:
    bucket, url = _bucket_with(s3_env, tiny_dataset)
    big = os.urandom(PART) + os.urandom(1000)
    key = "datasets/tiny/extra/big.bin"
    etag = put_multipart(s3_env, bucket, key, [big[:PART], big[PART:]])
    assert etag.endswith("-2")  # moto gives AWS's multipart ETag: md5 of the part md5s
    fault_proxy.configure(corrupt={key: 1000})  # every GET of it has one byte flipped
    spec = source_spec(url, base_dir=tmp_path, endpoint_url=fault_proxy.endpoint)
    with pytest.raises(DataSourceError, match=r"multipart ETag mismatch.*big\.bin|big\.bin.*multipart ETag mismatch"):
        stage_dataset(spec, StageCache(tmp_path / "cache"))
    assert _published(tmp_path / "cache") == []
    fault_proxy.configure(corrupt={})
    staged = stage_dataset(spec, StageCache(tmp_path / "cache"))
    assert (staged.path / "extra" / "big.bin").read_bytes() == big
    _true_hash(staged.path, staged.md5)


def test_additional_checksums_are_used_and_an_unverifiable_object_is_refused(
    s3_env: str, fault_proxy: FaultProxy, tmp_path: Path, tiny_dataset: Path, fast_retries: None
) -> None:
    bucket, url = _bucket_with(s3_env, tiny_dataset)
    client = _boto_client(s3_env)
    key = "datasets/tiny/extra/sealed.bin"
    # SSE-KMS: the ETag is not the MD5 (on AWS; the proxy makes moto do the same); a SHA256
    # additional checksum vouches for the bytes instead.
    fault_proxy.configure(kms_keys={key})
    client.put_object(
        Bucket=bucket, Key=key, Body=b"x" * 3000, ServerSideEncryption="aws:kms", ChecksumAlgorithm="SHA256"
    )
    fault_proxy.configure(corrupt={key: 1000})
    spec = source_spec(url, base_dir=tmp_path, endpoint_url=fault_proxy.endpoint)
    with pytest.raises(DataSourceError, match="SHA256 mismatch"):
        stage_dataset(spec, StageCache(tmp_path / "cache"))
    fault_proxy.configure(corrupt={})
    staged = stage_dataset(spec, StageCache(tmp_path / "cache"))
    _true_hash(staged.path, staged.md5)
    # SSE-KMS and no additional checksum: nothing can vouch for the bytes -> refused, not size-checked.
    import boto3
    import botocore.config

    bare = boto3.client(  # boto3 >= 1.36 adds a CRC32 to every put unless told otherwise
        "s3",
        endpoint_url=s3_env,
        region_name="us-east-1",
        config=botocore.config.Config(request_checksum_calculation="when_required"),
    )
    bare.put_object(Bucket=bucket, Key=key, Body=b"y" * 3000, ServerSideEncryption="aws:kms")
    assert not [k for k in bare.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED") if k.startswith("Checksum")]
    with pytest.raises(DataSourceError, match="cannot be verified.*SSE-KMS"):
        stage_dataset(spec, StageCache(tmp_path / "cache"))


def test_a_flipped_byte_in_the_stage_cache_is_reported_moved_aside_and_restaged(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    cache = StageCache(tmp_path / "cache")
    spec = SourceSpec("local", str(tiny_dataset))
    first = stage_dataset(spec, cache)  # stage.verify: false, the default
    victim = sorted((first.path / "labels" / "train").glob("*.txt"))[0]
    rel = victim.relative_to(first.path).as_posix()
    data = bytearray(victim.read_bytes())
    data[0] ^= 0x01
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    again = stage_dataset(spec, StageCache(tmp_path / "cache"))
    assert not again.reused and again.md5 == first.md5 == dvc_dir_md5(tiny_dataset)
    (note,) = [n for n in again.notes if "damaged" in n]
    assert rel in note and "moved aside" in note
    assert (again.path / rel).read_bytes() == (tiny_dataset / rel).read_bytes()
    _true_hash(again.path, again.md5)
    (aside,) = (tmp_path / "cache" / ".partial").glob(f".damaged-{first.key}-*")
    assert (aside / rel).read_bytes() == bytes(data), "the damaged copy is kept for inspection, not repaired"
    third = stage_dataset(spec, StageCache(tmp_path / "cache"))
    assert third.reused and not [n for n in third.notes if "damaged" in n]


def test_a_deleted_or_added_file_in_the_stage_cache_is_caught(tmp_path: Path, tiny_dataset: Path) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    spec = SourceSpec("local", str(data))
    first = stage_dataset(spec, StageCache(tmp_path / "cache"))
    label = sorted((first.path / "labels" / "val").glob("*.txt"))[0]
    label.unlink()
    (first.path / "labels" / "val.cache").write_bytes(b"ultralytics writes these")  # tolerated
    again = stage_dataset(spec, StageCache(tmp_path / "cache"))
    assert not again.reused and again.md5 == first.md5
    assert any("missing: labels/val/" in n for n in again.notes), again.notes
    assert label.exists()
    _true_hash(again.path, again.md5)
    stray = again.path / "images" / "train" / "stray.jpg"
    stray.write_bytes(b"not part of this version")
    third = stage_dataset(spec, StageCache(tmp_path / "cache"))
    assert any("extra: images/train/stray.jpg" in n for n in third.notes) and not stray.exists()
    _true_hash(third.path, third.md5)


def test_stale_partials_are_collected_unless_a_live_stager_holds_them(tmp_path: Path, tiny_dataset: Path) -> None:
    root = tmp_path / "cache"
    holder = StageCache(root)
    holder.ensure_root()
    live = holder.partial_dir("fp-live")  # a stager in another flow, still at work
    (live / "half.jpg").write_bytes(b"x")
    old = time.time() - 3 * 24 * 3600
    stale = root / ".partial" / "fp-of-an-older-source"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "a.jpg").write_bytes(b"x" * 100)
    (stale / "images" / "a.jpg").chmod(0o444)
    fresh = holder.partial_dir("fp-interrupted-an-hour-ago")
    for path in (live, stale, stale / "images"):
        os.utime(path, (old, old))
    stage_dataset(SourceSpec("local", str(tiny_dataset)), StageCache(root))
    left = sorted(p.name for p in (root / ".partial").iterdir())
    assert left == ["fp-interrupted-an-hour-ago", "fp-live"] and fresh.is_dir()
    holder.release_partials()  # that stager died
    os.utime(live, (old, old))
    stage_dataset(SourceSpec("local", str(tiny_dataset)), StageCache(root))
    assert sorted(p.name for p in (root / ".partial").iterdir()) == ["fp-interrupted-an-hour-ago"]


def test_a_copy_without_a_stat_record_is_rehashed_once_then_recorded(tmp_path: Path, tiny_dataset: Path) -> None:
    from tasks import stage_cache as cache_mod

    first = stage_dataset(SourceSpec("local", str(tiny_dataset)), StageCache(tmp_path / "cache"))
    (first.path / cache_mod.STATS).unlink()  # published by an older trainyard
    assert (first.path / MANIFEST).exists()
    again = stage_dataset(SourceSpec("local", str(tiny_dataset)), StageCache(tmp_path / "cache"))
    assert again.reused and (first.path / cache_mod.STATS).exists() and not again.notes
    assert hashlib.md5((first.path / "data.yaml").read_bytes()).hexdigest()  # still readable
