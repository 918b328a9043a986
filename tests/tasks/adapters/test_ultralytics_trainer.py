"""tasks.adapters.ultralytics_trainer: a killed training resumes from last.pt into the same MLflow run (its epochs
followed from epochs.jsonl, as the flow does); the DDP argument path on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tasks.demo_data import generate_demo_dataset
from tasks.errors import ParamsError, TrainingError
from tasks.evaluate import write_metrics
from tasks.params import load_params
from tasks.adapters.mlflow_tracking import EpochLogger, Tracker, backfill_epochs, read_results_csv
from tasks.adapters.ultralytics_trainer import train_yolo
from tasks.job import (
    EPOCHS_FILE,
    JOB_FILE,
    LAST,
    OutOfMemory,
    TrainJob,
    TrainOutcome,
    plan_retry,
    read_checkpoint,
    recovery_schedule,
    read_epochs,
    resume_point,
    trim_results,
)
from tasks.data_wait import IMAGES_PER_S, LOOP_S, WAIT_PCT, WAIT_S, diagnose, diagnose_run
from tasks.live_logging import EpochFollower
from tests.conftest import REPO, TINY

ARGS = {
    "model": "yolo11n.yaml",
    "epochs": 4,
    "imgsz": 32,
    "batch": 8,
    "workers": 0,
    "device": "cpu",
    "plots": False,
    "seed": 0,
    "deterministic": True,
}

# The training entry point, SIGKILLed right after epoch 2's checkpoint is written and before
# that epoch is recorded for MLflow: the latest point in an epoch a kill can hit.
KILL_AFTER_SAVING_EPOCH_2 = """
import os, runpy, signal, sys
from ultralytics.utils.callbacks.base import default_callbacks

def kill(trainer):
    if trainer.epoch + 1 == 2:
        os.kill(os.getpid(), signal.SIGKILL)

default_callbacks["on_model_save"].append(kill)
sys.argv = ["tasks.adapters.ultralytics_trainer", sys.argv[1]]
runpy.run_module("tasks.adapters.ultralytics_trainer", run_name="__main__")
"""


# The training entry point with a data path that cannot keep up: every batch reaches the training
# loop 0.4 s late (Ultralytics' own loader, slowed; validation's batches too).
SLOW_BATCHES = """
import runpy, sys, time
from ultralytics.data import build

fast = build.InfiniteDataLoader.__iter__

def slow(self):
    for batch in fast(self):
        time.sleep(0.4)
        yield batch

build.InfiniteDataLoader.__iter__ = slow
sys.argv = ["tasks.adapters.ultralytics_trainer", sys.argv[1]]
runpy.run_module("tasks.adapters.ultralytics_trainer", run_name="__main__")
"""


# The training entry point, out of GPU memory as epoch 3 starts (the injected error is the one torch raises).
OOM_IN_EPOCH_3 = """
import runpy, sys, torch
from ultralytics.utils.callbacks.base import default_callbacks

def out_of_memory(trainer):
    if trainer.epoch + 1 == 3:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

