"""A Prefect API that outlives one `trainyard` command: started on first use, reused, stopped when idle.

Prefect runs a flow only against an API. With no ``PREFECT_API_URL`` it starts a temporary
server inside every process that runs a flow, and stops it at exit: 4-6 s on a quiet 2-core
machine and 13-40 s under load, on every `trainyard run` (bench/overhead.md). trainyard
instead starts Prefect's own ``prefect server start`` once, in the background, under a small
supervisor (this module) that stops it after ``TRAINYARD_PREFECT_IDLE`` seconds (default 900)
in which no trainyard command used it and no flow run was running. Later commands find it
through ``$PREFECT_HOME/trainyard-api.json`` and point Prefect at it; its UI at the printed URL
shows every run.

- ``trainyard prefect status`` / ``trainyard prefect stop`` show and stop it.
- An explicit ``PREFECT_API_URL`` (a team server) is used as it is; ``TRAINYARD_PREFECT_API=ephemeral``
  keeps Prefect's own temporary server per command (the test suite runs so).
- If the background server cannot start, the command goes on with Prefect's temporary server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

MODE_ENV = "TRAINYARD_PREFECT_API"  # "ephemeral": Prefect's temporary server per command
IDLE_ENV = "TRAINYARD_PREFECT_IDLE"
DEFAULT_IDLE_S = 900.0
START_TIMEOUT_S = 180.0  # first use creates Prefect's database: tens of seconds on a busy 2-core box


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def state_file() -> Path:
    return prefect_home() / "trainyard-api.json"


def ensure_api(say: Callable[[str], None]) -> str | None:
    """Point this process's Prefect at the background API (starting it if needed); its URL, or None
    when Prefect's own choice stands (an explicit PREFECT_API_URL, ephemeral mode, or no server)."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get(MODE_ENV, "").lower() == "ephemeral":
        return None
    from tasks.file_locks import held

    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with held(path.with_suffix(".lock")):  # two commands at once start one server
        url = running_api()
        if url is None:
            url = _start(path, say)
            if url is None:
                return None
        path.touch()  # "used now": the supervisor's idle clock restarts
    os.environ["PREFECT_API_URL"] = url
    return url


def running_api() -> str | None:
    """The background API's URL when its supervisor is alive and the server answers, else None."""
    state = _read_state(state_file())
    if state is None or not _alive(int(str(state["pid"]))):
        return None
    return str(state["url"]) if _healthy(str(state["url"])) else None


def stop_api(timeout: float = 20.0) -> int | None:
    """Stop the background API; the supervisor's pid, or None when none was running."""
    path = state_file()
    state = _read_state(path)
    if state is None or not _alive(int(str(state["pid"]))):
        path.unlink(missing_ok=True)
        return None
    pid = int(str(state["pid"]))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return pid


def _start(path: Path, say: Callable[[str], None]) -> str | None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = path.with_suffix(".log")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    idle = os.environ.get(IDLE_ENV) or str(DEFAULT_IDLE_S)
    cmd = [sys.executable, "-m", "flows.prefect_api", "--port", str(port), "--idle", idle, "--state", str(path)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C of a run leaves it be
            cwd=str(Path(__file__).resolve().parent.parent),
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            say(f"the background Prefect API did not start (see {log}); using a temporary one for this command")
            return None
        if _healthy(url):
            _write_state(path, {"url": url, "pid": proc.pid, "started": time.time()})
            say(
                f"started a Prefect API for trainyard at {url.removesuffix('/api')} (UI); it stops after "
                f"{float(idle):.0f} s unused, or with `trainyard prefect stop`"
            )
            return url
        time.sleep(0.25)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    say(f"the background Prefect API did not answer within {START_TIMEOUT_S:.0f} s (see {log}); using a temporary one")
    return None


def _supervise(port: int, idle: float, path: Path) -> int:
    """Run ``prefect server start`` until it has been idle for ``idle`` s (or SIGTERM); remove the state."""
    prefect = Path(sys.executable).with_name("prefect")
    server = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.monotonic()
    try:
        while server.poll() is None:
            time.sleep(min(30.0, max(0.5, idle / 4)))
            state = _read_state(path)
            if state is not None and int(str(state["pid"])) == os.getpid():
                unused = time.time() - path.stat().st_mtime  # commands touch it when they use the API
            elif time.monotonic() - started < 2 * START_TIMEOUT_S:
                continue  # its starter records it once the server answers
            else:
                break  # nobody recorded it (the starter gave up), or another server replaced it
            if unused > idle and not _busy(url):
                break
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        state = _read_state(path)
        if state is not None and int(str(state["pid"])) == os.getpid():
            path.unlink(missing_ok=True)
    return 0


def _busy(url: str) -> bool:
    """Whether a flow run is pending or running on the API (an unanswered question counts as busy)."""
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}}}).encode()
    request = urllib.request.Request(
        f"{url}/flow_runs/count", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
            return int(json.loads(resp.read())) > 0
    except (OSError, ValueError):
        return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited and not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)
    return state != "Z"


def _read_state(path: Path) -> dict[str, object] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "url" in state and "pid" in state else None


def _write_state(path: Path, state: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="supervise trainyard's background Prefect API (started by trainyard)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle", type=float, default=DEFAULT_IDLE_S)
    ap.add_argument("--state", type=Path, required=True)
    args = ap.parse_args()
    sys.exit(_supervise(args.port, args.idle, args.state))
