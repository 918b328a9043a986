"""Bad days, end to end through the `trainyard` command: a tracking server that dies mid-run, a
flow process killed with SIGKILL, Ctrl-C through a real terminal (pty), and the common mistakes.

Each test runs the real CLI in its own process (its own Prefect temporary API), a real
`mlflow server` it can kill and restart, and a real training on the tiny dataset.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Iterator

import pytest

from tasks.evaluate import FINAL_METRICS
from tasks.adapters.mlflow_tracking import Tracker, read_results_csv
from tasks.run_finish import JOURNAL
from tests.conftest import VENV_BIN, copy_dataset, free_port, prefect_env, wait_http, write_params

pytestmark = pytest.mark.slow

EPOCHS = 6


class KillableMlflow:
    """A real `mlflow server` on a fixed port and store, which a test can SIGKILL and start again."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.uri}/health", timeout=180, proc=self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def killable_mlflow(tmp_path: Path) -> Iterator[KillableMlflow]:
    server = KillableMlflow(tmp_path / "mlflow")
    server.root.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _project(tmp_path: Path, tiny_dataset: Path, tracking_uri: str | None, **tracking: object) -> Path:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    params = write_params(
        tmp_path / "params.yaml",
        data,
        tracking_uri=tracking_uri,
        experiment="bad-days",
        stage_root=tmp_path / "stage",
        epochs=EPOCHS,
        plots=False,
    )
    if tracking:
        import yaml

        doc = yaml.safe_load(params.read_text())
        doc["tracking"].update(tracking)
        params.write_text(yaml.safe_dump(doc, sort_keys=False))
    return params


def _env(tmp_path: Path, interactive: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI"))}
    (tmp_path / "prefect" / "home").mkdir(parents=True, exist_ok=True)
    env.update(prefect_env(tmp_path / "prefect"))
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "yolo")
    if interactive:
        env.pop("CI", None)
    else:
        env["CI"] = "true"
    return env


