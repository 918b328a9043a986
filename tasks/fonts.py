"""The fonts Ultralytics draws plot labels with, provided offline.

Ultralytics' ``check_font`` wants Arial.ttf, or Arial.Unicode.ttf when a class name is not ASCII.
It looks in its config dir (``$YOLO_CONFIG_DIR/Ultralytics``), then in matplotlib's font list,
and otherwise downloads the file from GitHub, YOLO_OFFLINE=1 or not. A training must not reach
the internet, so trainyard puts both names in the config dir first: copies of DejaVu Sans, the
font matplotlib ships (Latin, Greek, Cyrillic and more; no CJK, which plots then draw as boxes).

Local trainings get a config dir of trainyard's own (``training_env``); the training image ships
one, made at build time with ``python -m tasks.fonts DIR``. Nothing is written at import time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

FONT_NAMES: tuple[str, ...] = ("Arial.ttf", "Arial.Unicode.ttf")
# Ultralytics' settings and fonts live in $YOLO_CONFIG_DIR/Ultralytics (get_user_config_dir's sub_dir).
ULTRALYTICS_SUB_DIR = "Ultralytics"


def trainyard_config_dir() -> Path:
    """trainyard's own YOLO_CONFIG_DIR, beside the stage cache: ``~/.cache/trainyard/ultralytics``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "trainyard" / "ultralytics"


def bundled_font() -> Path:
    """DejaVu Sans from the installed matplotlib (found without importing it: it is slow and third-party)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("matplotlib is not installed: no font to give Ultralytics")
    path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib ships no {path.name} at {path.parent}")
    return path


def provide_fonts(config_dir: Path) -> Path:
    """Make the YOLO_CONFIG_DIR ``config_dir`` hold both fonts (existing files are kept); return it.

    Each copy is written beside its final name and renamed, so a concurrent training never
    sees half a font; the files are world-readable, for an image run by any user.
    """
    fonts_dir = config_dir / ULTRALYTICS_SUB_DIR
    missing = [name for name in FONT_NAMES if not (fonts_dir / name).is_file()]
    if not missing:
        return config_dir
    source = bundled_font()
    fonts_dir.mkdir(parents=True, exist_ok=True)
    for name in missing:
        # not *.ttf: Ultralytics registers every *.ttf of its config dir with matplotlib
        fd, tmp = tempfile.mkstemp(dir=fonts_dir, prefix=f".{name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out)
            os.chmod(tmp, 0o644)
            os.replace(tmp, fonts_dir / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return config_dir


def offline_config_dir() -> Path | None:
    """trainyard's YOLO_CONFIG_DIR with the fonts in it; None (and a warning) when it cannot be made."""
    try:
        return provide_fonts(trainyard_config_dir())
    except OSError as exc:  # FileNotFoundError included: a training must not fail over plot fonts
        warnings.warn(
            f"trainyard: no offline fonts for Ultralytics' plots ({exc}); it may try to download them",
            stacklevel=2,
        )
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.fonts DIR``: put the fonts into the YOLO_CONFIG_DIR ``DIR`` (the image build does)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tasks.fonts YOLO_CONFIG_DIR", file=sys.stderr)
        return 2
    fonts_dir = provide_fonts(Path(args[0])) / ULTRALYTICS_SUB_DIR
    print(f"fonts for Ultralytics in {fonts_dir}: {', '.join(FONT_NAMES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