default_callbacks["on_train_epoch_start"].append(out_of_memory)
sys.argv = ["tasks.adapters.ultralytics_trainer", sys.argv[1]]
runpy.run_module("tasks.adapters.ultralytics_trainer", run_name="__main__")
"""


def train(job: TrainJob, env: dict[str, str], code: str | None = None) -> subprocess.CompletedProcess[str]:
    path = job.write(Path(job.run_dir) / JOB_FILE)
    entry = ["-c", code] if code else ["-m", "tasks.adapters.ultralytics_trainer"]
    return subprocess.run(
        [sys.executable, *entry, str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def child_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "TRAINYARD_JOB", "MLFLOW_RUN_ID")}
    # fresh Ultralytics settings, as on a new machine: its MLflow integration is on
    return {**env, "YOLO_CONFIG_DIR": str(root / "ultralytics"), "YOLO_OFFLINE": "1", **extra}


def all_runs(tracker: Tracker) -> list[Any]:
    experiments = [e.experiment_id for e in tracker.client.search_experiments()]
    return list(tracker.client.search_runs(experiments))


def steps(tracker: Tracker, run_id: str, key: str) -> list[int]:
    return [step for step, _ in tracker.metric_history(run_id, key)]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-epoch training killed after saving epoch 2, and a copy of its run directory as it was."""
    root = tmp_path_factory.mktemp("resume")
    data = generate_demo_dataset(root / "data", TINY)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri)
    run_id = tracker.start_run("resume", "killed", tags={}, params={})
    run_dir = root / "run"
    run_dir.mkdir()
    job = TrainJob(run_dir=str(run_dir), data_yaml=str(data / "data.yaml"), args=ARGS)
    env = child_env(root, MLFLOW_TRACKING_URI=uri)  # as in a user's shell: Ultralytics' callback would log there
    follower = EpochFollower(EpochLogger(tracker, run_id, print), run_dir, poll=0.2).start()  # as the flow does
    proc = train(job, env, KILL_AFTER_SAVING_EPOCH_2)
    assert follower.stop(timeout=30) == []
    assert proc.returncode == -9, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.copytree(run_dir, root / "copy")
    return {
        "root": root,
        "job": job,
        "env": env,
        "tracker": tracker,
        "run_id": run_id,
        "run_dir": run_dir,
        "copy": root / "copy",
        "last_pt": (run_dir / LAST).read_bytes(),
    }


@pytest.mark.slow
def test_a_killed_training_resumes_into_the_same_run_without_gaps_or_duplicates(killed: dict[str, Any]) -> None:
    run_dir: Path = killed["run_dir"]
    tracker: Tracker = killed["tracker"]
    run_id: str = killed["run_id"]
    csv = run_dir / "results.csv"
    assert resume_point(run_dir) == 2
    assert [r["epoch"] for r in read_results_csv(csv)] == [1, 2]
    assert sorted(read_epochs(run_dir / EPOCHS_FILE)[0]) == [1]  # epoch 2 was saved, not yet recorded
    assert steps(tracker, run_id, "train/box_loss") == [1]

    # What a kill between Ultralytics' results.csv append and its checkpoint leaves: a row for
    # an epoch last.pt does not hold, a line cut short, and a half-written checkpoint beside it.
    header = csv.read_text().splitlines()[0]
    with csv.open("a") as f:
        f.write(",".join(["3"] + ["999"] * (header.count(","))) + "\n4,0.5,")
    (run_dir / "weights" / "last.pt.partial").write_bytes(b"PK\x03\x04 cut short")

    follower = EpochFollower(EpochLogger(tracker, run_id, print), run_dir, logged_through=1, poll=0.2).start()
    proc = train(replace(killed["job"], resume=True, logged_through=1), killed["env"])
    assert follower.stop(timeout=30) == []
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exact = read_epochs(run_dir / EPOCHS_FILE)[0]
    assert sorted(exact) == [1, 3, 4]  # epoch 2 is in last.pt and results.csv only
    assert steps(tracker, run_id, "train/box_loss") == [1, 3, 4]  # followed live, as the flow does

    rows = read_results_csv(csv)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert 999 not in rows[2].values()
    # epoch 2 reached last.pt but not MLflow; the flow's backfill closes exactly that gap, from results.csv
    assert backfill_epochs(tracker, run_id, run_dir) == 1
    for key in ("train/box_loss", "metrics/mAP50(B)", "lr/pg0"):
        assert steps(tracker, run_id, key) == [1, 2, 3, 4], key
    logged = dict(tracker.metric_history(run_id, "train/box_loss"))
    assert [logged[e] for e in (1, 2, 3, 4)] == pytest.approx([r["train/box_loss"] for r in rows], rel=1e-5)
    assert [logged[e] for e in (1, 3, 4)] == [exact[e]["train/box_loss"] for e in (1, 3, 4)]  # not rounded
    assert [r.info.run_id for r in all_runs(tracker)] == [run_id]

    outcome = TrainOutcome.read(run_dir)
    assert outcome is not None and outcome.epochs == 4 and "metrics/mAP50(B)" in outcome.final_metrics
    metrics = write_metrics(run_dir, run_dir / "metrics.json")
    assert metrics["epochs"] == 4 and 1 <= metrics["best_epoch"] <= 4
    assert metrics["mAP50"] == round(outcome.final_metrics["metrics/mAP50(B)"], 5)
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == ["best.pt", "last.pt"]
    assert resume_point(run_dir) is None  # a finished training's last.pt is not resumable


