"""Validate a YOLO detection dataset before any training, with Ultralytics' own semantics.

Everything Ultralytics trains on is accepted (see tasks.dataset_yaml for the yaml forms and
tasks.ultralytics_rules for the pinned facts). What it would crash on, or silently drop,
skip, rewrite or misread, is an error: Ultralytics logs a corrupt image or label line and
trains on less data than the user thinks, drops zero-size boxes during augmentation, and
rewrites a truncated JPEG in place. What is suspicious but trainable is a warning.

:func:`validate_dataset` reads the dataset read-only and returns a :class:`ValidationReport`
with every problem as ``file[:line]: what is wrong (valid form)`` and every warning;
:func:`ensure_valid` raises one :class:`~tasks.errors.DatasetError` listing the problems.
:func:`validate_cached` remembers a verdict per data version (the staged copy's md5).

Only Pillow (plus pi-heif for HEIC) and PyYAML are used; nothing happens at import time.
"""

from __future__ import annotations

import glob
from array import array
from collections.abc import Sequence
import hashlib
import json
import math
import os
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.dataset_yaml import (
    DatasetConfig,
    SplitEntry,
    find_dataset_yaml,
    inside,
    read_dataset_yaml,
    read_image_list,
    resolve_split,
    split_dir_files,
)
from tasks.errors import DatasetError

if TYPE_CHECKING:
    from tasks.params import Params
    from tasks.stage import StagedDataset

from tasks.ultralytics_rules import (
    BOX_VALUES,
    COORD_MAX,
    COORD_MIN,
    IMG_FORMATS,
    MIN_IMAGE_SIDE,
    PIL_FORMATS,
    SEGMENT_MIN_VALUES,
    has_image_suffix,
    label_path,
    list_line_path,
    polygon_box,
)

# A width or height at or below this (normalised) is a zero-size box: Ultralytics keeps it in
# the label cache, then its augmentation drops it (box_candidates), so it never trains.
MIN_BOX_SIZE = 1e-6

_BOX_FORM = "class x_center y_center width height, e.g. '0 0.5 0.5 0.2 0.3', or a polygon 'class x1 y1 x2 y2 x3 y3 ...'"
_FIELD_NAMES = ("x_center", "y_center", "width", "height")
_EXAMPLES = 3  # examples named in an aggregated warning


