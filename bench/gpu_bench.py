"""GPU efficiency: the trainyard pipeline against a bare Ultralytics training with identical arguments.

    .venv/bin/python bench/gpu_bench.py [--device 0] [--images 3000] [--epochs 3] [--out FILE]

Side by side in one run, on one device, on a generated dataset staged to local disk:
- bare: ``YOLO(model).train(...)`` in a fresh interpreter; its GPU sampled by this script
  (trainyard's NVML sampler, every 0.5 s) while it trains;
- trainyard: ``trainyard run --force`` (the local runner) with the same arguments; its figures
  are the ones it records in MLflow: per-epoch data wait, images/s, GPU utilisation, peak memory.
Epoch time for both is the difference of consecutive ``time`` values of results.csv (what
Ultralytics measures, training and validation of the epoch). Images/s = training images per
epoch time. The telemetry's cost is measured directly: the median time of one sample of the
job's GPUs, over the sampling interval (5 s).

Defaults: on a machine with an NVIDIA GPU, yolo11s at imgsz 640, batch 16, 8 workers, 3000
training images; without one, the same pipeline end to end at a tiny size on the CPU (yolo11n,
imgsz 64, 64 images), so the script and its report are exercised everywhere. Writes Markdown
(``--out``, default bench/gpu_report-<gpu or cpu>.md) with the targets met or missed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchfacts import cpu_model, git_head, stage_for_training  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
SAMPLE_INTERVAL = 5.0  # MLflow's system metrics interval, which the pipeline's sampler runs at

BARE = """
import json, sys
from ultralytics import YOLO
args = json.loads(sys.argv[3])
YOLO(args.pop("model")).train(data=sys.argv[1], project=sys.argv[2], name="bare", exist_ok=True, **args)
"""


def epoch_seconds(results_csv: Path) -> list[float]:
    """Per-epoch seconds from results.csv's cumulative ``time`` column."""
    with results_csv.open() as f:
        times = [float(r["time"]) for r in csv.DictReader(f, skipinitialspace=True)]
    return [b - a for a, b in zip([0.0, *times[:-1]], times, strict=True)]


class Sampler:
    """The bench's own view of the bare training's GPU: trainyard's NVML sampler on a thread."""

    def __init__(self, device: str) -> None:
        from tasks.adapters.nvml import GpuSampler
        from tasks.gpu_scope import job_gpus

        opened = GpuSampler.open(job_gpus(device, "local", None, os.environ.get("CUDA_VISIBLE_DEVICES")))
        self.gpu = opened if isinstance(opened, GpuSampler) else None
        self.why = opened if isinstance(opened, str) else ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            assert self.gpu is not None
            self.gpu.collect_metrics()

    def __enter__(self) -> "Sampler":
        if self.gpu is not None:
            self.gpu.epoch_summary()  # drop anything sampled before
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict[str, float]:
        return self.gpu.epoch_summary() if self.gpu is not None else {}

    def cost(self) -> float | None:
        """Median seconds one sample of the job's GPUs takes."""
        if self.gpu is None:
            return None
        times = []
        for _ in range(50):
            start = time.perf_counter()
            self.gpu.collect_metrics()
            times.append(time.perf_counter() - start)
        self.gpu.clear_metrics()
        return statistics.median(times)


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - start


def pipeline_figures(db: Path, run_id: str) -> dict[str, list[float]]:
    """The per-epoch perf/* metrics the run recorded, by name, in epoch order."""
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT key, step, value FROM metrics WHERE run_uuid = ? AND key LIKE 'perf/%' ORDER BY step", (run_id,)
        ).fetchall()
    out: dict[str, list[float]] = {}
    for key, _step, value in rows:
        out.setdefault(key, []).append(float(value))
    return out