def _cli(tmp_path: Path, *args: str, log: str = "cli.log") -> subprocess.Popen[bytes]:
    out = (tmp_path / log).open("wb")
    return subprocess.Popen(
        [str(VENV_BIN / "trainyard"), *args, "--params", str(tmp_path / "params.yaml")],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_epochs(results: Path, n: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if results.exists() and len(read_results_csv(results)) >= n:
            return
        assert proc.poll() is None, f"the command ended ({proc.returncode}) before epoch {n}"
        time.sleep(0.1)
    raise TimeoutError(f"no epoch {n} in {results} within {timeout} s")


def _only_run(tracker: Tracker) -> str:
    runs = tracker.search_runs("bad-days")
    assert len(runs) == 1, f"one training must make one MLflow run, found {[(r.run_id, r.status) for r in runs]}"
    return runs[0].run_id


def _assert_every_epoch_once(tracker: Tracker, run_id: str) -> None:
    run = tracker.get_run(run_id)
    keys = [k for k in run.metrics if k not in FINAL_METRICS and not k.startswith("system/")]
    assert "train/box_loss" in keys and "metrics/mAP50-95B" in keys
    for key in keys:
        steps = [step for step, _ in tracker.metric_history(run_id, key)]
        assert steps == list(range(1, EPOCHS + 1)), f"{key}: {steps}"


def _epoch_seconds(results: Path) -> list[float]:
    times = [0.0, *_times(results)]  # results.csv's time: seconds since the training started
    return [times[i + 1] - times[i] for i in range(len(times) - 1)]


def _times(results: Path) -> list[float]:
    import csv

    with results.open(newline="") as f:
        return [float(row["time"]) for row in csv.DictReader(f)]


def test_a_tracking_outage_mid_run_loses_no_point_and_does_not_stall_training(
    tmp_path: Path, tiny_dataset: Path, killable_mlflow: KillableMlflow
) -> None:
    _project(tmp_path, tiny_dataset, killable_mlflow.uri, wait=120)  # the server takes ~30 s to start again
    run_dir = tmp_path / "run"
    proc = _cli(tmp_path, "train", "--run-dir", str(run_dir))
    _wait_for_epochs(run_dir / "results.csv", 2, proc)
    killable_mlflow.kill()  # SIGKILL after epoch 2
    time.sleep(20)
    killable_mlflow.start()
    code = proc.wait(timeout=600)
    output = (tmp_path / "cli.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    tracker = Tracker(killable_mlflow.uri)
    run_id = _only_run(tracker)
    assert tracker.get_run(run_id).status == "FINISHED"
    _assert_every_epoch_once(tracker, run_id)
    # epochs went on at full speed while the server was away: none waited on MLflow
    seconds = _epoch_seconds(run_dir / "results.csv")
    assert max(seconds[2:]) < max(seconds[:2]) + 10, seconds


def test_a_server_still_down_at_the_end_leaves_the_run_to_the_next_run(
    tmp_path: Path, tiny_dataset: Path, killable_mlflow: KillableMlflow
) -> None:
    _project(tmp_path, tiny_dataset, killable_mlflow.uri, wait=2)
    proc = _cli(tmp_path, "run")
    results = next(_wait_for(lambda: list(tmp_path.glob("runs/*/results.csv")), proc))
    _wait_for_epochs(results, 2, proc)
    killable_mlflow.kill()
    code = proc.wait(timeout=600)
    output = (tmp_path / "cli.log").read_text(errors="replace")
    assert code == 4, output[-3000:]
    assert "trainyard sync" in output and "nothing is lost" in output
    assert len(list((tmp_path / JOURNAL).glob("*.json"))) == 1

    killable_mlflow.start()
    again = _cli(tmp_path, "run", log="again.log")
    assert again.wait(timeout=600) == 0
    output = (tmp_path / "again.log").read_text(errors="replace")
    tracker = Tracker(killable_mlflow.uri)
    run_id = _only_run(tracker)  # finished first, then found up to date: no second run
    assert f"finished MLflow run {run_id}" in output and "up to date" in output
    assert tracker.get_run(run_id).status == "FINISHED"
    _assert_every_epoch_once(tracker, run_id)
    assert not list((tmp_path / JOURNAL).glob("*.json"))


def _wait_for(find, proc: subprocess.Popen[bytes], timeout: float = 300):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return iter(found)
        assert proc.poll() is None, f"the command ended ({proc.returncode})"
        time.sleep(0.1)
    raise TimeoutError("nothing appeared")


def test_kill_9_of_trainyard_run_then_a_rerun_resumes_into_the_same_run(tmp_path: Path, tiny_dataset: Path) -> None:
    _project(tmp_path, tiny_dataset, None)  # the local SQLite store
    proc = _cli(tmp_path, "run")
    results = next(_wait_for(lambda: list(tmp_path.glob("runs/*/results.csv")), proc))
    _wait_for_epochs(results, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the flow process and Prefect's server, as a preempted node
    proc.wait()
    time.sleep(3)
    rows = len(read_results_csv(results))
    time.sleep(3)
    assert len(read_results_csv(results)) == rows, "the training outlived the flow that ran it"

    again = _cli(tmp_path, "run", log="again.log")
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text(errors="replace")[-3000:]
    output = (tmp_path / "again.log").read_text(errors="replace")
    assert "resuming interrupted MLflow run" in output
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = _only_run(tracker)
    assert results.parent.name == run_id
    run = tracker.get_run(run_id)
    assert run.status == "FINISHED" and "trainyard.error" not in run.tags
    _assert_every_epoch_once(tracker, run_id)
    assert not tracker.runs_with_status("bad-days", "RUNNING")


@pytest.mark.parametrize(("how", "code_wanted", "name"), [("ctrl-c", 130, "SIGINT"), ("sigterm", 143, "SIGTERM")])
def test_ctrl_c_in_a_terminal_stops_within_seconds_with_one_line(
    tmp_path: Path, tiny_dataset: Path, how: str, code_wanted: int, name: str
) -> None:
    _project(tmp_path, tiny_dataset, None)
    master, slave = os.openpty()

    def take_terminal() -> None:  # the pty becomes the command's controlling terminal, as in a shell
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [str(VENV_BIN / "trainyard"), "run", "--params", str(tmp_path / "params.yaml")],
        cwd=tmp_path,
        env=_env(tmp_path, interactive=True),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=take_terminal,
    )
    os.close(slave)
    screen = b""
    pressed: float | None = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: every process holding it exited
                break
            screen += chunk
        if pressed is None:
            found = list(tmp_path.glob("runs/*/results.csv"))
            if found and len(read_results_csv(found[0])) >= 2:
                if how == "ctrl-c":
                    os.write(master, b"\x03")  # the terminal sends SIGINT to its foreground group
                else:
                    os.kill(proc.pid, signal.SIGTERM)  # as `kill`, a supervisor or a worker would
                pressed = time.monotonic()
        elif proc.poll() is not None and not ready:
            break
    code = proc.wait(timeout=60)
    assert pressed is not None
    took = time.monotonic() - pressed
    text = screen.decode(errors="replace").replace("\r", "\n")
    assert code == code_wanted, text[-3000:]
    assert took < 10
    assert "Traceback" not in text
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = _only_run(tracker)
    lines = [line for line in text.splitlines() if "trainyard: interrupted" in line]  # after the echoed ^C
    assert len(lines) == 1 and run_id in lines[0] and "marked KILLED" in lines[0] and "resume with" in lines[0]
    run = tracker.get_run(run_id)
    assert run.status == "KILLED" and run.tags["trainyard.error"].startswith(f"interrupted by {name} after epoch")
    assert not [p for p in _children_training(tmp_path)], "the training outlived Ctrl-C"


def _children_training(tmp_path: Path) -> list[int]:
    """Processes still training out of this test's run directories."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                # a process started ahead of its job (`--wait`) names no run directory: its environment
                # (YOLO_CONFIG_DIR, PREFECT_HOME) says whose it is
                environ = (proc / "environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "ultralytics_trainer" in cmdline and str(tmp_path) in cmdline + environ:
                out.append(int(proc.name))
    return out


# ------------------------------------------------------------------ one clear error


def _run_quick(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    done = subprocess.run(
        [str(VENV_BIN / "trainyard"), *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, lines


def _log_named(lines: list[str]) -> Path:
    named = [line.split("full log: ", 1)[1] for line in lines if line.startswith("full log: ")]
    assert len(named) == 1, lines
    return Path(named[0])


def test_a_missing_dataset_is_a_few_lines_with_the_fix_and_the_log_file(tmp_path: Path, tiny_dataset: Path) -> None:
    params = _project(tmp_path, tiny_dataset, None)
    missing = tmp_path / "no-such-data"
    code, lines = _run_quick(tmp_path, "run", "--params", str(params), "--set", f"data.source={missing}")
    assert code == 3 and len(lines) <= 10, lines
    text = "\n".join(lines)
    assert str(missing) in text and "fix:" in text and "Traceback" not in text
    assert "Traceback" in _log_named(lines).read_text()  # the whole story is in the file


def test_an_unreachable_tracking_server_is_one_error_with_exit_4(tmp_path: Path, tiny_dataset: Path) -> None:
    params = _project(tmp_path, tiny_dataset, f"http://ci:s3cret@127.0.0.1:{free_port()}")
    started = time.monotonic()
    code, lines = _run_quick(tmp_path, "run", "--params", str(params))
    assert code == 4 and len(lines) <= 10, lines
    text = "\n".join(lines)
    assert "not reachable" in text and "s3cret" not in text and "ci:***@127.0.0.1" in text
    assert "s3cret" not in _log_named(lines).read_text()
    assert time.monotonic() - started < 90


def test_reproducing_an_unknown_run_fails_once_without_retries(tmp_path: Path, tiny_dataset: Path) -> None:
    params = _project(tmp_path, tiny_dataset, None)
    unknown = "deadbeef" * 4  # the form of an MLflow run id, but no such run
    code, lines = _run_quick(tmp_path, "reproduce", unknown, "--params", str(params))
    assert code == 4 and len(lines) <= 10, lines
    assert any(unknown in line for line in lines)
    log = _log_named(lines).read_text()
    assert "Retry" not in log and "retry" not in log.lower().replace("retry_", "")
    # neither a run id nor an alias of the registered model: a usage error that says what is valid
    code, lines = _run_quick(tmp_path, "reproduce", "deadbeef", "--params", str(params))
    assert code == 2 and len(lines) <= 10, lines
    assert any("neither an MLflow run id" in line and "champion" in line for line in lines), lines


def test_exit_codes_are_one_table_in_the_readme() -> None:
    from tasks.errors import EXIT_CODES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} " in readme, f"exit code {code} is not in the README's table"


if sys.platform != "linux":  # the pty and /proc tests are Linux's
    pytestmark = [pytest.mark.slow, pytest.mark.skip("Linux only")]