@pytest.mark.slow
def test_a_kill_after_the_last_planned_epoch_only_runs_the_final_validation(killed: dict[str, Any]) -> None:
    # As `trainyard reproduce --epochs 2` killed after saving epoch 2: nothing is left to train.
    run_dir: Path = killed["copy"]
    before = (run_dir / "results.csv").read_text()
    job = replace(killed["job"], run_dir=str(run_dir), stop_after=2, resume=True)
    proc = train(job, child_env(killed["root"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "results.csv").read_text() == before
    outcome = TrainOutcome.read(run_dir)
    assert outcome is not None and outcome.epochs == 2
    assert set(outcome.final_metrics) >= {"metrics/mAP50(B)", "metrics/mAP50-95(B)"}
    assert resume_point(run_dir) is None


@pytest.mark.slow
def test_resume_point_is_none_for_a_missing_or_cut_short_checkpoint(tmp_path: Path, killed: dict[str, Any]) -> None:
    assert resume_point(tmp_path) is None
    last = tmp_path / LAST
    last.parent.mkdir(parents=True)
    last.write_bytes(killed["last_pt"][: len(killed["last_pt"]) // 2])
    assert resume_point(tmp_path) is None
    last.write_bytes(killed["last_pt"])
    assert resume_point(tmp_path) == 2
    # The flow process asks too: without loading torch, or ultralytics (which patches Pillow,
    # changing how that process's dataset validation reports a corrupt image).
    probe = (
        "import sys; from pathlib import Path; from tasks.job import resume_point; "
        f"print(resume_point(Path({str(tmp_path)!r})), 'torch' in sys.modules, 'ultralytics' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "False", "False"]


def test_resuming_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    job = TrainJob(run_dir=str(tmp_path / "run"), data_yaml=str(tmp_path / "data.yaml"), args=ARGS, resume=True)
    with pytest.raises(TrainingError, match="cannot resume"):
        train_yolo(job)


def test_results_csv_is_cut_back_to_the_checkpoint(tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,time,train/box_loss\n1,1.0,0.5\n2,2.0,0.4\n3,3.0,0.3\n4,4.")
    assert trim_results(csv, 2) == 2
    assert [r["epoch"] for r in read_results_csv(csv)] == [1, 2]
    csv.write_text("epoch,ti")  # killed while writing the header: Ultralytics must write it again
    trim_results(csv, 2)
    assert not csv.exists()


def test_epochs_mlflow_already_has_are_not_recorded_again(tmp_path: Path, yolo_config_dir: Path) -> None:
    from tasks.adapters.ultralytics_trainer import _log_epoch

    job = TrainJob(run_dir=str(tmp_path), data_yaml="data.yaml", logged_through=2, stop_after=3)
    trainer = SimpleNamespace(
        trainyard_job=job,
        trainyard_logged=set(),
        trainyard_final_eval=False,
        stop=False,
        tloss={"box_loss": 0.5},
        metrics={"metrics/mAP50(B)": 0.1},
        lr={"lr/pg0": 0.01},
        label_loss_items=lambda loss, prefix: {f"{prefix}/{k}": v for k, v in loss.items()},
    )
    for epoch in range(3):
        trainer.epoch = epoch
        _log_epoch(trainer)
    epochs, _ = read_epochs(tmp_path / EPOCHS_FILE)
    assert {e: m["train/box_loss"] for e, m in epochs.items()} == {3: 0.5}
    assert trainer.stop  # stop_after still ends the training on epochs it does not log


@pytest.mark.slow
def test_a_stop_file_ends_the_training_after_the_epoch_it_is_in(tmp_path: Path) -> None:
    """How a sweep's pruning reaches the training process (it reads no MLflow): a file in its run directory."""
    from tasks.job import STOP_FILE

    data = generate_demo_dataset(tmp_path / "data", TINY)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / STOP_FILE).write_text("pruned after epoch 1\n")
    job = TrainJob(run_dir=str(run_dir), data_yaml=str(data / "data.yaml"), args=ARGS)  # 4 epochs
    proc = train(job, child_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outcome = TrainOutcome.read(run_dir)
    assert outcome is not None and outcome.epochs == 1 and outcome.best is not None
    assert [int(r["epoch"]) for r in read_results_csv(run_dir / "results.csv")] == [1]


def test_a_job_json_from_before_resume_still_loads(tmp_path: Path) -> None:
    old = tmp_path / JOB_FILE
    old.write_text(json.dumps({"run_dir": "r", "data_yaml": "d.yaml", "args": {"epochs": 3}, "stop_after": None}))
    job = TrainJob.read(old)
    assert (job.resume, job.logged_through) == (False, 0)
    again = replace(job, resume=True, logged_through=2)
    assert TrainJob.read(again.write(tmp_path / "new.json")) == again


# ---------------------------------------------------------------- multi-GPU (DDP) on CPU

# Parent: `python -m tasks.adapters.ultralytics_trainer job.json` as on a 2-GPU machine. Ultralytics never touches a
# GPU before launching its workers, so a CUDA device object stands in for select_device; the
# `torch.distributed.run` command is swapped for one that starts ranks 0 and 1 (launch.py).
DDP_PARENT = """
import json, os, runpy, sys
from pathlib import Path
import torch
import ultralytics.engine.trainer as engine

engine.select_device = lambda *a, **k: torch.device("cuda", 0)
real_generate = engine.generate_ddp_command

def generate(trainer):
    cmd, file = real_generate(trainer)
    report = {"cmd": cmd, "run_dir": sorted(os.listdir(trainer.save_dir))}
    Path(os.environ["DDP_REPORT"], "launch.json").write_text(json.dumps(report))
    return [sys.executable, os.environ["DDP_LAUNCH"], file], file

engine.generate_ddp_command = generate
sys.argv = ["tasks.adapters.ultralytics_trainer", sys.argv[1]]
runpy.run_module("tasks.adapters.ultralytics_trainer", run_name="__main__")
"""

DDP_LAUNCH = """
import os, subprocess, sys
for rank in (0, 1):
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    subprocess.run([sys.executable, os.environ["DDP_WORKER"], sys.argv[1]], env=env, check=True)
"""

# A worker runs Ultralytics' generated file unchanged; only the CUDA training loop is
# replaced by the end of one epoch with known numbers (rank 1's differ, and must not be logged).
DDP_WORKER = """
import json, os, runpy, sys
from pathlib import Path
import torch
import ultralytics.engine.trainer as engine

engine.select_device = lambda *a, **k: torch.device("cuda", 0)

def one_epoch(trainer):
    rank = int(os.environ["RANK"])
    trainer.tloss = {"box_loss": 1.0 * (rank + 1), "cls_loss": 2.0, "dfl_loss": 3.0}
    trainer.metrics = {"metrics/mAP50(B)": 0.25 * (rank + 1)}
    trainer.lr = {"lr/pg0": 0.01}
    trainer.epoch = 0
    trainer.run_callbacks("on_fit_epoch_end")
    report = {
        "class": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
        "device": trainer.args.device,
        "world_size": trainer.world_size,
        "job": trainer.trainyard_job.run_dir,
        "callbacks": sorted({f"{f.__module__}.{f.__qualname__}" for fs in trainer.callbacks.values() for f in fs}),
        "epoch_hooks": [f"{f.__module__}.{f.__qualname__}" for f in trainer.callbacks["on_fit_epoch_end"]],
    }
    Path(os.environ["DDP_REPORT"], f"rank{rank}.json").write_text(json.dumps(report))

engine.BaseTrainer._do_train = one_epoch
script = sys.argv[1]
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_two_gpu_device_reaches_ultralytics_ddp_with_trainyard_s_trainer(tmp_path: Path) -> None:
    data = generate_demo_dataset(tmp_path / "data", TINY)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data_yaml = run_dir / "data.yaml"  # as the flow stages it: inside the run directory
    data_yaml.write_text(yaml.safe_dump({**yaml.safe_load((data / "data.yaml").read_text()), "path": str(data)}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    run_id = tracker.start_run("ddp", "two-gpus", tags={}, params={})
    report = tmp_path / "report"
    report.mkdir()
    scripts = {}
    for name, text in (("launch", DDP_LAUNCH), ("worker", DDP_WORKER)):
        scripts[name] = tmp_path / f"{name}.py"
        scripts[name].write_text(text)
    env = child_env(
        tmp_path,
        MLFLOW_TRACKING_URI=uri,  # as in a user's shell: Ultralytics' own MLflow callback would log there
        DDP_REPORT=str(report),
        DDP_LAUNCH=str(scripts["launch"]),
        DDP_WORKER=str(scripts["worker"]),
    )
    job = TrainJob(run_dir=str(run_dir), data_yaml=str(data_yaml), args={**ARGS, "device": "0,1"})

    proc = train(job, env, DDP_PARENT)
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (report / "launch.json").exists(), output
    launch = json.loads((report / "launch.json").read_text())
    assert (
        "torch.distributed.run" in launch["cmd"] and launch["cmd"][launch["cmd"].index("--nproc_per_node") + 1] == "2"
    )
    assert {"job.json", "data.yaml"} <= set(launch["run_dir"])  # the run directory was not emptied for DDP

    for rank in (0, 1):
        assert (report / f"rank{rank}.json").exists(), output
        worker = json.loads((report / f"rank{rank}.json").read_text())
        assert worker["class"] == "tasks.adapters.ultralytics_trainer.TrainyardTrainer"
        assert (worker["device"], worker["world_size"], worker["job"]) == ("0,1", 2, str(run_dir))
        assert worker["epoch_hooks"].count("tasks.adapters.ultralytics_trainer._log_epoch") == 1
        assert not [
            c
            for c in worker["callbacks"]
            if c.startswith(("ultralytics.utils.callbacks.mlflow", "ultralytics.utils.callbacks.platform"))
        ]
    # rank 0 recorded its epoch once; rank 1 did not; Ultralytics' MLflow integration opened no run
    assert (run_dir / EPOCHS_FILE).read_text().count("\n") == 1
    assert {e: m["train/box_loss"] for e, m in read_epochs(run_dir / EPOCHS_FILE)[0].items()} == {1: 1.0}
    assert read_epochs(run_dir / EPOCHS_FILE)[0][1]["metrics/mAP50(B)"] == 0.25
    assert [r.info.run_id for r in all_runs(tracker)] == [run_id]


def write_params(tmp_path: Path, device: Any, gpus: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "train": {"model": "yolo11n.yaml", "device": device},
                "runner": {"kind": "docker"},
                "container": {"image": "trainyard-train:latest", "gpus": gpus},
            }
        )
    )
    return path


@pytest.mark.parametrize("device", ["0,1", [0, 1]])
def test_two_gpus_are_accepted_when_the_container_gets_two(tmp_path: Path, device: Any) -> None:
    params = load_params(write_params(tmp_path, device, "2,3"))
    assert params.train["device"] == device


@pytest.mark.parametrize(
    ("device", "gpus", "says"),
    [
        ("2", "2,3", "numbered 0..1 inside the container"),
        ([0, 1, 2], "0,1", "gives it 2"),
        (0, "none", "container.gpus is 'none'"),
    ],
)
def test_a_device_the_container_lacks_is_refused_before_training(
    tmp_path: Path, device: Any, gpus: str, says: str
) -> None:
    with pytest.raises(ParamsError, match="train.device") as info:
        load_params(write_params(tmp_path, device, gpus))
    assert says in str(info.value)


@pytest.mark.slow
def test_a_training_whose_batches_arrive_late_is_diagnosed_data_starved(tmp_path: Path) -> None:
    data = generate_demo_dataset(tmp_path / "data", TINY)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = TrainJob(run_dir=str(run_dir), data_yaml=str(data / "data.yaml"), args={**ARGS, "epochs": 2})
    proc = train(job, child_env(tmp_path), SLOW_BATCHES)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    epochs = read_epochs(run_dir / EPOCHS_FILE)[0]
    batches = 2  # 16 training images, batch 8
    for figures in epochs.values():
        assert figures[WAIT_S] >= 0.4 * batches and figures[LOOP_S] > figures[WAIT_S]
        assert figures[WAIT_PCT] == pytest.approx(100 * figures[WAIT_S] / figures[LOOP_S])
        assert figures[IMAGES_PER_S] == pytest.approx(16 / figures[LOOP_S])
    verdict = diagnose_run(run_dir)
    assert verdict is not None and verdict.starved, verdict
    assert verdict.text.startswith("data-starved: ") and "(workers=0, cache=False, data on " in verdict.text
    assert "raise train.workers" in verdict.text


def test_the_data_wait_of_an_ordinary_training_is_measured_and_not_starved(killed: dict[str, Any]) -> None:
    # the killed training's first epoch, trained with Ultralytics' loader as it is
    figures = read_epochs(killed["copy"] / EPOCHS_FILE)[0][1]
    assert 0 <= figures[WAIT_S] < figures[LOOP_S] and figures[IMAGES_PER_S] > 0
    verdict = diagnose({1: figures})
    assert verdict is not None and not verdict.starved, verdict


@pytest.mark.slow
def test_out_of_memory_in_epoch_3_resumes_from_last_pt_with_half_the_batch(tmp_path: Path) -> None:
    data = generate_demo_dataset(tmp_path / "data", TINY)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = TrainJob(run_dir=str(run_dir), data_yaml=str(data / "data.yaml"), args=ARGS)  # 4 epochs, batch 8
    env = child_env(tmp_path)
    proc = train(job, env, OOM_IN_EPOCH_3)
    assert proc.returncode != 0 and "CUDA out of memory" in proc.stderr, proc.stderr[-3000:]
    oom = OutOfMemory.read(run_dir)
    assert oom is not None and (oom.epoch, oom.batch) == (3, 8) and "Tried to allocate 2.00 GiB" in oom.what
    assert resume_point(run_dir) == 2

    attempt = plan_retry(job, logged_through=2, resumed_before=[])  # what the flow's retry does
    assert attempt.job.args["batch"] == 4 and attempt.recovery == "epoch 3: batch 8 -> 4"
    proc = train(attempt.job, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["epoch"] for r in read_results_csv(run_dir / "results.csv")] == [1, 2, 3, 4]
    assert sorted(read_epochs(run_dir / EPOCHS_FILE)[0]) == [1, 2, 3, 4]
    checkpoint = read_checkpoint(run_dir / LAST)
    assert checkpoint is not None and checkpoint["train_args"]["batch"] == 4  # epochs 3-4 trained at batch 4

    # `trainyard reproduce` replays the recovery from the run's tag: one process, paused before epoch 3
    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    replay = replace(job, run_dir=str(replay_dir), batch_schedule=recovery_schedule("epoch 3: batch 8 -> 4"))
    proc = train(replay, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recovered, replayed = (read_epochs(Path(d) / EPOCHS_FILE)[0] for d in (run_dir, replay_dir))
    assert sorted(replayed) == [1, 2, 3, 4]
    for epoch in (1, 2, 3, 4):  # what the recovered run trained, bit for bit (timings aside)
        assert {k: v for k, v in replayed[epoch].items() if not k.startswith("perf/")} == {
            k: v for k, v in recovered[epoch].items() if not k.startswith("perf/")
        }, epoch
    checkpoint = read_checkpoint(replay_dir / LAST)
    assert checkpoint is not None and checkpoint["train_args"]["batch"] == 4