def main() -> None:
    from tasks.adapters.nvml import read_nvml

    nvml = read_nvml()
    has_gpu = nvml.available and bool(nvml.gpus)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="0" if has_gpu else "cpu")
    ap.add_argument("--model", default="yolo11s.yaml" if has_gpu else "yolo11n.yaml")
    ap.add_argument("--images", type=int, default=3000 if has_gpu else 64, help="training images (val: a fifth)")
    ap.add_argument("--imgsz", type=int, default=640 if has_gpu else 64)
    ap.add_argument("--batch", type=int, default=16 if has_gpu else 8)
    ap.add_argument("--workers", type=int, default=8 if has_gpu else 0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    gpu_name = nvml.gpus[0].name if has_gpu and args.device != "cpu" else "cpu"
    out = args.out or REPO / "bench" / f"gpu_report-{'cpu' if gpu_name == 'cpu' else gpu_name.split()[-1].lower()}.md"

    from tasks.demo_data import DemoSpec, generate_demo_dataset

    work = Path(tempfile.mkdtemp(prefix="trainyard-gpu-bench-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINYARD_"))},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "YOLO_CONFIG_DIR": str(work / "yolo"),
        "YOLO_OFFLINE": "1",
        "PREFECT_HOME": str(work / "prefect-home"),
        "TRAINYARD_PREFECT_API": "ephemeral",  # nothing left running afterwards
    }
    size = max(64, min(args.imgsz, 640))
    start = time.perf_counter()
    data = generate_demo_dataset(
        work / "data", DemoSpec(train_images=args.images, val_images=max(8, args.images // 5), size=size)
    )
    print(f"dataset: {args.images} training images of {size} px in {time.perf_counter() - start:.0f} s", flush=True)
    train = {
        "model": args.model,
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "device": args.device,
        "workers": args.workers,
        "plots": False,
    }
    params = work / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    db = work / "mlflow.db"
    overrides = [
        f"data.source={data}",
        f"stage.root={work / 'stage'}",
        f"tracking.uri=sqlite:///{db}",
        *[f"train.{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in train.items()],
    ]
    from tasks.params import load_params

    bare_args = dict(load_params(params, overrides).train)  # every train.* argument the pipeline passes
    sets = [x for o in overrides for x in ("--set", o)]
    trainyard = [str(BIN / "trainyard"), "run", "--force", "--params", str(params), *sets]
    data_yaml = stage_for_training(BIN / "trainyard", params, sets, work, env)

    with Sampler(args.device) as sampler:
        bare = [sys.executable, "-c", BARE, str(data_yaml), str(work / "bare"), json.dumps(bare_args)]
        bare_wall = run(bare, work, env)
    bare_gpu = sampler.summary()
    sample_cost = sampler.cost()
    ty_wall = run(trainyard, work, env)
    run_id = max((work / "runs").iterdir(), key=lambda p: p.stat().st_mtime).name
    figures = pipeline_figures(db, run_id)
    shutil.rmtree(work / "prefect-home", ignore_errors=True)

    bare_epochs = epoch_seconds(work / "bare" / "bare" / "results.csv")
    ty_epochs = epoch_seconds(work / "runs" / run_id / "results.csv")
    # the first epoch pays for start-up (workers, cudnn autotuning): compare the rest when there is a rest
    steady = slice(1, None) if args.epochs > 1 else slice(None)
    bare_epoch = statistics.median(bare_epochs[steady])
    ty_epoch = statistics.median(ty_epochs[steady])
    bare_ips, ty_ips = args.images / bare_epoch, args.images / ty_epoch
    wait = figures.get("perf/data_wait_pct", [])[steady]
    util = figures.get("perf/gpu_utilization_mean", [])[steady]
    peak = [max(figures["perf/gpu_memory_peak_mb"])] if "perf/gpu_memory_peak_mb" in figures else []

    def mean(values: list[float], unit: str) -> str:
        return f"{statistics.mean(values):.1f}{unit}" if values else no_gpu

    no_gpu = "n/a (no GPU)" if gpu_name == "cpu" else "n/a"
    bare_util = [bare_gpu["perf/gpu_utilization_mean"]] if "perf/gpu_utilization_mean" in bare_gpu else []
    bare_peak = [bare_gpu["perf/gpu_memory_peak_mb"]] if "perf/gpu_memory_peak_mb" in bare_gpu else []
    lines = [
        f"# GPU benchmark: trainyard against bare Ultralytics ({time.strftime('%Y-%m-%d')})",
        "",
        f"`.venv/bin/python bench/gpu_bench.py --device {args.device} --images {args.images} --epochs {args.epochs}` "
        f"at {git_head(REPO)}. Device: **{gpu_name}**"
        + (f" (driver {nvml.driver}, CUDA <= {nvml.cuda_driver})" if gpu_name != "cpu" else f" ({cpu_model()})")
        + f", {os.cpu_count()} CPU cores, load average at the end {os.getloadavg()[0]:.2f}. "
        f"{args.model} at imgsz {args.imgsz}, batch {args.batch}, {args.workers} workers, {args.images} generated "
        f"training images ({size} px) staged to local disk, {args.epochs} epochs, every other argument as in "
        "params.yaml for both; "
        + ("epochs 2.. compared (epoch 1 pays for start-up)." if args.epochs > 1 else "one epoch."),
        "",
        "| | bare `YOLO().train()` | `trainyard run` | ratio |",
        "| --- | --- | --- | --- |",
        f"| wall, whole command (trainyard's with a temporary Prefect API; its fixed cost is bench/overhead.py's "
        f"subject) | {bare_wall:.1f} s | {ty_wall:.1f} s | {ty_wall / bare_wall:.2f}x |",
        f"| epoch time (median) | {bare_epoch:.2f} s | {ty_epoch:.2f} s | {ty_epoch / bare_epoch:.3f}x |",
        f"| images/s (training images / epoch time) | {bare_ips:.1f} | {ty_ips:.1f} | {ty_ips / bare_ips:.3f}x |",
        f"| GPU utilisation, mean | {mean(bare_util, ' %')} | {mean(util, ' %')} | |",
        f"| data wait, share of the training loop | not measured (bare) | {mean(wait, ' %')} | |",
        f"| peak GPU memory | {mean(bare_peak, ' MB')} | {mean(peak, ' MB')} | |",
        "",
        "## Targets",
        "",
        f"- images/s ≥ 0.98x bare: **{'met' if ty_ips >= 0.98 * bare_ips else 'missed'}** ({ty_ips / bare_ips:.3f}x)",
    ]
    if util:
        mean_util = statistics.mean(util)
        lines.append(f"- GPU utilisation ≥ 90 %: **{'met' if mean_util >= 90 else 'missed'}** ({mean_util:.1f} %)")
    else:
        lines.append(f"- GPU utilisation ≥ 90 %: {no_gpu}")
    if sample_cost is not None:
        share = 100 * sample_cost / SAMPLE_INTERVAL
        lines.append(
            f"- telemetry ≤ 1 % of epoch time: **{'met' if share <= 1 else 'missed'}** (one sample of the job's GPUs "
            f"takes {sample_cost * 1000:.2f} ms, every {SAMPLE_INTERVAL:.0f} s: {share:.3f} %)"
        )
    else:
        lines.append(f"- telemetry ≤ 1 % of epoch time: {no_gpu}: the sampler is off without a GPU")
    lines += ["", "Per-epoch seconds: bare " + ", ".join(f"{s:.2f}" for s in bare_epochs)
              + "; trainyard " + ", ".join(f"{s:.2f}" for s in ty_epochs) + "."]  # fmt: skip
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
