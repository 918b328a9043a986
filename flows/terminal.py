"""What the `trainyard` CLI shows on a terminal, and what it keeps in a log file.

- Every Prefect log line, tracebacks included, goes to ``.trainyard/logs/<command>-<time>.log``
  beside params.yaml; the terminal keeps the progress lines and loses the tracebacks and
  Prefect's repeated "Finished in state Failed(...)" records, so an error ends in a few lines
  that name the file to read.
- SIGINT (Ctrl-C) and SIGTERM become :class:`~tasks.errors.Interrupted`: the runners stop
  the training child or container, the flow marks the MLflow run KILLED, the CLI prints one
  line and exits 130 / 143. Prefect's temporary API server shares the terminal's process
  group and dies with the same Ctrl-C; Prefect's engine then retries it for minutes, so once
  the run is recorded a watchdog ends the process. A second Ctrl-C exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Callable

from tasks.errors import Interrupted
from tasks.run_finish import LAST_INTERRUPTION
from tasks.redact import RedactingFilter, redact_log_handlers

LOG_DIR = Path(".trainyard") / "logs"
FILE_ONLY = "trainyard.logfile"
KEEP_LOGS = 50
_GRACE = 3.0  # seconds Prefect gets to wind down after the run is recorded, before the watchdog exits
_NO_RUN_GRACE = 15.0  # ... when no run was recorded (interrupted before training; the child takes <= 10 s)


def start_log_file(base_dir: Path, command: str) -> Path:
    """Send every log record (INFO and up, any logger) to a new file; return its path."""
    folder = base_dir / LOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    old = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
    for stale in old[: max(0, len(old) - KEEP_LOGS + 1)]:
        stale.unlink(missing_ok=True)
    path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s | %(message)s"))
    handler.addFilter(RedactingFilter())
    logging.getLogger().addHandler(handler)
    only_file = logging.getLogger(FILE_ONLY)  # for what the terminal already shows in its own words
    only_file.propagate = False
    only_file.handlers = [handler]
    logging.getLogger("prefect").setLevel(min(logging.getLogger("prefect").getEffectiveLevel(), logging.INFO))
    return path


class TerminalFilter(logging.Filter):
    """Keeps the terminal to progress and one error: no tracebacks, no repeated failure states."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return False
        message = record.getMessage()
        if "Traceback (most recent call last)" in message:
            return False
        if message.startswith("Finished in state") and not message.startswith("Finished in state Completed"):
            return False
        if record.levelno >= logging.ERROR and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            return False  # "Task run failed with exception ...": the CLI prints the error once
        return True


def quiet_terminal() -> None:
    """Filter the console handlers Prefect installed (call after importing prefect); no handler,
    Prefect's API log handler included, passes a URL password."""
    redact_log_handlers()
    for name in ("", "uvicorn", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.FileHandler):
                continue
            if not any(isinstance(f, TerminalFilter) for f in handler.filters):
                handler.addFilter(TerminalFilter())


class InterruptGuard:
    """Turns SIGINT/SIGTERM into :class:`Interrupted` in the main thread, with a watchdog (see module doc)."""

    def __init__(self, line: Callable[[Interrupted], str]) -> None:
        self.line = line
        self.raised: Interrupted | None = None
        self._printed = threading.Lock()
        self._done = False

    def install(self) -> None:
        LAST_INTERRUPTION.clear()  # an earlier command in this process (tests call main()) is not this one
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def report(self, exc: Interrupted) -> int:
        """Print the one line (once) and return the exit code."""
        if self._printed.acquire(blocking=False):
            print(self.line(exc), file=sys.stderr, flush=True)
        return exc.exit_code

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.raised is not None:  # the second Ctrl-C: no more waiting
            self.report(self.raised)
            os._exit(self.raised.exit_code)
        self.raised = Interrupted(signum)
        threading.Thread(target=self._watch, args=(self.raised,), name="trainyard-interrupt", daemon=True).start()
        raise self.raised

    def _watch(self, exc: Interrupted) -> None:
        start = time.monotonic()
        while True:
            time.sleep(0.2)
            recorded = LAST_INTERRUPTION.get("recorded")  # time.monotonic() when the run was marked KILLED
            if time.monotonic() > (float(recorded) + _GRACE if recorded else start + _NO_RUN_GRACE):
                code = self.report(exc)
                sys.stdout.flush()
                os._exit(code)


def reap_orphaned_prefect_servers() -> list[int]:
    """Stop Prefect temporary API servers whose trainyard process was killed; return their pids.

    Prefect starts its temporary server as a plain child process; a ``kill -9`` of trainyard
    (not of its whole process group) leaves it listening forever, reparented to init. Such a
    server is recognised by its command line, Prefect's ephemeral-server marker in its
    environment, its owner (this user) and its parent (init). Linux only; elsewhere a no-op.
    """
    proc = Path("/proc")
    if not proc.is_dir() or os.getpid() == 1:  # as PID 1 (a container), every child has parent 1
        return []
    stopped = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes()
            if b"prefect.server.api.server:create_app" not in cmdline or b"uvicorn" not in cmdline:
                continue
            if b"PREFECT__SERVER_EPHEMERAL=1" not in (entry / "environ").read_bytes():
                continue
            status = (entry / "status").read_text()
            ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        except (OSError, StopIteration, ValueError):
            continue
        if ppid == 1:
            try:
                os.kill(int(entry.name), signal.SIGTERM)
                stopped.append(int(entry.name))
            except ProcessLookupError:
                pass
    return stopped
