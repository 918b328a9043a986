"""What `trainyard run` costs over a bare Ultralytics training, and what its "up to date" answer costs.

    .venv/bin/python bench/overhead.py [--epochs 3 10] [--pairs 3] [--out bench/overhead.md]

Rounds on the demo dataset, the order rotated each round so that load drifts hit every side alike:
- bare: ``YOLO("yolo11n.yaml").train(...)`` in a fresh interpreter with the arguments of
  params.yaml (the same model, data, seed and settings: the same losses);
- trainyard: ``trainyard run --force`` with the same params (stage, validate, key, one MLflow
  run, the model registered, the Prefect flow) against the shared background Prefect API, whose
  CPU time during the command is added to the command's;
- trainyard, ephemeral: the same with ``TRAINYARD_PREFECT_API=ephemeral`` (Prefect's temporary
  server per command, as before the shared API).
One unmeasured ``trainyard run --force`` first starts the shared API (its start is reported
apart). Then the no-op: ``trainyard run`` when a finished run has the same inputs, against
``dvc repro`` with nothing to do in a one-stage DVC project. Reports medians of wall seconds,
CPU seconds (user + system of the command and every child it waited for), peak RSS (of the
largest process, and of the command's own: the flow without its training child), the fixed and
per-epoch cost from two epoch counts, with the machine's load average, as Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchfacts import cpu_model, git_head, stage_for_training  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

BARE = """
import sys
from ultralytics import YOLO
YOLO("yolo11n.yaml").train(data=sys.argv[1], project=sys.argv[2], name="bare", exist_ok=True, epochs=int(sys.argv[3]),
    imgsz=96, batch=8, device="cpu", workers=0, seed=0, deterministic=True, optimizer="AdamW", lr0=0.002,
    warmup_epochs=1.0, mosaic=0.0, plots=True, verbose=False)
