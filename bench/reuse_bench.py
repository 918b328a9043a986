#!/usr/bin/env python3
"""Warm-path cost of proving a staged copy intact (issue 13), as a ratio in the same run.

Stages a local dataset of N files (random bytes, 20-60 KB "images" and small "labels")
once, then times, best of --repeat:

- ``lookup, no check``: what reuse did before (read the manifest, touch the LRU marker);
- ``lookup, checked``: today's reuse (+ one stat per file against the record made at
  publish, + REUSE_SAMPLE_FILES random files re-hashed);
- ``stage warm, no check`` / ``stage warm, checked``: the whole warm ``stage_dataset`` of
  a local source (listing the source, index hit, lookup) without / with the check;
- ``full re-hash``: ``stage.verify: true`` (what a mismatching stat triggers).

    .venv/bin/python bench/reuse_bench.py [--files 10000] [--repeat 5]

Page cache warm (a second reuse on the same machine); nothing leaves /tmp.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks import stage_cache as cache_mod  # noqa: E402
from tasks.stage import SourceSpec, stage_dataset  # noqa: E402
from tasks.stage_cache import StageCache, read_manifest  # noqa: E402


def make_dataset(root: Path, n_files: int, seed: int) -> Path:
    rng = random.Random(seed)
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: a\n")
    for i in range((n_files - 1) // 2):
        split = "val" if i % 10 == 0 else "train"
        img = root / "images" / split / f"{i:06d}.jpg"
        lbl = root / "labels" / split / f"{i:06d}.txt"
        img.parent.mkdir(parents=True, exist_ok=True)
        lbl.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(rng.randbytes(rng.randint(20 << 10, 60 << 10)))
        lbl.write_text(f"0 0.5 0.5 {rng.random() / 2:.6f} {rng.random() / 2:.6f}\n")
    return root


def best(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="trainyard-reuse-bench-"))
    try:
        src = make_dataset(tmp / "src", args.files, args.seed)
        cache = StageCache(tmp / "cache")
        spec = SourceSpec("local", str(src))
        staged = stage_dataset(spec, cache)
        files, mb = staged.files, staged.bytes / 1e6
        real_check = StageCache.check

        def unchecked_lookup() -> None:
            assert read_manifest(staged.path) is not None
            cache.touch(staged.key)

        def no_check(self: StageCache, path: Path, manifest: list, full: bool = False) -> list[str]:
            return []

        rows: list[tuple[str, tuple[float, float]]] = []
        rows.append(("lookup, no check (before)", best(unchecked_lookup, args.repeat)))
        rows.append(("lookup, checked (now)", best(lambda: cache.lookup(staged.key), args.repeat)))
        StageCache.check = no_check  # type: ignore[method-assign]
        rows.append(("stage warm, no check (before)", best(lambda: stage_dataset(spec, cache), args.repeat)))
        StageCache.check = real_check  # type: ignore[method-assign]
        rows.append(("stage warm, checked (now)", best(lambda: stage_dataset(spec, cache), args.repeat)))
        rows.append(
            (
                "full re-hash (verify: true)",
                best(lambda: cache.check(staged.path, read_manifest(staged.path) or [], full=True), 2),
            )
        )
        print(
            f"# reuse check: {files} files, {mb:.0f} MB, sample {cache_mod.REUSE_SAMPLE_FILES} files, "
            f"{os.cpu_count()} CPUs, best/median of {args.repeat}"
        )
        print("| path | best s | median s |\n|---|---|---|")
        for name, (b, m) in rows:
            print(f"| {name} | {b:.4f} | {m:.4f} |")
        lk = rows[1][1][0] / rows[0][1][0]
        st = rows[3][1][0] / rows[2][1][0]
        print(
            f"\nratio checked/before: lookup {lk:.1f}x, whole warm stage {st:.2f}x "
            f"(+{(rows[3][1][0] - rows[2][1][0]) * 1000:.0f} ms)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
