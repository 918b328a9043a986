"""The obstore side of the staging benchmark: download every object under an S3 prefix into a folder.

    bench/.venv/bin/python bench/obstore_get.py ENDPOINT BUCKET PREFIX DEST [--concurrency 64]

Issue 15 asks whether a transfer engine made for this (obstore: Rust object_store bindings, no
GIL in the transfer loop) beats trainyard's presigned-GET path on client CPU per object. This is
that engine doing what staging does, minus the integrity work: one listing, then concurrent
GETs written to DEST, each body's MD5 compared with a single-part ETag as trainyard compares
them (so the CPU figure is comparable). Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from pathlib import Path


async def main_async(args: argparse.Namespace) -> int:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        args.bucket,
        endpoint=args.endpoint,
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )
    listing = [meta for batch in obstore.list(store, prefix=args.prefix) for meta in batch]
    dest = Path(args.dest)
    gate = asyncio.Semaphore(args.concurrency)
    bad: list[str] = []

    async def fetch(meta: dict) -> None:
        key = meta["path"]
        async with gate:
            result = await obstore.get_async(store, key)
            body = bytes(await result.bytes_async())
        etag = (meta.get("e_tag") or "").strip('"')
        if "-" not in etag and hashlib.md5(body).hexdigest() != etag:  # noqa: S324 - S3's ETag is an MD5
            bad.append(key)
        out = dest / key[len(args.prefix) :].lstrip("/")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(body)

    await asyncio.gather(*(fetch(m) for m in listing))
    if bad:
        print(f"{len(bad)} object(s) did not match their ETag, e.g. {bad[0]}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("endpoint")
    ap.add_argument("bucket")
    ap.add_argument("prefix")
    ap.add_argument("dest")
    ap.add_argument("--concurrency", type=int, default=64)
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
