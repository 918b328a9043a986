"""The GPU check: what only a machine with an NVIDIA GPU can show (run it there; CPU for a dry run).

    python bench/gpu_check.py --out DIR [--device 0] [--epochs 40] [--batch 8]   (the demo's settings)

1. NVML telemetry as `trainyard doctor` reads it (tasks/adapters/nvml.py, the real pynvml).
2. YOLO11n trained on the demo dataset on the GPU through the training-process seam
   (`python -m tasks.adapters.ultralytics_trainer job.json`, the same entry point the Docker image runs), twice with
   the same seed: how far apart two identical GPU runs land, per metric and epoch. That is
   the evidence for `reproduce.rtol` / `reproduce.atol` on GPUs.
3. A training SIGKILLed halfway (after checkpoint epochs//2) and resumed from last.pt (`resume: true`):
   results.csv must hold every epoch exactly once.

Writes DIR/gpu_check.json (every figure) and prints a summary. No MLflow or Prefect needed:
only tasks/ and Ultralytics.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.demo_data import generate_demo_dataset  # noqa: E402
from tasks.adapters.nvml import read_nvml  # noqa: E402
from tasks.job import TrainJob, resume_point  # noqa: E402


def rows(results_csv: Path) -> list[dict[str, float]]:
    with results_csv.open() as f:
        return [{k.strip(): float(v) for k, v in r.items() if k and k.strip() != "time"} for r in csv.DictReader(f)]


def train(
    work: Path, name: str, args: dict[str, Any], kill_after: int | None = None, resume: bool = False
) -> dict[str, Any]:
    run_dir = work / name
    run_dir.mkdir(parents=True, exist_ok=True)
    data_yaml = run_dir / "data.yaml"
    data_yaml.write_text((work / "data" / "data.yaml").read_text() + f"\npath: {work / 'data'}\n")
    job = TrainJob(run_dir=str(run_dir), data_yaml=str(data_yaml), args=args, resume=resume).write(run_dir / "job.json")
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "YOLO_CONFIG_DIR": str(work / "yolo")}
    env.pop("MLFLOW_RUN_ID", None)
    log = (run_dir / ("resume.log" if resume else "train.log")).open("wb")
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.adapters.ultralytics_trainer", str(job)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    killed_at = None
    if kill_after is not None:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            done = resume_point(run_dir)
            if done is not None and done >= kill_after:
                proc.send_signal(signal.SIGKILL)
                killed_at = done
                break
            time.sleep(0.05)
    code = proc.wait()
    log.close()
    return {
        "run_dir": str(run_dir),
        "exit": code,
        "seconds": round(time.monotonic() - start, 2),
        "killed_after_epoch": killed_at,
    }


def compare(a: list[dict[str, float]], b: list[dict[str, float]]) -> dict[str, Any]:
    """Largest absolute and relative difference per column, and the first epoch that differs."""
    out: dict[str, Any] = {"identical": a == b, "first_diff_epoch": None, "columns": {}}
    for ra, rb in zip(a, b, strict=False):  # a shorter run compares the epochs both have
        if ra != rb and out["first_diff_epoch"] is None:
            out["first_diff_epoch"] = int(ra["epoch"])
        for k, va in ra.items():
            vb = rb.get(k, float("nan"))
            col = out["columns"].setdefault(k, {"max_abs": 0.0, "max_rel": 0.0})
            diff = abs(va - vb)
            col["max_abs"] = max(col["max_abs"], diff)
            col["max_rel"] = max(col["max_rel"], diff / abs(va) if va else (0.0 if diff == 0 else float("inf")))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="0")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--work", default="/tmp/trainyard-gpu-check")
    a = p.parse_args()
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": a.device}
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda"] = torch.version.cuda
        report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # the report says what was there
        report["torch_error"] = repr(exc)
    nvml = read_nvml()
    report["nvml"] = {
        "available": nvml.available,
        "driver": nvml.driver,
        "cuda_driver": nvml.cuda_driver,
        "gpus": [g.__dict__ for g in nvml.gpus],
        "reason": nvml.reason,
    }
    print("NVML:", json.dumps(report["nvml"], default=str))
    generate_demo_dataset(work / "data")
    args = {
        "model": "yolo11n.yaml",
        "epochs": a.epochs,
        "imgsz": 96,
        "batch": a.batch,
        "device": a.device,
        "workers": 2,
        "seed": 0,
        "deterministic": True,
        "optimizer": "AdamW",
        "lr0": 0.002,
        "warmup_epochs": 1.0,
        "mosaic": 0.0,
        "plots": False,
    }
    runs = {name: train(work, name, args) for name in ("a", "b")}
    report["runs"] = runs
    if all(r["exit"] == 0 for r in runs.values()):
        ra, rb = rows(work / "a" / "results.csv"), rows(work / "b" / "results.csv")
        report["same_seed_twice"] = compare(ra, rb)
        report["final_a"] = {k: v for k, v in ra[-1].items() if k.startswith("metrics/")}
    killed = train(work, "k", args, kill_after=max(1, a.epochs // 2))
    report["kill"] = killed
    if killed["killed_after_epoch"] is not None:
        report["kill"]["resume_point"] = resume_point(work / "k")
        resumed = train(work, "k", args, resume=True)
        report["resume"] = resumed
        epochs = [int(r["epoch"]) for r in rows(work / "k" / "results.csv")]
        report["resume"]["epochs_in_results_csv"] = epochs
        report["resume"]["every_epoch_once"] = epochs == list(range(1, a.epochs + 1))
    for name in ("a", "k"):
        for log in (work / name).glob("*.log"):
            (out / f"{name}-{log.name}").write_bytes(log.read_bytes()[-200_000:])
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "nvml"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
