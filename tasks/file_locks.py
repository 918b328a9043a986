"""Advisory file locks (``flock``): the one place trainyard takes them.

The kernel drops an flock with its owner's last descriptor, so a killed process (even
``kill -9``) never leaves a stale lock. Lock files are never unlinked: a waiter holding the
old inode and a newcomer creating a new one would both think they hold the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from tasks.errors import TrainyardError

SHARED, EXCLUSIVE = fcntl.LOCK_SH, fcntl.LOCK_EX


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def acquire(
    path: Path, mode: int = EXCLUSIVE, timeout: float | None = None, error: type[TrainyardError] = TrainyardError
) -> int:
    """A descriptor of ``path`` holding ``flock(mode)``; waits up to ``timeout`` s (None: as long as it takes),
    then raises ``error``. Closing the descriptor releases the lock."""
    fd = _open(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                os.close(fd)
                raise error(f"timed out after {timeout:.0f} s waiting for {path}") from None
            time.sleep(0.05)


def try_exclusive(path: Path) -> int | None:
    """A descriptor holding an exclusive flock on ``path``, or None at once when another holds it."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def held(
    path: Path, mode: int = EXCLUSIVE, timeout: float | None = None, error: type[TrainyardError] = TrainyardError
) -> Iterator[None]:
    """:func:`acquire` for the duration of a ``with`` block."""
    fd = acquire(path, mode, timeout, error)
    try:
        yield
    finally:
        os.close(fd)
