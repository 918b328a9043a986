"""The embedded default dataset: coloured shapes on noisy backgrounds, in YOLO format.

Nothing can be downloaded on our training machines, so the demo and the tests train on
data generated here. Generation is deterministic (same seed and sizes -> the same bytes,
so the same DVC md5 on every machine with the locked Pillow), and the task is easy
enough that a YOLO11n trained from scratch on CPU visibly learns it within minutes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. The defaults are the demo dataset committed as data/demo.dvc."""

    train_images: int = 96
    val_images: int = 32
    size: int = 128  # pixels, square images
    max_objects: int = 2
    seed: int = 0


def generate_demo_dataset(dest: Path | str, spec: DemoSpec = DemoSpec()) -> Path:
    """Write the dataset to ``dest`` atomically: built in a temp dir beside it, then renamed.

    Raises FileExistsError if ``dest`` exists, so a dataset is never overwritten in place.
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; remove it first to regenerate")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        rng = np.random.default_rng(spec.seed)
        for split, count in (("train", spec.train_images), ("val", spec.val_images)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for i in range(count):
                image, labels = _draw_sample(rng, spec)
                stem = f"{split}_{i:04d}"
                image.save(tmp / "images" / split / f"{stem}.jpg", format="JPEG", quality=90)
                lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
                (tmp / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        data_yaml = {"train": "images/train", "val": "images/val", "names": dict(enumerate(CLASS_NAMES))}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False))
        os.chmod(tmp, 0o755)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _draw_sample(
    rng: np.random.Generator, spec: DemoSpec
) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    s = spec.size
    # Smooth random gradient plus pixel noise: enough clutter that the model must learn shape, not "any blob".
    base = rng.integers(40, 200, size=3)
    ramp = np.linspace(-30, 30, s)[None, :, None] * rng.choice([-1, 1], size=3)
    noise = rng.normal(0, 12, size=(s, s, 3))
    pixels = np.clip(base[None, None, :] + ramp + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    labels: list[tuple[int, float, float, float, float]] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        for _attempt in range(20):
            side = float(rng.uniform(0.28, 0.5) * s)
            x0 = float(rng.uniform(0, s - side))
            y0 = float(rng.uniform(0, s - side))
            box = (x0, y0, x0 + side, y0 + side)
            if not any(_overlaps(box, other) for other in boxes):
                break
        else:
            continue
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        colour = tuple(int(v) for v in (255 - base + rng.integers(-40, 40, size=3)).clip(0, 255))
        _draw_shape(draw, cls, box, colour)
        boxes.append(box)
        x1, y1, x2, y2 = box
        labels.append((cls, (x1 + x2) / 2 / s, (y1 + y2) / 2 / s, (x2 - x1) / s, (y2 - y1) / s))
    return image, labels


def _draw_shape(
    draw: ImageDraw.ImageDraw, cls: int, box: tuple[float, float, float, float], colour: tuple[int, ...]
) -> None:
    x1, y1, x2, y2 = box
    if CLASS_NAMES[cls] == "circle":
        draw.ellipse(box, fill=colour)
    elif CLASS_NAMES[cls] == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    margin = 2.0
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])
