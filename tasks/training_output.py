"""What both runners (a local process, a container) share: the training's environment and its output.

Neither runner owns these, so the Docker adapter does not import the local runner (and the
runner seam imports the Docker adapter only when ``runner.kind`` is docker).
"""

from __future__ import annotations

import os
from typing import Callable

from tasks.fonts import offline_config_dir

LogSink = Callable[[str], None]


def training_env() -> dict[str, str]:
    """Variables every training process gets, unless the user set them already."""
    defaults = {
        "YOLO_OFFLINE": "1",  # no DNS probes or downloads: training machines may have no internet
        "PYTHONUNBUFFERED": "1",  # stream epochs as they happen, not at exit
    }
    env = {k: v for k, v in defaults.items() if k not in os.environ}
    if "YOLO_CONFIG_DIR" not in os.environ:
        # trainyard's own Ultralytics config dir, holding the plot fonts Ultralytics would
        # otherwise download (and its settings.json, apart from the user's other projects)
        config_dir = offline_config_dir()
        if config_dir is not None:
            env["YOLO_CONFIG_DIR"] = str(config_dir)
    return env


def last_lines(tail: list[str]) -> str:
    """The end of a training's output, for an error message (empty when there was none)."""
    shown = "\n".join(f"  | {line}" for line in tail[-15:])
    return f"; last lines:\n{shown}" if shown else ""


def last_frame(raw: str) -> str:
    """A progress bar redraws with \\r: keep only what a terminal would finally show."""
    text = raw.rstrip("\n").split("\r")[-1]
    return text.replace("\x1b[K", "").rstrip()