@dataclass(frozen=True)
class SplitStats:
    """Counts for one split."""

    images: int
    labels: int  # label files found
    boxes: int
    backgrounds: int  # images without any box (empty or missing label file)
    missing_labels: int = 0  # of the backgrounds, those without a label file
    polygons: int = 0  # label rows that were polygons, converted to boxes
    duplicates: int = 0  # repeated label rows Ultralytics drops

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate_dataset` found; ``problems`` empty means the dataset trains as the user thinks."""

    root: Path
    nc: int
    names: list[str]
    splits: dict[str, SplitStats]
    problems: list[str]
    warnings: list[str] = field(default_factory=list)
    yaml: str = ""  # the dataset yaml's file name
    cached: bool = False  # True when the verdict came from the validation cache

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (for logging as an MLflow artifact or printing)."""
        return {
            "root": str(self.root),
            "yaml": self.yaml,
            "ok": self.ok,
            "nc": self.nc,
            "names": list(self.names),
            "splits": {name: stats.to_dict() for name, stats in self.splits.items()},
            "problem_count": len(self.problems),
            "problems": list(self.problems),
            "warning_count": len(self.warnings),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], cached: bool = False) -> ValidationReport:
        return cls(
            root=Path(data["root"]),
            nc=int(data["nc"]),
            names=list(data["names"]),
            splits={k: SplitStats(**v) for k, v in data["splits"].items()},
            problems=list(data["problems"]),
            warnings=list(data.get("warnings", [])),
            yaml=str(data.get("yaml", "")),
            cached=cached,
        )


# --------------------------------------------------------------------------- public API


def validate_dataset(
    root: Path | str, *, strict: bool = False, confine: bool = False, max_listed: int = 20
) -> ValidationReport:
    """Check the dataset at ``root`` (a folder holding one dataset yaml, or the yaml) and report every finding.

    ``strict``: an image without a label file is an error instead of a background image.
    ``confine``: every file must lie inside ``root``'s folder (a staged copy must be self-contained).
    Never raises for faults in the data.
    """
    del max_listed  # the report keeps everything; only messages are cut
    source = Path(root)
    problems: list[str] = []
    try:
        yaml_path = find_dataset_yaml(source)
    except DatasetError as exc:
        return ValidationReport(source, 0, [], {}, [str(exc)])
    config = read_dataset_yaml(yaml_path, problems)
    if config is None:
        return ValidationReport(source, 0, [], {}, problems, yaml=yaml_path.name)
    warnings = list(config.notes)
    base = str(yaml_path.parent)
    checker = _Checker(config, base, strict, problems, warnings)
    if confine:
        checker.confine_to(base)
    stats: dict[str, SplitStats] = {}
    seen: dict[tuple[str, ...], str] = {}
    for split, entries in config.splits.items():
        key = tuple(sorted(e.path for e in entries))
        if key in seen:
            warnings.append(
                f"{config.where(entries[0].line)}: {split} names the same images as {seen[key]}; "
                f"its metrics will not tell how the model does on unseen images"
            )
        seen.setdefault(key, split)
        stats[split] = checker.check_split(split, entries)
    return ValidationReport(source, config.nc, list(config.names), stats, problems, warnings, yaml=yaml_path.name)


def ensure_valid(
    root: Path | str, *, max_listed: int = 20, label: str | None = None, strict: bool = False, confine: bool = False
) -> ValidationReport:
    """Validate and return the report, or raise :class:`DatasetError` listing the problems.

    ``label`` names the dataset in the message (e.g. its source, when ``root`` is a staged copy).
    """
    report = validate_dataset(root, strict=strict, confine=confine)
    return _raise_on_problems(report, label or str(root), max_listed)


def check_cached(root: Path | str, *, version: str, cache_dir: Path, strict: bool = False) -> ValidationReport:
    """:func:`validate_dataset` on a staged copy (confined to it), remembered per data version (``version``: its md5).

    The cache key also holds the rules (this module's code and the pinned Ultralytics facts)
    and the options, so a changed rule or ``strict`` re-validates. Only a clean verdict is
    stored: a broken dataset is re-read every time, so its message is always current.
    """
    path = cache_dir / f"{_cache_key(version, f'strict={strict}', Path(root))}.json"
    try:
        report = ValidationReport.from_dict(json.loads(path.read_text()), cached=True)
        if report.ok and report.root == Path(root):
            return report
    except (OSError, ValueError, KeyError, TypeError):
        pass
    report = validate_dataset(root, strict=strict, confine=True)
    if report.ok:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(report.to_dict()))
            os.replace(tmp, path)
        except OSError:
            pass  # a cache that cannot be written costs time, not correctness
    return report


def validate_cached(
    root: Path | str,
    *,
    version: str,
    cache_dir: Path,
    label: str | None = None,
    strict: bool = False,
    max_listed: int = 20,
) -> ValidationReport:
    """:func:`check_cached`, or :class:`DatasetError` listing the problems."""
    report = check_cached(root, version=version, cache_dir=cache_dir, strict=strict)
    return _raise_on_problems(report, label or str(root), max_listed)


def check_staged(params: Params, staged: StagedDataset) -> ValidationReport:
    """The check of a staged copy: options from ``validate.*``, remembered per data version."""
    from tasks.stage import cache_from_params

    cache_dir = cache_from_params(params).root / ".validated"
    return check_cached(staged.yaml_path, version=staged.md5, cache_dir=cache_dir, strict=params.validate.strict)


def validate_staged(params: Params, staged: StagedDataset, *, max_listed: int = 20) -> ValidationReport:
    """The flow's step: :func:`check_staged`, or :class:`DatasetError` listing the problems."""
    return _raise_on_problems(check_staged(params, staged), staged.source, max_listed)


def format_problems(problems: list[str], max_listed: int = 20) -> str:
    """The first ``max_listed`` problems, one indented line each, then '... and K more problems'."""
    return _format_lines(problems, max_listed, "problem")


def format_warnings(warnings: list[str], max_listed: int = 10) -> str:
    """The first ``max_listed`` warnings, one indented line each, then '... and K more warnings'."""
    return _format_lines(warnings, max_listed, "warning")


def _format_lines(items: list[str], max_listed: int, noun: str) -> str:
    lines = [f"  {p}" for p in items[: max(0, max_listed)]]
    rest = len(items) - len(lines)
    if rest > 0:
        lines.append(f"  ... and {rest} more {noun}{'' if rest == 1 else 's'}")
    return "\n".join(lines)


def _raise_on_problems(report: ValidationReport, label: str, max_listed: int) -> ValidationReport:
    if not report.ok:
        count = len(report.problems)
        message = (
            f"dataset {label} has {count} problem{'' if count == 1 else 's'} (nothing was trained):\n"
            + format_problems(report.problems, max_listed)
        )
        raise DatasetError(message, report.problems)
    return report


def _cache_key(version: str, options: str, root: Path) -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for module in ("validate.py", "dataset_yaml.py", "ultralytics_rules.py"):
        h.update((here / module).read_bytes())
    h.update(f"{version}\0{options}\0{root}".encode())
    return f"{version.removesuffix('.dir')}-{h.hexdigest()[:16]}"


# --------------------------------------------------------------------------- splits


@dataclass
class _LabelResult:
    missing: bool = False
    boxes: int = 0
    polygons: int = 0
    duplicates: list[str] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class _Checker:
    """Checks the splits of one dataset; collects problems and warnings in order."""

    def __init__(
        self, config: DatasetConfig, base: str, strict: bool, problems: list[str], warnings: list[str]
    ) -> None:
        self.config, self.base, self.strict = config, base, strict
        self.problems, self.warnings = problems, warnings
        self.confined: str | None = None

    def confine_to(self, folder: str) -> None:
        self.confined = os.path.normpath(folder)

    def rel(self, path: str) -> str:
        return _rel(path, self.base)

    def _outside(self, path: str) -> bool:
        return self.confined is not None and not inside(path, self.confined)

    # ------------------------------------------------------------------ listing

    def list_images(self, split: str, entries: list[SplitEntry]) -> tuple[list[str], list[str]]:
        """get_img_files: the split's images (sorted, repeats kept) and its directory entries."""
        images: list[str] = []
        dirs: list[str] = []
        where = self.config.where(entries[0].line)
        for entry in entries:
            shown = self.rel(entry.path)
            if self._outside(entry.path):
                self.problems.append(
                    f"{where}: {split}: {entry.given} resolves to {entry.path}, outside the dataset "
                    f"folder {self.confined} (valid: a path inside it)"
                )
            elif os.path.isdir(entry.path):
                dirs.append(entry.path)
                images += self._list_dir(split, entry.path)
            elif os.path.isfile(entry.path):
                if has_image_suffix(entry.path):
                    self.problems.append(
                        f"{where}: {split}: {entry.given} is an image file (valid: a folder of "
                        f"images or a .txt list of image paths)"
                    )
                else:
                    images += self._read_list(entry.path)
            else:
                hint = ""
                if entry.given != entry.given.strip() and os.path.exists(
                    resolve_split(self.config.root, entry.given.strip(), roboflow=True)
                ):
                    hint = f"; {entry.given.strip()!r} without the surrounding spaces exists"
                self.problems.append(
                    f"{where}: {split}: {entry.given!r} does not exist ({shown}){hint} (valid: a "
                    f"folder or .txt list, relative to the dataset root {self.rel(str(self.config.root))})"
                )
        return sorted(images), dirs

    def _list_dir(self, split: str, directory: str) -> list[str]:
        files = split_dir_files(directory)
        images = [f for f in files if has_image_suffix(f)]
        labels = {label_path(f) for f in images}
        stray = sorted(f for f in files if f not in labels and not has_image_suffix(f) and os.path.isfile(f))
        if stray:
            self.warnings.append(
                f"{self.rel(directory)}: {_count(len(stray), 'file')} in the {split} folder "
                f"{'are' if len(stray) > 1 else 'is'} not images and will not train "
                f"({_examples([self.rel(f) for f in stray])}; image extensions: "
                f"{', '.join(sorted(IMG_FORMATS))})"
            )
        return images

    def _read_list(self, list_file: str) -> list[str]:
        shown = self.rel(list_file)
        try:
            lines = read_image_list(list_file)
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(f"{shown}: cannot be read as a UTF-8 list of image paths: {exc}")
            return []
        images: list[str] = []
        for number, line in lines:
            where = f"{shown}:{number}"
            if not has_image_suffix(line):
                if has_image_suffix(line.strip()):
                    self.problems.append(
                        f"{where}: {line!r} has spaces around the path; Ultralytics reads them as "
                        f"part of the name and skips the image (valid: the path alone)"
                    )
                else:
                    self.problems.append(
                        f"{where}: {line!r} is not an image path; Ultralytics skips it (valid: one "
                        f"image per line with an extension of {', '.join(sorted(IMG_FORMATS))})"
                    )
                continue
            path = list_line_path(line, list_file)
            if not os.path.isabs(path):
                self.problems.append(
                    f"{where}: {line!r} is relative to the working directory for Ultralytics, which "
                    f"differs between machines (valid: ./{line} relative to this list, or an "
                    f"absolute path)"
                )
                continue
            path = os.path.normpath(path)
            if self._outside(path):
                self.problems.append(
                    f"{where}: {line} is outside the dataset folder {self.confined} (valid: a path inside it)"
                )
                continue
            images.append(path)
        return images

    # ------------------------------------------------------------------ one split

    def check_split(self, split: str, entries: list[SplitEntry]) -> SplitStats:
        where = self.config.where(entries[0].line)
        before = len(self.problems)
        images, dirs = self.list_images(split, entries)
        if not images:
            if len(self.problems) == before:
                self.problems.append(
                    f"{where}: {split} split has no images (valid extensions: {', '.join(sorted(IMG_FORMATS))})"
                )
            return SplitStats(0, 0, 0, 0)
        unique = sorted(set(images))
        if len(unique) < len(images):
            repeats = len(images) - len(unique)
            self.warnings.append(
                f"{where}: {split} lists {repeats} image{'s' if repeats > 1 else ''} more than once; "
                f"Ultralytics trains every copy (first: {self._first_repeat(images)})"
            )
        results = _check_pairs(unique, self.base, self.config.nc)
        claimed: dict[str, str] = {}
        labels = boxes = backgrounds = missing = polygons = 0
        duplicates: list[str] = []
        tolerated: list[str] = []
        for image, (image_problem, label) in zip(unique, results, strict=True):
            if image_problem is not None:
                self.problems.append(f"{self.rel(image)}: {image_problem}")
            lb = label_path(image)
            if lb in claimed:
                self.problems.append(
                    f"{self.rel(image)}: shares label file {self.rel(lb)} with "
                    f"{self.rel(claimed[lb])}; Ultralytics gives both images the same boxes (valid: "
                    f"image file names unique up to the extension)"
                )
                continue
            claimed[lb] = image
            if label.missing:
                missing += 1
                backgrounds += 1
                self._missing_label(image, lb)
                continue
            labels += 1
            boxes += label.boxes
            backgrounds += label.boxes == 0 and not label.problems
            polygons += label.polygons
            duplicates += label.duplicates
            tolerated += label.tolerated
            self.problems.extend(label.problems)
        self._orphans(split, dirs, claimed)
        self._summarise(split, where, len(unique), missing, polygons, duplicates, tolerated)
        if boxes == 0 and len(self.problems) == before:
            message = (
                f"{where}: the {split} split has no boxes at all "
                + ("(nothing to learn)" if split == "train" else "(its mAP would be 0 and best.pt meaningless)")
                + f" (valid: label files under labels/ beside images/ with lines '{_BOX_FORM}')"
            )
            (self.warnings if split == "test" else self.problems).append(message)
        return SplitStats(len(unique), labels, boxes, backgrounds, missing, polygons, len(duplicates))

    def _first_repeat(self, images: list[str]) -> str:
        seen: set[str] = set()
        for image in images:
            if image in seen:
                return self.rel(image)
            seen.add(image)
        return ""

    def _missing_label(self, image: str, expected: str) -> None:
        """A missing label is a background image, unless strict or the labels sit where Ultralytics never looks."""
        stem = os.path.splitext(os.path.basename(image))[0]
        folder = os.path.dirname(image)
        parts = image.split(os.sep)
        last = max((i for i, p in enumerate(parts[:-1]) if p.lower() == "images"), default=None)
        renamed = os.sep.join(parts[:last] + ["labels"] + parts[last + 1 :]) if last is not None else image
        candidates = [
            os.path.splitext(renamed)[0] + ".txt",
            os.path.join(os.path.dirname(folder), "labels", stem + ".txt"),
            os.path.join(folder, stem + ".txt"),
            os.path.join(os.path.dirname(folder), "labels", os.path.basename(folder), stem + ".txt"),
        ]
        misplaced = next((c for c in candidates if c != expected and os.path.isfile(c)), None)
        if misplaced:
            self.problems.append(
                f"{self.rel(image)}: its labels are at {self.rel(misplaced)}, but Ultralytics reads "
                f"{self.rel(expected)} (the last /images/ in the path becomes /labels/) and would "
                f"train this image as a background (valid: images/<split>/x.jpg with "
                f"labels/<split>/x.txt)"
            )
        elif self.strict:
            self.problems.append(
                f"{self.rel(image)}: no label file {self.rel(expected)} (validate.strict is on; "
                f"add an empty {self.rel(expected)} to mark a background image)"
            )

    def _orphans(self, split: str, dirs: list[str], claimed: dict[str, str]) -> None:
        """Label files in a split folder's label folder without their image: the image was lost."""
        for directory in dirs:
            label_dir = os.path.dirname(label_path(os.path.join(directory, "x.jpg")))
            if label_dir == directory or not os.path.isdir(label_dir):
                continue
            for path in sorted(glob.glob(os.path.join(glob.escape(label_dir), "**", "*.txt"), recursive=True)):
                if path not in claimed:
                    self.problems.append(
                        f"{self.rel(path)}: label file without a matching image in the {split} split "
                        f"(Ultralytics ignores it; remove the label or add the image)"
                    )

    def _summarise(
        self,
        split: str,
        where: str,
        images: int,
        missing: int,
        polygons: int,
        duplicates: list[str],
        tolerated: list[str],
    ) -> None:
        if missing and not self.strict:
            self.warnings.append(
                f"{split}: {missing} of {images} images ({100 * missing / images:.1f} %) have no "
                f"label file and train as background images, as in Ultralytics (set "
                f"validate.strict: true to refuse this)"
            )
        if polygons:
            self.warnings.append(
                f"{split}: {_count(polygons, 'segmentation polygon')} converted to "
                f"{'their enclosing boxes' if polygons > 1 else 'its enclosing box'}, as Ultralytics "
                f"does for detection"
            )
        if duplicates:
            self.warnings.append(
                f"{split}: {_count(len(duplicates), 'repeated label row')} that Ultralytics drops "
                f"({_examples(duplicates)})"
            )
        if tolerated:
            self.warnings.append(
                f"{split}: {_count(len(tolerated), 'coordinate')} slightly outside [0, 1], within "
                f"Ultralytics' 1 % tolerance; it clips them ({_examples(tolerated)})"
            )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _examples(items: list[str]) -> str:
    return ", ".join(items[:_EXAMPLES]) + (", ..." if len(items) > _EXAMPLES else "")


# Below this many images one process is quicker than starting workers (~0.3 s each).
PARALLEL_MIN_IMAGES = 2000


def _check_pairs(images: list[str], base: str, nc: int) -> list[tuple[str | None, _LabelResult]]:
    """Check each image and its label file.

    Header parsing and label parsing are Python work that holds the GIL (threads measured
    slower than one thread), so large splits go to worker processes, one per core: across
    cores like Ultralytics' own label cache, which uses threads.
    """
    workers = min(os.cpu_count() or 1, 32)
    if len(images) < PARALLEL_MIN_IMAGES or workers < 2:
        return [_check_pair(image, base, nc) for image in images]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = -(-len(images) // (workers * 4))
    chunks = [images[i : i + size] for i in range(0, len(images), size)]
    # spawn, not fork: the flow process runs Prefect's threads, which a fork would copy
    # mid-lock. A spawned worker re-runs the parent's __main__ (a Prefect worker, a script,
    # or nothing importable at all, like stdin); it needs only this module, so it gets none.
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_check_chunk, chunks, [base] * len(chunks), [nc] * len(chunks)))
    finally:
        sys.modules["__main__"] = main
    return [result for part in parts for result in part]


def _check_chunk(images: list[str], base: str, nc: int) -> list[tuple[str | None, _LabelResult]]:
    return [_check_pair(image, base, nc) for image in images]


def _check_pair(image: str, base: str, nc: int) -> tuple[str | None, _LabelResult]:
    problem = _check_image(image)
    lb = label_path(image)
    if os.path.isdir(lb):
        return problem, _LabelResult(
            problems=[f"{_rel(lb, base)}: is a folder, not a label file (valid: a .txt file with lines '{_BOX_FORM}')"]
        )
    if not os.path.isfile(lb):
        return problem, _LabelResult(missing=True)
    return problem, _check_label(lb, _rel(lb, base), nc)


def _rel(path: str, base: str) -> str:
    """``path`` relative to the yaml's folder for messages, or absolute when it lies elsewhere."""
    rel = os.path.relpath(path, base)
    return path if rel.startswith("..") else Path(rel).as_posix()


def _register_heif() -> str | None:
    try:
        from pi_heif import register_heif_opener  # Ultralytics' own HEIC/HEIF decoder
    except ImportError:
        return "cannot be decoded: HEIC/HEIF needs the pi-heif package (pip install pi-heif), as Ultralytics does"
    register_heif_opener()
    return None


def _check_image(path: str) -> str | None:
    """check_image: the header, Pillow's verify() (PNG chunk CRCs), format, size, the JPEG end marker.

    No pixel decode: Pillow and OpenCV both decode a JPEG whose scan data is scrambled or
    cut short before a re-appended end marker without an error (measured), so a full decode
    finds nothing more than these checks, at about 5x the time.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "image file is empty (0 bytes); re-export or remove it"
    except OSError:
        if os.path.islink(path):
            return f"is a link to {os.readlink(path)}, which does not exist"
        return "listed image does not exist"
    if path.rpartition(".")[-1].lower() in ("heic", "heif"):
        problem = _register_heif()
        if problem:
            return problem
    try:
        with Image.open(path) as im:
            width, height = im.size
            fmt = (im.format or "").lower()
            im.verify()
    except UnidentifiedImageError:
        return "not an image Pillow can decode (corrupt, or not an image despite its extension)"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a broken image
        return f"image does not decode: {exc} (re-export or remove it)"
    if fmt not in PIL_FORMATS:
        return (
            f"is a {fmt.upper() or 'unknown'} file; Ultralytics skips that format (valid: "
            f"{', '.join(sorted(IMG_FORMATS))})"
        )
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        return f"image is {width}x{height} pixels; Ultralytics needs at least {MIN_IMAGE_SIDE} on each side"
    if fmt == "jpeg":
        try:
            with open(path, "rb") as fh:
                fh.seek(-2, os.SEEK_END)
                tail = fh.read(2)
        except OSError as exc:
            return f"cannot be read: {exc}"
        if tail != b"\xff\xd9":
            return (
                "JPEG is truncated or has bytes after its end: it does not end with the end-of-image "
                "marker (Ultralytics drops such an image, or rewrites it in place; re-export it)"
            )
    return None


def _check_label(path: str, rel: str, nc: int) -> _LabelResult:
    """verify_image_label, line by line: Ultralytics drops the whole image on any fault, trainyard names it."""
    result = _LabelResult()
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        result.problems.append(f"{rel}: cannot be read: {exc}")
        return result
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        result.problems.append(f"{rel}: not a UTF-8 text file (valid: lines '{_BOX_FORM}')")
        return result
    rows = [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not rows:
        return result
    segments = any(len(fields) > BOX_VALUES + 1 for _n, fields in rows)
    if segments and any(len(fields) == BOX_VALUES for _n, fields in rows):
        n_box = next(n for n, fields in rows if len(fields) == BOX_VALUES)
        n_seg = next(n for n, fields in rows if len(fields) > BOX_VALUES + 1)
        result.problems.append(
            f"{rel}:{n_box}: a box row in a file with polygon rows (line {n_seg}); Ultralytics "
            f"drops the whole image (valid: boxes only, or polygons only)"
        )
        return result
    seen: dict[object, int] = {}
    for number, fields in rows:
        where = f"{rel}:{number}"
        box = _parse_row(fields, where, segments, nc, result)
        if box is None:
            continue
        # Ultralytics tells boxes apart by value and polygons by their float32 bytes (0 and -0 differ)
        key: object = _float32(fields).tobytes() if segments else tuple(box)
        if key in seen:
            result.duplicates.append(f"{where} repeats line {seen[key]}")
            continue
        seen[key] = number
        result.boxes += 1
        result.polygons += segments
    return result


def _parse_row(fields: list[str], where: str, segments: bool, nc: int, result: _LabelResult) -> list[float] | None:
    count = len(fields)
    if segments and (count < SEGMENT_MIN_VALUES or (count - 1) % 2):
        result.problems.append(
            f"{where}: polygon with {count - 1} coordinates; Ultralytics drops the whole image "
            f"(valid: class and an even number of coordinates, at least 3 points)"
        )
        return None
    if not segments and count != BOX_VALUES:
        result.problems.append(f"{where}: {count} values, expected 5; Ultralytics drops the whole image ({_BOX_FORM})")
        return None
    try:
        values = _float32(fields).tolist()  # Ultralytics reads labels as float32
    except ValueError:
        bad = next(v for v in fields if not _is_float(v))
        result.problems.append(f"{where}: '{bad}' is not a number ({_BOX_FORM})")
        return None
    cls = values[0]
    ok = True
    if not math.isfinite(cls) or not cls.is_integer():
        result.problems.append(f"{where}: class id '{fields[0]}' is not an integer (valid: 0..{nc - 1})")
        ok = False
    elif cls < 0:
        result.problems.append(f"{where}: class id {int(cls)} is negative (valid: 0..{nc - 1})")
        ok = False
    elif cls >= nc:
        result.problems.append(f"{where}: class id {int(cls)} >= nc {nc} (valid: 0..{nc - 1})")
        ok = False
    coords = values[1:]
    nonfinite = [
        f"{_FIELD_NAMES[i] if not segments else 'coordinate'}={f}"
        for i, f in enumerate(fields[1:])
        if not math.isfinite(float(f))
    ]
    if nonfinite:
        result.problems.append(
            f"{where}: {', '.join(nonfinite)} not a finite number; Ultralytics drops the whole image "
            f"(valid: coordinates normalised to 0..1)"
        )
        return None
    # Ultralytics checks the box, also when it came from a polygon.
    box = _float32(polygon_box(coords)).tolist() if segments else coords
    outside = [(_FIELD_NAMES[i], v) for i, v in enumerate(box) if v > COORD_MAX or v < COORD_MIN or (i >= 2 and v < 0)]
    if outside:
        shown = ", ".join(f"{n}={v:g}" for n, v in outside)
        shown += " of the polygon's box" if segments else ""
        result.problems.append(
            f"{where}: {shown} outside [0, 1] beyond Ultralytics' 1 % tolerance; it drops the "
            f"whole image (valid: coordinates normalised by image width/height to 0..1)"
        )
        return None
    if any(v > 1 or v < 0 for v in box):
        result.tolerated.append(where)
    if box[2] <= MIN_BOX_SIZE or box[3] <= MIN_BOX_SIZE:
        result.problems.append(
            f"{where}: zero-size box (width {box[2]:g}, height {box[3]:g}); Ultralytics' "
            f"augmentation drops it, so it never trains (valid: width and height above "
            f"{MIN_BOX_SIZE:g})"
        )
        return None
    return [cls, *box] if ok else None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _float32(values: Sequence[str | float]) -> array[float]:
    """Values as Ultralytics holds them (a float32 array): rounding decides its tolerance and integer checks."""
    return array("f", [float(v) for v in values])