"""


def measure(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float, float]:
    """(wall s, CPU s of the command and its children, peak RSS MiB of the largest of them, peak RSS MiB
    of the command's own process: the flow, apart from its training child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    own = 0.0
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:  # VmHWM: the process's own high-water mark, gone once it exits
            with contextlib.suppress(OSError, ValueError, StopIteration):
                hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
                own = max(own, int(hwm.split()[1]) / 1024)
            time.sleep(0.05)
        log.seek(0)
        output = log.read().decode(errors="replace")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss / 1024, own


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its descendants (the shared API's server runs under it)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    except psutil.Error:
        pass
    return total


Sample = tuple[float, float, float, float]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, nargs="+", default=[3, 10], help="epoch counts (two split fixed/per epoch)")
    ap.add_argument("--pairs", type=int, default=3, help="rounds of bare / trainyard / ephemeral per epoch count")
    ap.add_argument("--noop", type=int, default=3, help="repetitions of each no-op")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "overhead.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="trainyard-overhead-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI", "TRAINYARD_"))},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "YOLO_CONFIG_DIR": str(work / "yolo"),
        "PREFECT_HOME": str(work / "prefect-home"),  # its own shared API, stopped at the end
    }
    params = work / "params.yaml"
    params.write_text(
        (REPO / "params.yaml").read_text().replace("  source: data/demo", f"  source: {REPO / 'data' / 'demo'}")
    )

    def trainyard(epochs: int) -> list[str]:
        return [str(BIN / "trainyard"), "run", "--params", str(params), "--set", f"train.epochs={epochs}"]

    data_yaml = stage_for_training(BIN / "trainyard", params, [], work, env)

    ephemeral = {**env, "TRAINYARD_PREFECT_API": "ephemeral"}
    start = time.perf_counter()
    subprocess.run([*trainyard(1), "--force"], cwd=work, env=env, check=True, capture_output=True)
    first_run = time.perf_counter() - start
    api_pid = int(json.loads((work / "prefect-home" / "trainyard-api.json").read_text())["pid"])

    sides = ("bare", "trainyard", "ephemeral")
    results: dict[int, dict[str, list[Sample]]] = {}
    for epochs in args.epochs:
        rows: dict[str, list[Sample]] = {side: [] for side in sides}
        for i in range(args.pairs):
            for side in sides[i % 3 :] + sides[: i % 3]:
                if side == "bare":
                    bare = [sys.executable, "-c", BARE, str(data_yaml), str(work / "bare"), str(epochs)]
                    rows[side].append(measure(bare, work, env))
                elif side == "trainyard":
                    before = tree_cpu(api_pid)
                    wall, cpu, rss, own = measure([*trainyard(epochs), "--force"], work, env)
                    rows[side].append((wall, cpu + tree_cpu(api_pid) - before, rss, own))
                else:
                    rows[side].append(measure([*trainyard(epochs), "--force"], work, ephemeral))
                print(epochs, side, [round(x, 1) for x in rows[side][-1]], flush=True)  # the raw samples
        results[epochs] = rows

    last = args.epochs[-1]
    noop = [measure(trainyard(last), work, env) for _ in range(args.noop)]
    dvc = work / "dvc"
    dvc.mkdir()
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=dvc, check=True)
    (dvc / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\n")
    subprocess.run([str(BIN / "dvc"), "repro", "-q"], cwd=dvc, env=env, check=True)
    dvc_noop = [measure([str(BIN / "dvc"), "repro"], dvc, env) for _ in range(args.noop)]
    subprocess.run([str(BIN / "trainyard"), "prefect", "stop"], cwd=work, env=env, check=True, capture_output=True)

    def med(values: list[Sample], k: int) -> float:
        return statistics.median(v[k] for v in values)

    lines = [
        f"# trainyard overhead ({time.strftime('%Y-%m-%d')})",
        "",
        f"`.venv/bin/python bench/overhead.py --epochs {' '.join(map(str, args.epochs))} --pairs {args.pairs}` "
        f"at {git_head(REPO)}; {cpu_model()}, {os.cpu_count()} cores; load average at the end "
        f"{os.getloadavg()[0]:.2f}.",
        "",
    ]
    gaps: dict[int, float] = {}
    for epochs, rows in results.items():
        bare_w, ty_w, eph_w = (med(rows[s], 0) for s in sides)
        bare_c, ty_c, eph_c = (med(rows[s], 1) for s in sides)
        # each round's sides ran back to back: their differences cancel the machine's drift
        # between rounds, which on a shared machine is larger than the gap itself
        paired = statistics.median(t[0] - b[0] for t, b in zip(rows["trainyard"], rows["bare"], strict=True))
        paired_eph = statistics.median(t[0] - b[0] for t, b in zip(rows["ephemeral"], rows["bare"], strict=True))
        paired_cpu = statistics.median(t[1] / b[1] for t, b in zip(rows["trainyard"], rows["bare"], strict=True))
        gaps[epochs] = paired
        lines += [
            f"| {epochs}-epoch demo training (median of {args.pairs}) | wall s | CPU s | peak RSS MiB, "
            "largest process | peak RSS MiB, the command's own process |",
            "| --- | --- | --- | --- | --- |",
            f"| bare `YOLO(...).train()` | {bare_w:.1f} | {bare_c:.1f} | {med(rows['bare'], 2):.0f} | "
            f"{med(rows['bare'], 3):.0f} |",
            f"| `trainyard run --force` | {ty_w:.1f} | {ty_c:.1f} | {med(rows['trainyard'], 2):.0f} | "
            f"{med(rows['trainyard'], 3):.0f} |",
            f"| `trainyard run --force`, ephemeral Prefect | {eph_w:.1f} | {eph_c:.1f} | "
            f"{med(rows['ephemeral'], 2):.0f} | {med(rows['ephemeral'], 3):.0f} |",
            f"| gap (shared API), median of the rounds' differences | {paired:+.1f} s | {paired_cpu:.2f}x | | |",
            f"| gap (ephemeral), median of the rounds' differences | {paired_eph:+.1f} s | | | |",
            f"| gap of the medians (shared API / ephemeral) | {ty_w - bare_w:+.1f} s / {eph_w - bare_w:+.1f} s | "
            f"{ty_c / bare_c:.2f}x / {eph_c / bare_c:.2f}x | | |",
            "",
        ]
    if len(gaps) >= 2:
        (e1, g1), (e2, g2) = sorted(gaps.items())[0], sorted(gaps.items())[-1]
        per_epoch = (g2 - g1) / (e2 - e1)
        lines += [
            f"Fixed and per-epoch cost (shared API), from the paired gaps at {e1} and {e2} epochs: "
            f"**{g1 - per_epoch * e1:+.1f} s fixed, {per_epoch:+.2f} s per epoch**.",
            "",
        ]
    lines += [
        f"The first command started the shared Prefect API: {first_run:.1f} s in all (not in the medians); "
        "the API's CPU time during each measured command is in its CPU column. The command's own process "
        "is the flow (the training runs in a child); for bare, the training itself.",
        "",
        f"| nothing to do (median of {args.noop}) | wall s | CPU s |",
        "| --- | --- | --- |",
        f"| `trainyard run` (up to date) | {med(noop, 0):.2f} | {med(noop, 1):.2f} |",
        f"| `dvc repro` (one stage, unchanged) | {med(dvc_noop, 0):.2f} | {med(dvc_noop, 1):.2f} |",
        f"| ratio | {med(noop, 0) / med(dvc_noop, 0):.1f}x | |",
        "",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
