"""Validate a YOLO-format detection dataset (Ultralytics layout) before any training.

Ultralytics itself skips broken images and label lines with a log warning, drops
duplicate boxes silently and even rewrites truncated JPEGs in place, so a broken dataset
trains "successfully" on less data than the user thinks. trainyard refuses instead:
:func:`validate_dataset` reads the whole dataset read-only, collects *every* problem as
a line ``relative/path:line: what is wrong (valid form)`` and :func:`ensure_valid` turns
a non-empty list into one :class:`~tasks.errors.DatasetError`.

Layout::

    root/data.yaml               train: images/train, val: images/val, names: [...]
    root/images/<split>/x.jpg    an image
    root/labels/<split>/x.txt    its labels, one "class x_center y_center width height"
                                 per line, normalised to 0..1; empty = background image

Only Pillow and PyYAML are used; nothing happens at import time.
"""

from __future__ import annotations

import difflib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import DatasetError

DATA_YAML = "data.yaml"

# Same list as ultralytics.data.utils.IMG_FORMATS.
IMG_FORMATS: frozenset[str] = frozenset(
    {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic"}
)

# Top-level data.yaml keys Ultralytics understands, plus trainyard's ``background``.
ALLOWED_KEYS: tuple[str, ...] = (
    "path",
    "train",
    "val",
    "test",
    "names",
    "nc",
    "download",
    "background",
    "kpt_shape",
    "flip_idx",
    "channels",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_SPLITS: tuple[str, ...] = ("train", "val")

MIN_BOX_SIZE = 1e-6  # normalised width/height at or below this is a degenerate box
MIN_IMAGE_SIDE = 10  # Ultralytics rejects images with a side under 10 pixels

_BOX_FORM = "class x_center y_center width height, e.g. '0 0.5 0.5 0.2 0.3'"
_FIELD_NAMES = ("class", "x_center", "y_center", "width", "height")


@dataclass(frozen=True)
class SplitStats:
    """Counts for one split: image files, matching label files, valid boxes, backgrounds."""

    images: int
    labels: int
    boxes: int
    backgrounds: int

    def to_dict(self) -> dict[str, int]:
        return {
            "images": self.images,
            "labels": self.labels,
            "boxes": self.boxes,
            "backgrounds": self.backgrounds,
        }


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate_dataset` found; ``problems`` empty means the dataset is usable."""

    root: Path
    nc: int
    names: list[str]
    splits: dict[str, SplitStats]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (for logging as an MLflow artifact or printing)."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "nc": self.nc,
            "names": list(self.names),
            "splits": {name: stats.to_dict() for name, stats in self.splits.items()},
            "problem_count": len(self.problems),
            "problems": list(self.problems),
        }


# --------------------------------------------------------------------------- public API


def validate_dataset(root: Path | str, *, max_listed: int = 20) -> ValidationReport:
    """Check the dataset at ``root`` and return every problem found; never raises for faults.

    ``max_listed`` is accepted for symmetry with :func:`ensure_valid`; the report always
    holds the full list.
    """
    del max_listed  # the report keeps all problems; only messages are truncated
    root_path = Path(root)
    problems: list[str] = []
    if not root_path.is_dir():
        problems.append(
            f"{root_path}: dataset directory does not exist "
            f"(valid: a directory holding {DATA_YAML}, images/ and labels/)"
        )
        return ValidationReport(root_path, 0, [], {}, problems)

    config = _read_config(root_path, problems)
    split_stats: dict[str, SplitStats] = {}
    if config is not None:
        seen_dirs: dict[Path, str] = {}
        for split, rel, line in config.splits:
            image_dir = _resolve_split_dir(root_path, split, rel, line, problems)
            if image_dir is None:
                continue
            key = image_dir.resolve()
            if key in seen_dirs:
                problems.append(
                    f"{DATA_YAML}:{line}: {split} points at the same directory as "
                    f"{seen_dirs[key]} ({rel}); evaluation on training images is meaningless "
                    f"(valid: separate directories like images/train and images/val)"
                )
            seen_dirs[key] = split
            split_stats[split] = _check_split(
                root_path, split, image_dir, config.nc, config.background, problems
            )
    nc = config.nc if config is not None and config.nc is not None else 0
    names = list(config.names) if config is not None else []
    return ValidationReport(root_path, nc, names, split_stats, problems)


def ensure_valid(root: Path | str, *, max_listed: int = 20, label: str | None = None) -> ValidationReport:
    """Validate and return the report, or raise :class:`DatasetError` listing the problems.

    ``label`` names the dataset in the message (e.g. its source, when ``root`` is a staged copy).
    """
    report = validate_dataset(root, max_listed=max_listed)
    if not report.ok:
        count = len(report.problems)
        noun = "problem" if count == 1 else "problems"
        message = (
            f"dataset {label or root} has {count} {noun} (nothing was trained):\n"
            + format_problems(report.problems, max_listed)
        )
        raise DatasetError(message, report.problems)
    return report


def format_problems(problems: list[str], max_listed: int = 20) -> str:
    """The first ``max_listed`` problems, one indented line each, then '... and K more problems'."""
    shown = max(0, max_listed)
    lines = [f"  {p}" for p in problems[:shown]]
    rest = len(problems) - len(lines)
    if rest > 0:
        lines.append(f"  ... and {rest} more problem{'' if rest == 1 else 's'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- data.yaml


@dataclass(frozen=True)
class _Config:
    names: list[str]
    nc: int | None  # None when neither names nor nc is usable
    background: bool
    splits: list[tuple[str, str, int | str]]  # (split, relative dir, data.yaml line)


def _read_config(root: Path, problems: list[str]) -> _Config | None:
    path = root / DATA_YAML
    if not path.is_file():
        problems.append(
            f"{DATA_YAML}: missing (valid: a {DATA_YAML} at the dataset root with "
            f"train: images/train, val: images/val and names: [...])"
        )
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{DATA_YAML}: cannot be read as UTF-8 text: {exc}")
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{DATA_YAML}:{mark.line + 1}" if mark is not None else DATA_YAML
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.append(f"{where}: not valid YAML: {reason}")
        return None
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        problems.append(
            f"{DATA_YAML}: is {kind}, not a mapping "
            f"(valid: keys like train: images/train, val: images/val, names: [...])"
        )
        return None

    lines: dict[Any, int] = {}
    value_nodes: dict[Any, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        line = key_node.start_mark.line + 1
        if key in lines:
            problems.append(
                f"{DATA_YAML}:{line}: key '{key}' given twice (also line {lines[key]}); "
                f"YAML keeps only the last one"
            )
        lines[key] = line
        value_nodes[key] = value_node

    def where(key: str) -> str:
        return f"{DATA_YAML}:{lines[key]}" if key in lines else DATA_YAML

    for key in data:
        if key not in ALLOWED_KEYS:
            text_key = str(key)
            close = difflib.get_close_matches(text_key, ALLOWED_KEYS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(
                f"{where(text_key)}: unknown key '{text_key}' "
                f"({hint}valid keys: {', '.join(ALLOWED_KEYS)})"
            )

    if "path" in data and data["path"] is not None and not isinstance(data["path"], str):
        problems.append(
            f"{where('path')}: path must be a string, got {_describe(data['path'])} "
            f"(trainyard ignores its value and resolves everything relative to the dataset root)"
        )

    background = data.get("background", False)
    if not isinstance(background, bool):
        problems.append(
            f"{where('background')}: background must be true or false, "
            f"got {_describe(background)}"
        )
        background = False

    names = _check_names(data, value_nodes.get("names"), where, problems)
    nc: int | None = len(names) if names else None
    if "nc" in data:
        raw_nc = data["nc"]
        if isinstance(raw_nc, bool) or not isinstance(raw_nc, int) or raw_nc < 1:
            problems.append(
                f"{where('nc')}: nc must be a positive integer, got {_describe(raw_nc)} "
                f"(valid: the number of names, or leave nc out)"
            )
        elif names and raw_nc != len(names):
            problems.append(
                f"{where('nc')}: nc is {raw_nc} but names lists {len(names)} classes "
                f"(valid: nc: {len(names)}, or leave nc out)"
            )
        elif not names:
            nc = raw_nc

    splits: list[tuple[str, str, int | str]] = []
    for split in SPLITS:
        value = data.get(split)
        if value is None:
            if split in REQUIRED_SPLITS:
                detail = "is empty" if split in data else "is missing"
                problems.append(
                    f"{where(split)}: required key '{split}' {detail} "
                    f"(valid: {split}: images/{split}, a directory relative to the dataset root)"
                )
            continue
        if not isinstance(value, str) or not value.strip():
            problems.append(
                f"{where(split)}: {split} must be a directory path string, got {_describe(value)} "
                f"(valid: {split}: images/{split}, relative to the dataset root)"
            )
            continue
        splits.append((split, value.strip(), lines.get(split, "")))
    return _Config(names=names, nc=nc, background=background, splits=splits)


def _check_names(
    data: dict[Any, Any],
    node: yaml.Node | None,
    where: Any,
    problems: list[str],
) -> list[str]:
    valid = "a list of class names like [cat, dog] or a mapping {0: cat, 1: dog}"
    if "names" not in data or data["names"] is None:
        problems.append(f"{where('names')}: required key 'names' is missing or empty (valid: {valid})")
        return []
    raw = data["names"]
    item_lines: list[int] = []
    if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        for item in node.value:
            item_node = item[0] if isinstance(item, tuple) else item
            item_lines.append(item_node.start_mark.line + 1)

    def at(i: int) -> str:
        return f"{DATA_YAML}:{item_lines[i]}" if i < len(item_lines) else where("names")

    values: list[Any]
    if isinstance(raw, list):
        values = list(raw)
    elif isinstance(raw, dict):
        keys = list(raw)
        bad = [k for k in keys if isinstance(k, bool) or not isinstance(k, int)]
        if bad:
            problems.append(
                f"{where('names')}: names keys must be integer class ids, got "
                f"{', '.join(repr(k) for k in bad[:5])} (valid: {valid})"
            )
            return []
        if sorted(keys) != list(range(len(keys))):
            missing = sorted(set(range(len(keys))) - set(keys))
            problems.append(
                f"{where('names')}: names ids must run 0..{len(keys) - 1} without gaps, got "
                f"{sorted(keys)}" + (f" (missing {missing})" if missing else "")
                + f" (valid: {valid})"
            )
            return []
        values = [raw[i] for i in range(len(keys))]
        # report item problems at the key's line, in id order
        order = {k: n for n, k in enumerate(keys)}
        item_lines = [item_lines[order[i]] if order[i] < len(item_lines) else 0 for i in range(len(keys))]
    else:
        problems.append(f"{where('names')}: names must be a list or mapping, got {_describe(raw)} (valid: {valid})")
        return []
    if not values:
        problems.append(f"{where('names')}: names is empty (valid: {valid})")
        return []
    names: list[str] = []
    ok = True
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            problems.append(
                f"{at(i)}: name of class {i} must be a non-empty string, got {_describe(value)}"
            )
            ok = False
        else:
            names.append(value)
    return names if ok else []


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _resolve_split_dir(
    root: Path, split: str, rel: str, line: int | str, problems: list[str]
) -> Path | None:
    where = f"{DATA_YAML}:{line}" if line != "" else DATA_YAML
    valid = f"valid: a directory of images relative to the dataset root, like images/{split}"
    if os.path.isabs(rel):
        problems.append(f"{where}: {split}: {rel} is an absolute path ({valid})")
        return None
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith(".." + os.sep) or norm.startswith("../"):
        problems.append(f"{where}: {split}: {rel} points outside the dataset root ({valid})")
        return None
    image_dir = root / norm
    if not image_dir.exists():
        problems.append(f"{where}: {split}: directory {Path(norm).as_posix()} does not exist ({valid})")
        return None
    if not image_dir.is_dir():
        problems.append(f"{where}: {split}: {Path(norm).as_posix()} is not a directory ({valid})")
        return None
    return image_dir


# --------------------------------------------------------------------------- splits


def _label_path(image: str) -> str:
    """Ultralytics' img2label_paths: the last /images/ becomes /labels/, extension .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return os.path.splitext(sb.join(image.rsplit(sa, 1)))[0] + ".txt"


def _walk(directory: str) -> list[str]:
    """All non-hidden files under ``directory``, recursively, sorted."""
    found: list[str] = []
    stack = [directory]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():
                        stack.append(entry.path)
                    elif entry.is_file():
                        found.append(entry.path)
        except OSError:
            continue
    found.sort()
    return found


def _rel(root: str, path: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _check_split(
    root: Path,
    split: str,
    image_dir: Path,
    nc: int | None,
    background: bool,
    problems: list[str],
) -> SplitStats:
    root_s = str(root)
    dir_s = str(image_dir)
    images = [
        p for p in _walk(dir_s) if os.path.splitext(p)[1][1:].lower() in IMG_FORMATS
    ]
    rel_dir = _rel(root_s, dir_s)
    if not images:
        problems.append(
            f"{rel_dir}: {split} split has no images "
            f"(valid extensions: {', '.join(sorted(IMG_FORMATS))})"
        )

    # Image decoding dominates the cost; Pillow releases the GIL while decoding.
    image_problems: list[str | None]
    if len(images) > 8:
        workers = min(16, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            image_problems = list(pool.map(_check_image, images))
    else:
        image_problems = [_check_image(p) for p in images]

    # Where Ultralytics looks for this split's labels: images/<split> -> labels/<split>.
    label_dir = os.path.dirname(_label_path(os.path.join(dir_s, "x")))
    label_dir_exists = os.path.isdir(label_dir)
    rel_label_dir = _rel(root_s, label_dir)
    missing_dir_reported = False
    if images and not label_dir_exists and not background:
        problems.append(
            f"{rel_label_dir}: label directory for {rel_dir} does not exist "
            f"(add one .txt label file per image there, or set `background: true` in "
            f"{DATA_YAML} if all {split} images are backgrounds)"
        )
        missing_dir_reported = True

    expected: dict[str, str] = {}
    labels = boxes = backgrounds = 0
    for image, image_problem in zip(images, image_problems):
        rel_image = _rel(root_s, image)
        if image_problem is not None:
            problems.append(f"{rel_image}: {image_problem}")
        label = _label_path(image)
        rel_label = _rel(root_s, label)
        if label in expected:
            problems.append(
                f"{rel_image}: shares label file {rel_label} with {_rel(root_s, expected[label])} "
                f"(valid: image file names unique up to the extension)"
            )
            continue
        expected[label] = image
        if not os.path.isfile(label):
            if background:
                backgrounds += 1
            elif not missing_dir_reported:
                problems.append(
                    f"{rel_image}: no label file {rel_label} (add an empty {rel_label} to mark "
                    f"a background image, or set `background: true` in {DATA_YAML})"
                )
            continue
        labels += 1
        n = _check_label(label, rel_label, nc, problems)
        boxes += n
        if n == 0 and _is_blank(label):
            backgrounds += 1

    # Orphan labels: .txt files in the label directory that no image of this split claims.
    if label_dir_exists:
        for path in _walk(label_dir):
            if path.endswith(".txt") and path not in expected:
                stem = _rel(root_s, _image_for(path, dir_s, label_dir))
                problems.append(
                    f"{_rel(root_s, path)}: label file without a matching image "
                    f"(no {stem}.<image extension> in the {split} split; "
                    f"remove the label or add the image)"
                )

    if split == "train" and images and boxes == 0:
        problems.append(
            f"{rel_label_dir}: the train split has no boxes at all, nothing to learn "
            f"(valid: label files with lines '{_BOX_FORM}')"
        )
    return SplitStats(images=len(images), labels=labels, boxes=boxes, backgrounds=backgrounds)


def _image_for(label: str, image_dir: str, label_dir: str) -> str:
    rel = os.path.relpath(os.path.splitext(label)[0], label_dir)
    return os.path.join(image_dir, rel)


def _is_blank(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return not fh.read().strip()
    except OSError:
        return False


def _check_image(path: str) -> str | None:
    """Decode the image fully; return what is wrong with it, or None."""
    from PIL import Image, UnidentifiedImageError

    ext = os.path.splitext(path)[1][1:].lower()
    if ext == "heic":
        try:
            from pillow_heif import register_heif_opener  # type: ignore[import-not-found]

            register_heif_opener()
        except ImportError:
            return "cannot be decoded: HEIC needs the pillow-heif package (pip install pillow-heif)"
    try:
        if os.path.getsize(path) == 0:
            return "image file is empty (0 bytes); re-export or remove it"
        with Image.open(path) as im:
            width, height = im.size
            fmt = im.format
            if fmt == "JPEG":
                # Decode at 1/8 scale: every byte of entropy-coded data is still read (so
                # truncation and corruption are caught) but the IDCT work is much smaller.
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
            im.load()  # full decode: catches truncation, which verify() does not
    except UnidentifiedImageError:
        return "not an image Pillow can decode (corrupt, or not an image despite its extension)"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a broken image
        return f"image does not decode: {exc} (re-export or remove it)"
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        return f"image is {width}x{height} pixels; Ultralytics needs at least {MIN_IMAGE_SIDE} on each side"
    if fmt == "JPEG":
        try:
            with open(path, "rb") as fh:
                fh.seek(-2, os.SEEK_END)
                tail = fh.read(2)
        except OSError as exc:
            return f"cannot be read: {exc}"
        if tail != b"\xff\xd9":
            return (
                "JPEG is truncated: it does not end with the end-of-image marker "
                "(Ultralytics would rewrite the file in place; re-export it)"
            )
    return None


def _check_label(path: str, rel: str, nc: int | None, problems: list[str]) -> int:
    """Check every line of one label file; return the number of valid boxes."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        problems.append(f"{rel}: cannot be read: {exc}")
        return 0
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        problems.append(f"{rel}: not a UTF-8 text file (valid: lines '{_BOX_FORM}')")
        return 0

    boxes = 0
    seen: dict[tuple[float, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{rel}:{number}"
        count = len(fields)
        if count != 5:
            if count >= 7 and count % 2 == 1:
                problems.append(
                    f"{where}: segmentation polygon with {(count - 1) // 2} points; "
                    f"trainyard trains detection: 5 values per line ({_BOX_FORM})"
                )
            else:
                problems.append(f"{where}: {count} values, expected 5 ({_BOX_FORM})")
            continue
        values: list[float] = []
        bad_field = None
        for name, text_value in zip(_FIELD_NAMES, fields):
            try:
                values.append(float(text_value))
            except ValueError:
                bad_field = (name, text_value)
                break
        if bad_field is not None:
            problems.append(f"{where}: {bad_field[0]} '{bad_field[1]}' is not a number ({_BOX_FORM})")
            continue

        line_ok = True
        cls = values[0]
        if not math.isfinite(cls) or not cls.is_integer():
            problems.append(f"{where}: class id '{fields[0]}' is not an integer" + _class_range(nc))
            line_ok = False
        elif cls < 0:
            problems.append(f"{where}: class id {int(cls)} is negative" + _class_range(nc))
            line_ok = False
        elif nc is not None and cls >= nc:
            problems.append(f"{where}: class id {int(cls)} >= nc {nc}" + _class_range(nc))
            line_ok = False

        coords = values[1:]
        nonfinite = [
            f"{n}={t}" for n, v, t in zip(_FIELD_NAMES[1:], coords, fields[1:]) if not math.isfinite(v)
        ]
        outside = [
            f"{n}={t}"
            for n, v, t in zip(_FIELD_NAMES[1:], coords, fields[1:])
            if math.isfinite(v) and not 0.0 <= v <= 1.0
        ]
        if nonfinite:
            problems.append(
                f"{where}: {', '.join(nonfinite)} not a finite number "
                f"(valid: coordinates normalised to 0..1)"
            )
            line_ok = False
        if outside:
            problems.append(
                f"{where}: {', '.join(outside)} outside [0, 1] "
                f"(valid: coordinates normalised by image width/height to 0..1)"
            )
            line_ok = False
        if not nonfinite and not outside:
            w, h = coords[2], coords[3]
            if w <= MIN_BOX_SIZE or h <= MIN_BOX_SIZE:
                problems.append(
                    f"{where}: degenerate box with width {fields[3]} and height {fields[4]} "
                    f"(valid: width and height greater than {MIN_BOX_SIZE:g})"
                )
                line_ok = False

        key = tuple(values)
        if key in seen:
            problems.append(
                f"{where}: duplicates line {seen[key]} "
                f"(Ultralytics silently drops duplicate boxes; remove the repeat)"
            )
            continue
        seen[key] = number
        if line_ok:
            boxes += 1
    return boxes


def _class_range(nc: int | None) -> str:
    if nc is None:
        return " (valid: a class id from names in data.yaml)"
    return f" (valid: 0..{nc - 1})"
