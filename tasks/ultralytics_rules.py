"""Facts about how Ultralytics reads a detection dataset, pinned here without importing it.

Importing Ultralytics pulls in torch (seconds, hundreds of MB) and patches Pillow, so the
validation path keeps its own copy of each fact it relies on. Every constant and helper
here is compared with the installed package by ``tests/tasks/test_ultralytics_rules.py``:
an Ultralytics upgrade that changes one fails that test instead of drifting silently.

Sources (ultralytics 8.4): ``data/utils.py`` (IMG_FORMATS, img2label_paths, check_image,
verify_image_label, check_det_dataset), ``data/base.py`` (get_img_files),
``nn/autobackend.py`` (check_class_names), ``utils/ops.py`` (segments2boxes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# data/utils.py IMG_FORMATS: the file extensions (lower-cased) a split may hold.
IMG_FORMATS: frozenset[str] = frozenset(
    {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"}
)
# check_image: Pillow's format name, lower-cased, must be one of these (JPEG 2000 is "jpeg2000").
PIL_FORMATS: frozenset[str] = IMG_FORMATS | {"jpeg2000"}
# check_image: both sides must be > 9 pixels (after EXIF rotation).
MIN_IMAGE_SIDE = 10
# verify_image_label: coordinates may exceed 1 by 1 % and go 1 % below 0 (not width/height).
COORD_MAX = 1.01
COORD_MIN = -0.01
# verify_image_label: a row with more than this many values makes the whole file polygons.
BOX_VALUES = 5
SEGMENT_MIN_VALUES = 7
# check_det_dataset DATASET_KEY_TYPES (the keys a detection dataset uses).
KEY_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str,),
    "train": (str, list),
    "val": (str, list),
    "test": (str, list),
    "names": (list, dict),
}
# check_det_dataset: keys it reads. Anything else in a dataset yaml is ignored by Ultralytics.
KNOWN_KEYS: tuple[str, ...] = (
    "path",
    "train",
    "val",
    "test",
    "minival",
    "names",
    "nc",
    "download",
    "channels",
    "kpt_shape",
    "flip_idx",
    "validation",
)


def label_path(image: str) -> str:
    """img2label_paths: the last ``/images/`` becomes ``/labels/`` and the extension ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return sb.join(image.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt"


def has_image_suffix(path: str) -> bool:
    """get_img_files' filter: the text after the last dot, lower-cased, is an image format."""
    return path.rpartition(".")[-1].lower() in IMG_FORMATS


def list_line_path(line: str, list_file: str) -> str:
    """get_img_files on a .txt split: ``./x`` is relative to the list's folder; anything else is used as is.

    "As is" means a relative line resolves against the training process's working
    directory, which tasks.validate refuses (see there).
    """
    parent = os.path.dirname(list_file) + os.sep
    return line.replace("./", parent, 1) if line.startswith("./") else line


def default_names(nc: int) -> list[str]:
    """check_det_dataset: the names a yaml with ``nc`` but no ``names`` gets."""
    return [f"class_{i}" for i in range(nc)]


def polygon_box(points: Sequence[float]) -> tuple[float, float, float, float]:
    """segments2boxes for one polygon ``x1 y1 x2 y2 ...``: the enclosing box as (x_center, y_center, w, h)."""
    xs, ys = points[0::2], points[1::2]
    x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    return (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0


# cfg/__init__.py check_cfg: these train arguments must lie in [0.0, 1.0] (CFG_FRACTION_KEYS;
# "fraction" also takes counts and split lists, so it is checked on its own)...
FRACTION_KEYS: frozenset[str] = frozenset(
    {
        "dropout",
        "lr0",
        "lrf",
        "cls_pw",
        "momentum",
        "weight_decay",
        "warmup_momentum",
        "warmup_bias_lr",
        "hsv_h",
        "hsv_s",
        "hsv_v",
        "translate",
        "perspective",
        "flipud",
        "fliplr",
        "bgr",
        "mosaic",
        "mixup",
        "cutmix",
        "copy_paste",
        "erasing",
        "conf",
        "iou",
        "fraction",
        "multi_scale",
        "dlam",
    }
)
# ... and these integers have a minimum (CFG_INT_MIN).
INT_MIN: dict[str, int] = {
    "epochs": 1,
    "patience": 0,
    "nbs": 1,
    "max_det": 1,
    "mask_ratio": 1,
    "vid_stride": 1,
    "seed": 0,
}
# utils/checks.py check_imgsz: an image size is rounded up to a multiple of the model's largest
# stride (32 for every YOLO11 detection model), with 0 becoming 32: what trains is not what was asked.
MAX_STRIDE = 32
