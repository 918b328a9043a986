#!/usr/bin/env python3
"""Validation benchmark: trainyard's dataset validation vs Ultralytics' own label-cache build.

Generates (once, reused afterwards) a deterministic YOLO detection dataset of N JPEG images
with their label files in the Ultralytics layout, then times, in one process and one run:

  ultralytics  YOLODataset(img_path=images/<split>, data=..., task="detect", augment=False)
               for train and val, with no labels/*.cache present: the label-cache build
               Ultralytics does on every cache miss (ThreadPool(NUM_THREADS) over
               verify_image_label, plus writing labels/<split>.cache)
  trainyard    tasks.validate.validate_dataset(root): no cache involved

Each is warmed up once (untimed, so the page cache is equally warm for both), then run
--repeat times, alternating which one goes first; the median is reported. Imports of
torch/ultralytics/trainyard happen before any timer starts.

    .venv/bin/python bench/validate_bench.py [--images 10000] [--repeat 3] [--report bench/validate_results.md]
    .venv/bin/python bench/validate_bench.py --smoke      # 200 images, 1 repeat: checks the script works
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # run as a script: its sibling modules
from benchfacts import cpu_model, git_head  # noqa: E402

GEN_VERSION = 1  # bump when the generator changes, so old datasets are not reused
MARKER = ".bench-complete"  # hidden: neither tool looks at it
SPLITS = ("train", "val")
N_CLASSES = 80  # COCO-like
# (width, height) and weights: mostly 640x480, some COCO-typical 640x427, portraits, 16:9
SIZES = ((640, 480), (640, 427), (480, 640), (640, 360))
SIZE_P = (0.55, 0.25, 0.12, 0.08)
JPEG_QUALITY = 85
NOISE_SIGMA = 18.0
TARGET_RATIO = 1.0  # trainyard images/s >= 1.0x Ultralytics'


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- dataset


def _noise_tiles(seed: int, count: int = 8):
    """A few zero-mean noise tiles (uint8 around 128), cut at random offsets per image."""
    import numpy as np

    rng = np.random.default_rng([seed, 10**9])
    side = max(max(s) for s in SIZES) + 64
    return [np.clip(rng.normal(128.0, NOISE_SIGMA, (side, side, 3)), 0, 255).astype(np.uint8) for _ in range(count)]


def _make_one(ds: Path, i: int, seed: int, tiles) -> tuple[int, int]:
    """Write image i and its label file; returns (jpeg bytes, boxes). Deterministic in (seed, i)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng([seed, i])
    w, h = SIZES[int(rng.choice(len(SIZES), p=SIZE_P))]
    # smooth colour field: a tiny random image scaled up (a multi-colour gradient)
    img = cv2.resize(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    # distractor shapes (no labels)
    for _ in range(int(rng.integers(3, 10))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.line(img, (x0, y0), (int(rng.integers(0, w)), int(rng.integers(0, h))), color, int(rng.integers(1, 6)))
        else:
            cv2.circle(img, (x0, y0), int(rng.integers(5, 60)), color, -1)
    # labelled objects: 1-5 boxes, each drawn as a filled rectangle or ellipse with an outline
    k = int(rng.integers(1, 6))
    lines = []
    for _ in range(k):
        bw, bh = rng.uniform(0.03, 0.5), rng.uniform(0.03, 0.5)
        cx, cy = rng.uniform(bw / 2, 1 - bw / 2), rng.uniform(bh / 2, 1 - bh / 2)
        cls = int(rng.integers(0, N_CLASSES))
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
        p0 = (int((cx - bw / 2) * w), int((cy - bh / 2) * h))
        p1 = (int((cx + bw / 2) * w), int((cy + bh / 2) * h))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, p0, p1, color, -1)
        else:
            center = ((p0[0] + p1[0]) // 2, (p0[1] + p1[1]) // 2)
            cv2.ellipse(img, center, (max(1, (p1[0] - p0[0]) // 2), max(1, (p1[1] - p0[1]) // 2)), 0, 0, 360, color, -1)
        cv2.rectangle(img, p0, p1, (0, 0, 0), 2)
    # sensor-like noise, so the JPEG is not trivially compressible
    tile = tiles[int(rng.integers(0, len(tiles)))]
    oy, ox = int(rng.integers(0, tile.shape[0] - h + 1)), int(rng.integers(0, tile.shape[1] - w + 1))
    img = cv2.addWeighted(img, 1.0, tile[oy : oy + h, ox : ox + w], 1.0, -128.0)

    split = "val" if i % 10 == 0 else "train"
    stem = f"{i:06d}"
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for image {i}")
    (ds / "images" / split / f"{stem}.jpg").write_bytes(buf.tobytes())
    (ds / "labels" / split / f"{stem}.txt").write_text("".join(lines))
    return int(buf.size), k


def generate_dataset(n_images: int, seed: int, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """The dataset for (n_images, seed) under workdir, generated once; returns (root, facts)."""
    ds = workdir / f"yolo-det-n{n_images}-s{seed}-v{GEN_VERSION}"
    marker = ds / MARKER
    if marker.exists():
        try:
            facts = json.loads(marker.read_text())
            if facts.get("images") == n_images and facts.get("seed") == seed and facts.get("gen") == GEN_VERSION:
                log(f"dataset reused: {ds}")
                return ds, facts
        except (OSError, ValueError):
            pass
    if ds.exists():
        shutil.rmtree(ds)
    log(f"generating {n_images} images into {ds} (once; reused afterwards; not timed)")
    t0 = time.perf_counter()
    for sub in ("images", "labels"):
        for split in SPLITS:
            (ds / sub / split).mkdir(parents=True)
    names = [f"class{c}" for c in range(N_CLASSES)]
    (ds / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [" + ", ".join(names) + "]\n")
    tiles = _noise_tiles(seed)
    total_bytes = total_boxes = 0
    with cf.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:  # cv2 releases the GIL
        for size, boxes in pool.map(lambda i: _make_one(ds, i, seed, tiles), range(n_images), chunksize=16):
            total_bytes += size
            total_boxes += boxes
    facts = {
        "images": n_images,
        "seed": seed,
        "gen": GEN_VERSION,
        "val": len(range(0, n_images, 10)),
        "train": n_images - len(range(0, n_images, 10)),
        "jpeg_bytes": total_bytes,
        "boxes": total_boxes,
        "classes": N_CLASSES,
    }
    marker.write_text(json.dumps(facts) + "\n")
    log(f"generated in {time.perf_counter() - t0:.1f} s: {total_bytes / 1e6:.0f} MB of JPEG, {total_boxes} boxes")
    return ds, facts


def tree(ds: Path) -> set[str]:
    """Every path under the dataset (to notice files a tool leaves behind)."""
    out = set()
    for dirpath, _dirs, files in os.walk(ds):
        for name in files:
            out.add(os.path.relpath(os.path.join(dirpath, name), ds))
    return out


def remove_ultralytics_caches(ds: Path) -> None:
    for p in (ds / "labels").glob("*.cache"):
        p.unlink()


# --------------------------------------------------------------------------- measuring


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus reaped child processes."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


@dataclass
class Sample:
    seconds: float
    cpu: float
    check: str
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    tool: str
    what: str
    samples: list[Sample] = field(default_factory=list)
    error: str = ""

    def median(self, attr: str) -> float | None:
        vals = [getattr(s, attr) for s in self.samples]
        return statistics.median(vals) if vals else None

    def median_extra(self, key: str) -> float | None:
        vals = [s.extra[key] for s in self.samples if key in s.extra]
        return statistics.median(vals) if vals else None


def timed(fn: Callable[[], tuple[str, dict[str, float]]]) -> Sample:
    gc.collect()
    c0, t0 = cpu_seconds(), time.perf_counter()
    check, extra = fn()
    t1, c1 = time.perf_counter(), cpu_seconds()
    return Sample(t1 - t0, c1 - c0, check, extra)


class Ultralytics:
    """Builds Ultralytics' detection label cache for both splits, from scratch every time."""

    def __init__(self, ds: Path, facts: dict, threads: int | None):
        import ultralytics
        import ultralytics.data.dataset as uds
        from ultralytics.data.dataset import YOLODataset

        self.ds, self.facts = ds, facts
        self.version = ultralytics.__version__
        if threads:
            uds.NUM_THREADS = threads  # what cache_labels' ThreadPool reads
        self.threads = uds.NUM_THREADS
        self.cls = YOLODataset
        # What check_det_dataset() would return for data.yaml (not called: it may download fonts).
        self.data = {
            "path": str(ds),
            "train": str(ds / "images" / "train"),
            "val": str(ds / "images" / "val"),
            "names": {c: f"class{c}" for c in range(facts["classes"])},
            "nc": facts["classes"],
            "channels": 3,
        }
        # Time spent inside cache_labels (the scan itself), measured by a thin wrapper.
        self.scan_s = 0.0
        original = YOLODataset.cache_labels
        outer = self

        def cache_labels(self, path=Path("./labels.cache")):
            t0 = time.perf_counter()
            try:
                return original(self, path)
            finally:
                outer.scan_s += time.perf_counter() - t0

        YOLODataset.cache_labels = cache_labels

    def __call__(self) -> tuple[str, dict[str, float]]:
        self.scan_s = 0.0
        problems = []
        for split in SPLITS:
            d = self.cls(
                img_path=str(self.ds / "images" / split),
                data=self.data,
                task="detect",
                augment=False,
                imgsz=640,
                cache=False,
                rect=False,
                batch_size=16,
                prefix=f"{split}: ",
            )
            if len(d.labels) != self.facts[split]:
                problems.append(f"{split}: {len(d.labels)} of {self.facts[split]} images kept")
            if not (self.ds / "labels" / f"{split}.cache").exists():
                problems.append(f"{split}: no labels/{split}.cache written")
            del d
        if self.scan_s == 0.0:
            problems.append("cache_labels never ran (an existing cache was read)")
        return ("; ".join(problems) or "ok"), {"scan_s": self.scan_s}


class Trainyard:
    """trainyard's validation as the flow runs it ("workers"), forced into one process, or a cached re-check."""

    def __init__(self, ds: Path, facts: dict, mode: str = "workers"):
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        import tempfile

        import tasks.validate as validate  # import error -> caller reports n/a

        self.validate, self.mode = validate, mode
        self.cache = Path(tempfile.mkdtemp(prefix="trainyard-bench-validated-"))  # primed by the warm-up
        self.ds, self.facts = ds, facts

    def __call__(self) -> tuple[str, dict[str, float]]:
        v = self.validate
        if self.mode == "cached":
            report = v.check_cached(self.ds, version="bench.dir", cache_dir=self.cache)
        elif self.mode == "one process":
            limit, v.PARALLEL_MIN_IMAGES = v.PARALLEL_MIN_IMAGES, sys.maxsize
            try:
                report = v.validate_dataset(self.ds)
            finally:
                v.PARALLEL_MIN_IMAGES = limit
        else:
            report = v.validate_dataset(self.ds)
        problems = list(getattr(report, "problems", []) or [])
        notes = []
        if not getattr(report, "ok", not problems):
            first = problems[0] if problems else "report.ok is False"
            notes.append(f"NOT ok: {len(problems)} problem(s), first: {first}")
        splits = getattr(report, "splits", None)
        if isinstance(splits, dict):
            seen = sum(getattr(s, "images", 0) for s in splits.values())
            if seen != self.facts["images"]:
                notes.append(f"{seen} of {self.facts['images']} images counted")
        return ("; ".join(notes) or "ok"), {}


def run_all(ds: Path, facts: dict, args) -> tuple[list[Row], dict[str, str]]:
    """Warm-up once each, then --repeat rounds alternating the order; returns rows and tool facts."""
    tool_facts: dict[str, str] = {}
    os.environ.setdefault("YOLO_VERBOSE", "False")  # no progress bars / log lines from Ultralytics
    import torch  # noqa: F401  (imported here so no timer ever includes it)

    ul = Ultralytics(ds, facts, args.ultralytics_threads)
    tool_facts["ultralytics"] = ul.version
    tool_facts["ultralytics NUM_THREADS (label-cache ThreadPool)"] = f"{ul.threads}" + (
        " (set by --ultralytics-threads)" if args.ultralytics_threads else " (its default: min(8, nproc - 1))"
    )
    ul_row = Row(
        f"Ultralytics {ul.version}",
        f"`YOLODataset(img_path=images/<split>, data, task='detect', augment=False)` for train + val, "
        f"no labels/*.cache present (label-cache build, ThreadPool({ul.threads}))",
    )
    variants = [
        ("workers", Row("trainyard", "`tasks.validate.validate_dataset(root)` in-process (no cache)")),
        ("one process", Row("trainyard, one process", "the same with the worker processes switched off")),
        ("cached", Row("trainyard, cached", "`tasks.validate.check_cached`: the same data version checked again")),
    ]

    def run_ul() -> Sample:
        remove_ultralytics_caches(ds)  # must never read an existing cache
        s = timed(ul)
        remove_ultralytics_caches(ds)  # leave the tree as trainyard expects it
        return s

    def runner(mode: str, row: Row) -> Callable[[], Sample | None]:
        ty: Trainyard | None = None
        try:
            ty = Trainyard(ds, facts, mode)
        except Exception as exc:  # noqa: BLE001 - report, don't crash
            row.error = f"import failed: {type(exc).__name__}: {exc}"
            log(f"trainyard: {row.error}")

        def run() -> Sample | None:
            if ty is None or row.error:
                return None
            try:
                return timed(ty)
            except Exception as exc:  # noqa: BLE001
                row.error = f"validation raised {type(exc).__name__}: {exc}"
                log(f"trainyard: {row.error}")
                return None

        return run

    plan = [(ul_row, run_ul)] + [(row, runner(mode, row)) for mode, row in variants]
    for row, fn in plan:
        log(f"warm-up (untimed): {row.tool}")
        fn()
    for r in range(args.repeat):
        order = plan if r % 2 == 0 else plan[::-1]
        for row, fn in order:
            s = fn()
            if s is None:
                continue
            row.samples.append(s)
            log(f"round {r + 1}/{args.repeat} {row.tool}: {s.seconds:.2f} s wall, {s.cpu:.2f} CPU s, {s.check}")
    return [ul_row] + [row for _mode, row in variants], tool_facts


# --------------------------------------------------------------------------- report


def machine_info(tool_facts: dict[str, str], load_start: str) -> list[tuple[str, str]]:
    import cv2
    import numpy
    import PIL
    import torch

    cpu = cpu_model()
    try:
        affinity = str(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        affinity = "n/a"
    head = git_head(REPO)
    return [
        ("load average at start (1/5/15 min)", load_start),
        ("load average at end (1/5/15 min)", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("nproc (os.cpu_count / usable by this process)", f"{os.cpu_count()} / {affinity}"),
        ("CPU", cpu),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        *tool_facts.items(),
        ("pillow", PIL.__version__),
        ("opencv", cv2.__version__),
        ("numpy", numpy.__version__),
        ("torch", torch.__version__),
        ("trainyard commit", head),
    ]


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def build_report(
    rows: list[Row], info, facts: dict, ds: Path, args, command: str, tree_note: str, elapsed: float
) -> str:
    n = facts["images"]
    ul, ty, *variants = rows
    out: list[str] = ["# trainyard validation benchmark\n"]
    out.append(
        f"Dataset: {n} JPEG images ({facts['train']} train / {facts['val']} val; mostly 640x480, quality "
        f"{JPEG_QUALITY}, {facts['jpeg_bytes'] / n / 1024:.0f} KB on average, {facts['jpeg_bytes'] / 1e6:.0f} MB "
        f"in all), {facts['boxes']} boxes in {n} label files (1-5 each), {facts['classes']} classes, seed "
        f"{facts['seed']}; at `{ds}`. Both tools run in this one process on the same files; each was warmed "
        f"up once (untimed, so the page cache is equally warm), then run {args.repeat} time(s) alternating "
        f"which goes first. Cells are medians. Imports are not timed. Whole benchmark took {elapsed:.0f} s.\n"
    )
    out.append("## Machine\n")
    out.append("| | |\n|---|---|")
    out.extend(f"| {k} | {v} |" for k, v in info)
    out.append("")
    out.append("## Results\n")
    out.append("| tool | s (median) | images/s | CPU s (median) | CPU / wall | runs, s | check | what is timed |")
    out.append("|---|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        sec, cpu = r.median("seconds"), r.median("cpu")
        ips = fmt(n / sec, ".0f") if sec else "n/a"
        util = fmt(cpu / sec) if sec and cpu is not None else "n/a"
        runs = ", ".join(f"{s.seconds:.2f}" for s in r.samples) or "n/a"
        checks = "; ".join(dict.fromkeys(s.check for s in r.samples)) or (r.error or "n/a")
        if r.error and r.samples:
            checks += f"; {r.error}"
        out.append(f"| {r.tool} | {fmt(sec)} | {ips} | {fmt(cpu)} | {util} | {runs} | {checks} | {r.what} |")
    out.append("")
    scan = ul.median_extra("scan_s")
    if scan is not None:
        out.append(
            f"Of Ultralytics' median, {scan:.2f} s were spent inside `YOLODataset.cache_labels` "
            "(the scan and the .cache write); the rest is the dataset constructor around it.\n"
        )
    out.append(
        "CPU s = process CPU time (all threads) plus reaped child processes, over the timed call; "
        "CPU / wall ≈ how many cores were kept busy.\n"
    )
    out.append("## Ratio\n")
    us, ts = ul.median("seconds"), ty.median("seconds")
    if us and ts:
        ratio = us / ts
        verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
        out.append(f"- trainyard / Ultralytics images/s: **{ratio:.2f}×** (>1 = trainyard faster)")
        out.append(f"- target ≥ {TARGET_RATIO:.1f}× Ultralytics: **{verdict}**")
        uc, tc = ul.median("cpu"), ty.median("cpu")
        if uc and tc:
            out.append(f"- CPU seconds per image, trainyard / Ultralytics: {tc / uc:.2f}× (<1 = trainyard cheaper)")
        for row in variants:
            vs = row.median("seconds")
            if vs:
                out.append(f"- {row.tool} / Ultralytics images/s: {us / vs:.2f}× ({vs * 1000:.0f} ms)")
    else:
        out.append(f"- trainyard / Ultralytics images/s: n/a ({ty.error or ul.error or 'no samples'})")
        out.append(f"- target ≥ {TARGET_RATIO:.1f}× Ultralytics: n/a")
    out.append(f"- dataset tree after the runs: {tree_note}")
    out.append("")
    out.append("## Command\n")
    out.append(f"```\n{command}\n```\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None, help="dataset size in images (default 10000; --smoke: 200)")
    ap.add_argument(
        "--repeat", type=int, default=None, help="timed runs per tool; the median is reported (default 3; --smoke: 1)"
    )
    ap.add_argument(
        "--report",
        "--out",
        dest="report",
        type=Path,
        default=None,
        help="Markdown report (default bench/validate_results.md; --smoke: /tmp/trainyard-bench/validate_smoke.md)",
    )
    ap.add_argument(
        "--workdir",
        "--work-dir",
        dest="workdir",
        type=Path,
        default=Path("/tmp/trainyard-bench/validate"),
        help="where the generated dataset is kept and reused (default /tmp/trainyard-bench/validate)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ultralytics-threads",
        type=int,
        default=None,
        help="override Ultralytics' NUM_THREADS for its label-cache ThreadPool (default: its own value)",
    )
    ap.add_argument("--smoke", action="store_true", help="quick check that the script works: 200 images, 1 repeat")
    args = ap.parse_args(argv)
    if args.images is None:
        args.images = 200 if args.smoke else 10_000
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3
    if args.report is None:
        args.report = Path("/tmp/trainyard-bench/validate_smoke.md") if args.smoke else HERE / "validate_results.md"
    if args.images < 10:
        ap.error("--images must be at least 10 (every split needs images)")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["validate_bench.py", *argv])

    started = time.perf_counter()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    ds, facts = generate_dataset(args.images, args.seed, args.workdir)
    remove_ultralytics_caches(ds)
    before = tree(ds)
    rows, tool_facts = run_all(ds, facts, args)
    after = tree(ds)
    new, gone = sorted(after - before), sorted(before - after)
    tree_note = (
        "unchanged (no files added or removed by either tool; Ultralytics' labels/*.cache removed by the benchmark)"
    )
    if new or gone:
        tree_note = f"CHANGED: {len(new)} new ({', '.join(new[:5])}), {len(gone)} gone ({', '.join(gone[:5])})"
    info = machine_info(tool_facts, load_start)
    report = build_report(rows, info, facts, ds, args, command, tree_note, time.perf_counter() - started)
    print(report)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report)
    log(f"wrote {args.report}")
    failed = any(r.error or not r.samples or any(s.check != "ok" for s in r.samples) for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
