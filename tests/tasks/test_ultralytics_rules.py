"""Pin every Ultralytics fact trainyard copies (tasks.ultralytics_rules) against the installed package.

tasks.ultralytics_rules, tasks.validate (_check_label, _check_image) and tasks.dataset_yaml
re-implement how Ultralytics reads a detection dataset without importing it. These tests run
the real Ultralytics functions on the same inputs and assert both sides agree, so an
Ultralytics upgrade that changes a rule fails here instead of drifting silently:

- constants: IMG_FORMATS, DATASET_KEY_TYPES, the keys check_det_dataset reads, the minimum
  image side (check_image), the coordinate tolerance (verify_image_label);
- paths: img2label_paths, get_img_files (directories and .txt lists);
- conversions: segments2boxes, the class names check_det_dataset/check_class_names produce;
- verdicts: verify_image_label on label files, check_image on image files.

Where trainyard is stricter on purpose, the case says why; everywhere else the verdicts agree.

Plain pytest on tmp_path; nothing trains, nothing is downloaded.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import random
import shutil
import textwrap
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image, features

import ultralytics.utils.checks as ul_checks
from ultralytics.data import utils as ul_data
from ultralytics.data.base import BaseDataset
from ultralytics.utils import patches as ul_patches
from ultralytics.utils.ops import segments2boxes

from tasks import ultralytics_rules as rules
from tasks.dataset_yaml import read_dataset_yaml
from tasks.validate import _check_image, _check_label, validate_dataset

NC = 3  # classes in the label verdict tests

# Pillow's own Image.open: importing Ultralytics replaces it with a wrapper that, on an
# unidentified file, installs and registers pi-heif. trainyard runs without Ultralytics loaded.
_PIL_OPEN = getattr(ul_patches, "_image_open", Image.open)


@pytest.fixture(autouse=True)
def _offline_ultralytics(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pip installs (pi-heif, on an unidentified image) and no font downloads (check_det_dataset)."""
    monkeypatch.setattr(ul_checks, "check_requirements", lambda *args, **kwargs: True)
    monkeypatch.setattr(ul_data, "check_font", lambda *args, **kwargs: None)


# --------------------------------------------------------------------------- helpers


def _rgb(width: int = 32, height: int = 24) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _encode(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _with_orientation(fmt: str, width: int, height: int, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[274] = orientation  # 6: rotate 90 degrees; check_image swaps width and height
    return _encode(_rgb(width, height), fmt, exif=exif)


def _write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def _ultralytics_accepts_image(path: str) -> tuple[bool, str]:
    """check_image: (accepted, the message it returns); it raises on an image it refuses."""
    try:
        msg, _shape = ul_data.check_image(path)
    except Exception:  # noqa: BLE001 - any exception is a refusal (verify_image_label catches them all)
        return False, ""
    return True, msg


def _trainyard_image(path: str, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """tasks.validate._check_image with Pillow's unpatched Image.open, as in production."""
    with monkeypatch.context() as m:
        m.setattr(Image, "open", _PIL_OPEN)
        return _check_image(path)


def _verify_image_label(image: str, label: str, nc: int) -> tuple[Any, ...]:
    """verify_image_label; args are (im_file, lb_file, prefix, keypoint, num_cls, nkpt, ndim, single_cls).

    Returns (im_file, lb, shape, segments, keypoints, nm, nf, ne, nc, msg); nc == 1 means corrupt.
    """
    return tuple(ul_data.verify_image_label((image, label, "", False, nc, 0, 0, False)))


def _label_pair(root: Path, content: bytes) -> tuple[str, str]:
    """images/x.jpg (a valid 32x32 JPEG) and labels/x.txt holding ``content``."""
    image = _write(root / "images" / "x.jpg", _encode(_rgb(32, 32), "JPEG"))
    label = _write(root / "labels" / "x.txt", content)
    assert rules.label_path(image) == label
    return image, label


def _get_img_files(path: str | Path) -> list[str]:
    """BaseDataset.get_img_files, unbound: it only reads self.prefix and self.fraction."""
    return BaseDataset.get_img_files(types.SimpleNamespace(prefix="", fraction=1.0), str(path))


# --------------------------------------------------------------------------- constants


def test_img_formats_match_ultralytics() -> None:
    """data/utils.py IMG_FORMATS."""
    assert rules.IMG_FORMATS == set(ul_data.IMG_FORMATS)
    assert rules.PIL_FORMATS == set(ul_data.IMG_FORMATS) | {"jpeg2000"}  # check_image's format test


def test_key_types_match_dataset_key_types() -> None:
    """check_det_dataset's DATASET_KEY_TYPES: same types for every key trainyard pins."""
    for key, types_ in rules.KEY_TYPES.items():
        assert ul_data.DATASET_KEY_TYPES[key] == types_, key
    # A key Ultralytics starts type-checking must be pinned too; kpt_shape/flip_idx are pose-only.
    assert set(ul_data.DATASET_KEY_TYPES) - set(rules.KEY_TYPES) == {"kpt_shape", "flip_idx"}


def _keys_read_by_check_det_dataset() -> set[str]:
    """The yaml keys check_det_dataset reads: data[k], data.get(k), data.pop(k), k in data; k literal or looped."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(ul_data.check_det_dataset)))
    looped: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name):
            looped.setdefault(node.target.id, set()).update(
                c.value for c in ast.walk(node.iter) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )

    def is_data(expr: ast.AST) -> bool:
        return isinstance(expr, ast.Name) and expr.id == "data"

    def keys(expr: ast.AST) -> set[str]:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        return looped.get(expr.id, set()) if isinstance(expr, ast.Name) else set()

    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_data(node.value):
            found |= keys(node.slice)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.args
            and node.func.attr in ("get", "pop")
            and is_data(node.func.value)
        ):
            found |= keys(node.args[0])
        elif (
            isinstance(node, ast.Compare)
            and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
            and any(is_data(c) for c in node.comparators)
        ):
            found |= keys(node.left)
    return {k for k in found if k.isidentifier()}  # drops e.g. ".yaml" from an unrelated loop over suffixes


def test_known_keys_match_check_det_dataset() -> None:
    """check_det_dataset: the keys it reads, plus the DATASET_KEY_TYPES it type-checks.

    Not counted: yaml_file (YAML.load adds it) and masks_dir (semantic segmentation only).
    """
    read = _keys_read_by_check_det_dataset()
    assert {"train", "val", "names", "nc", "path", "download"} <= read  # the scan works
    assert set(rules.KNOWN_KEYS) == (read | set(ul_data.DATASET_KEY_TYPES)) - {"yaml_file", "masks_dir"}


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(rules.MIN_IMAGE_SIDE - 1, 40, id="narrow"),
        pytest.param(40, rules.MIN_IMAGE_SIDE - 1, id="short"),
        pytest.param(rules.MIN_IMAGE_SIDE, rules.MIN_IMAGE_SIDE, id="minimum"),
        pytest.param(rules.MIN_IMAGE_SIDE + 1, rules.MIN_IMAGE_SIDE, id="minimum-height"),
    ],
)
def test_min_image_side_matches_check_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int, height: int
) -> None:
    """check_image: both sides must be > 9 pixels."""
    path = _write(tmp_path / "im.png", _encode(_rgb(width, height), "PNG"))
    accepted = min(width, height) >= rules.MIN_IMAGE_SIDE
    assert _ultralytics_accepts_image(path)[0] is accepted
    assert (_trainyard_image(path, monkeypatch) is None) is accepted


def _float32_above(value: float) -> str:
    return repr(float(np.nextafter(np.float32(value), np.float32(np.inf))))


def _float32_below(value: float) -> str:
    return repr(float(np.nextafter(np.float32(value), np.float32(-np.inf))))


@pytest.mark.parametrize(
    ("field", "value", "kept"),
    [
        pytest.param(1, repr(rules.COORD_MAX), True, id="x-at-max"),
        pytest.param(1, _float32_above(rules.COORD_MAX), False, id="x-beyond-max"),
        pytest.param(2, repr(rules.COORD_MIN), True, id="y-at-min"),
        pytest.param(2, _float32_below(rules.COORD_MIN), False, id="y-beyond-min"),
        pytest.param(3, repr(rules.COORD_MAX), True, id="width-at-max"),
        pytest.param(3, _float32_above(rules.COORD_MAX), False, id="width-beyond-max"),
        pytest.param(4, "-0.001", False, id="height-negative-no-tolerance"),
    ],
)
def test_coordinate_tolerance_matches_verify_image_label(tmp_path: Path, field: int, value: str, kept: bool) -> None:
    """verify_image_label: points <= 1.01; values >= -0.01 with width and height >= 0 (COORD_MAX, COORD_MIN)."""
    row = ["0", "0.5", "0.5", "0.2", "0.2"]
    row[field] = value
    image, label = _label_pair(tmp_path, (" ".join(row) + "\n").encode())
    *_, corrupt, msg = _verify_image_label(image, label, NC)
    ours = _check_label(label, "x.txt", NC)
    assert (corrupt == 0) is kept, msg
    assert (not ours.problems) is kept, ours.problems


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "image",
    [
        pytest.param("/data/images/train/a.jpg", id="split-folder"),
        pytest.param("/data/images/train/sub/deeper/a.png", id="nested"),
        pytest.param("/data/train/a.jpg", id="no-images-folder"),
        pytest.param("/images/data/images/train/images/a.jpg", id="several-images-folders"),
        pytest.param("/data/images.old/images/a.jpg", id="images-prefix-folder"),
        pytest.param("/data/my.images/train.v2/a.b.c.jpg", id="dots-in-names"),
        pytest.param("/data/images/noext", id="no-extension"),
        pytest.param("/data/images.d/noext", id="dot-only-in-folder"),
        pytest.param("/data/images/.hidden.jpg", id="hidden-file"),
        pytest.param("/data//images//a.jpg", id="double-slashes"),
        pytest.param("/data/with space/images/my file.jpg", id="spaces"),
        pytest.param("/dätä/images/ünïcode 画像.jpg", id="unicode"),
        pytest.param("/data/images/A.JPG", id="upper-case-extension"),
        pytest.param("/data/IMAGES/a.jpg", id="upper-case-images-folder"),
        pytest.param("relative/images/a.jpeg", id="relative"),
        pytest.param("images/a.jpg", id="relative-images-first"),
        pytest.param("a.tar.jpg", id="bare-name"),
    ],
)
def test_label_path_matches_img2label_paths(image: str) -> None:
    """data/utils.py img2label_paths."""
    image = image.replace("/", os.sep)
    assert rules.label_path(image) == ul_data.img2label_paths([image])[0]


def test_list_lines_match_get_img_files(tmp_path: Path) -> None:
    """get_img_files on a .txt list: has_image_suffix and list_line_path agree line by line."""
    outside = tmp_path / "elsewhere dir"
    lines = [
        "./images/a.jpg",  # relative to the list's folder
        str(outside / "b.png"),  # absolute
        "notes.md",  # not an image: skipped
        "./images/C.JPG",  # upper-case extension
        "images/rel.jpg",  # relative to the working directory (trainyard refuses it; see validate)
        "../up/d.png",
        "./images/./e.jpeg",
        "./images/f.jpg ",  # trailing space: the extension is "jpg ", not an image
        " ./images/g.jpg",  # leading space: not "./", used as is
        "./images/dots.v2/h.webp",
        str(outside / "ü.TIF"),
        "./images/no_extension",
    ]
    list_file = str(tmp_path / "list.txt")
    for line in lines:  # check_file_speeds stats a sample of the listed files: create those it can find
        path = rules.list_line_path(line, list_file)
        if rules.has_image_suffix(line) and os.path.isabs(path):
            _write(Path(path), _encode(_rgb(), "PNG"))
    _write(Path(list_file), "header.txt\n" + "\n".join(lines) + "\n")
    read = ["header.txt", *lines]  # as get_img_files reads them: the whole text stripped, then split
    expected = sorted(rules.list_line_path(line, list_file) for line in read if rules.has_image_suffix(line))
    assert _get_img_files(list_file) == expected
    assert len(expected) == 9


def test_validate_counts_the_images_get_img_files_lists(tmp_path: Path) -> None:
    """get_img_files on a folder (glob **/*.*) and a .txt list (BOM, CRLF): validate_dataset counts the same images."""
    root = tmp_path / "ds"
    val_dir = root / "images" / "val [1]"  # glob metacharacters in the folder name
    for name in ("a.jpg", "B.PNG", "sub/c.jpeg", "sub/deeper/d.webp", ".hidden.jpg", "notes.txt", "noext", "e.tar.bmp"):
        _write(val_dir / name, _encode(_rgb(), "PNG"))
    outside = tmp_path / "other place"
    for name in ("x.jpg", "y.JPG"):
        _write(outside / "images" / name, _encode(_rgb(), "JPEG"))
    for name in ("t1.jpg", "t2.png", "T3.JPEG"):
        _write(root / "images" / "train" / name, _encode(_rgb(), "PNG"))
    lines = [
        "./images/train/t1.jpg",
        "./images/train/t2.png",
        "./images/train/T3.JPEG",
        "./images/train/t1.jpg",
        str(outside / "images" / "x.jpg"),
        str(outside / "images" / "y.JPG"),
        "README.md",
        "",
    ]
    list_file = _write(root / "train.txt", ("\ufeff" + "\r\n".join(lines)).encode())
    _write(root / "data.yaml", "train: train.txt\nval: 'images/val [1]'\nnames: [a, b, c]\n")

    report = validate_dataset(root)

    listed = _get_img_files(list_file)
    assert len(listed) == 6  # the repeated t1.jpg is listed twice; trainyard counts it once (and warns)
    assert report.splits["train"].images == len({os.path.normpath(p) for p in listed})
    assert report.splits["val"].images == len(set(_get_img_files(val_dir))) == 5


# --------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
def test_polygon_box_matches_segments2boxes(seed: int) -> None:
    """utils/ops.py segments2boxes: the enclosing box of a polygon as (x_center, y_center, w, h)."""
    rng = random.Random(seed)
    for _ in range(50):
        points = [rng.uniform(-0.1, 1.1) for _ in range(2 * rng.randint(1, 20))]
        expected = segments2boxes([np.array(points, dtype=np.float64).reshape(-1, 2)])[0]
        assert rules.polygon_box(points) == pytest.approx(expected.tolist(), abs=1e-6)


@pytest.mark.parametrize(
    "names_yaml",
    [
        pytest.param("nc: 1", id="nc-1"),
        pytest.param("nc: 4", id="nc-4"),
        pytest.param("nc: '4'", id="nc-string"),
        pytest.param("nc: 5.0", id="nc-float"),
        pytest.param("names: null\nnc: 2", id="names-null-nc"),
        pytest.param("names: [cat, dog]", id="list"),
        pytest.param("names: [cat, dog]\nnc: 2", id="list-and-nc"),
        pytest.param("names: {0: cat, 1: dog}", id="mapping"),
        pytest.param("names: {'1': dog, '0': cat}", id="mapping-string-keys-unordered"),
        pytest.param("names: [1, true, 2.5]", id="non-string-names"),
        pytest.param("nc: 1.5", id="refused-nc-fraction"),
        pytest.param("nc: many", id="refused-nc-word"),
        pytest.param("names: []", id="refused-names-empty"),
        pytest.param("names: {0: cat, 2: dog}", id="refused-names-gap"),
        pytest.param("names: [cat]\nnc: 2", id="refused-names-nc-mismatch"),
        pytest.param("names: cat", id="refused-names-string"),
        pytest.param("", id="refused-no-names-no-nc"),
    ],
)
def test_names_match_check_det_dataset(tmp_path: Path, names_yaml: str) -> None:
    """check_det_dataset + nn/autobackend.py check_class_names: trainyard's names (default_names for nc only)."""
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\n{names_yaml}\n")

    problems: list[str] = []
    config = read_dataset_yaml(yaml_path, problems)
    try:
        data = ul_data.check_det_dataset(str(yaml_path), autodownload=False)
    except Exception:  # noqa: BLE001 - SyntaxError, TypeError, KeyError: Ultralytics refuses the yaml
        data = None

    assert (data is None) == bool(problems), problems
    if data is not None:
        assert config is not None
        assert data["names"] == dict(enumerate(config.names))  # by class id (a mapping may list them unordered)
        assert data["nc"] == config.nc
        if "names:" not in names_yaml or "names: null" in names_yaml:
            assert config.names == rules.default_names(config.nc)


# --------------------------------------------------------------------------- label verdicts

_BOX = "0 0.5 0.5 0.2 0.3"
_POLY = "0 0.1 0.1 0.4 0.1 0.4 0.5"
_ZERO_SIZE = (
    "Ultralytics keeps a zero-size box in the label cache, then its augmentation drops it "
    "(box_candidates), so it never trains; trainyard names the row"
)
# (content, why trainyard refuses what Ultralytics keeps: "" when both must agree)
LABEL_CASES = [
    # kept by both
    pytest.param(f"{_BOX}\n2 0.25 0.75 0.1 0.2\n", "", id="boxes"),
    pytest.param(f"{_POLY}\n1 0.5 0.5 0.9 0.5 0.9 0.9 0.5 0.9\n", "", id="polygons"),
    pytest.param("1.0 0.5 0.5 0.2 0.2\n2e0 0.3 0.3 0.1 0.1\n", "", id="integer-like-class"),
    pytest.param("-0 0.5 0.5 0.2 0.2\n", "", id="negative-zero-class"),
    pytest.param("+1 +.5 5e-1 .2 2.e-1\n", "", id="signed-and-short-floats"),
    pytest.param("0 0.5 0.5 0.2_0 0.2\n", "", id="underscore-in-number"),
    pytest.param("\uff10 0.5 0.5 0.2 0.2\n", "", id="fullwidth-digit-class"),
    pytest.param("0 1.005 0.5 0.2 0.2\n", "", id="x-1.005-tolerated"),
    pytest.param("0 -0.005 0.5 0.2 0.2\n", "", id="x-minus-0.005-tolerated"),
    pytest.param("0 0.5 1.005 0.2 0.2\n1 0.5 -0.005 0.2 0.2\n", "", id="y-tolerated-both-sides"),
    pytest.param("0 -0.02 0.1 0.5 0.1 0.5 0.5\n", "", id="polygon-point-outside-box-inside"),
    pytest.param(b"\xef\xbb\xbf" + f"{_BOX}\n".encode(), "", id="bom"),
    pytest.param(f"{_BOX}\r\n1 0.3 0.3 0.1 0.1\r\n", "", id="crlf"),
    pytest.param("0\t0.5\t0.5\t0.2\t0.2\n", "", id="tabs"),
    pytest.param("0\u00a00.5 0.5 0.2 0.2\n", "", id="no-break-space"),
    pytest.param(f"{_BOX}\u20281 0.3 0.3 0.1 0.1\n", "", id="unicode-line-separator"),
    pytest.param(f"\n\n{_BOX}\n   \n\t\n1 0.3 0.3 0.1 0.1\n\n", "", id="blank-lines"),
    pytest.param(_BOX, "", id="no-final-newline"),
    pytest.param(f"{_BOX}\n1 0.3 0.3 0.1 0.1\n{_BOX}\n{_BOX}\n", "", id="duplicate-rows"),
    pytest.param(f"{_BOX}\n0 0.50000001 0.5 0.2 0.3\n", "", id="float32-equal-duplicates"),
    pytest.param(f"{_POLY}\n{_POLY}\n", "", id="duplicate-polygons"),
    pytest.param(f"{_POLY}\n0 0.1 0.1 0.4 0.5 0.4 0.1\n", "", id="same-box-different-polygons"),
    pytest.param("", "", id="empty"),
    pytest.param("  \n\t\n", "", id="whitespace-only"),
    # refused by both (BOX_VALUES, SEGMENT_MIN_VALUES, classes, COORD_MAX/COORD_MIN, parsing)
    pytest.param(f"{_BOX}\n{_POLY}\n", "", id="mixed-box-and-polygon"),
    pytest.param("0 0.5 0.5 0.2 0.3 0.1\n", "", id="six-values"),
    pytest.param(f"{_BOX}\n0 0.5 0.5 0.2 0.3 0.1\n", "", id="six-values-after-box"),
    pytest.param("0 0.5 0.5 0.2\n", "", id="four-values"),
    pytest.param("0\n", "", id="class-only"),
    pytest.param("0 0.1 0.1 0.4 0.1 0.4 0.5 0.6\n", "", id="polygon-odd-coordinates"),
    pytest.param(f"{_POLY}\n0 0.5 0.5 0.2 0.3 0.1\n", "", id="polygon-with-six-value-row"),
    pytest.param(f"0\n{_POLY}\n", "", id="polygon-with-class-only-row"),
    pytest.param("3 0.5 0.5 0.2 0.2\n", "", id="class-out-of-range"),
    pytest.param(f"{_BOX}\n5 0.5 0.5 0.2 0.2\n", "", id="one-bad-row-drops-file"),
    pytest.param("0.5 0.5 0.5 0.2 0.2\n", "", id="fractional-class"),
    pytest.param("-1 0.5 0.5 0.2 0.2\n", "", id="negative-class"),
    pytest.param("nan 0.5 0.5 0.2 0.2\n", "", id="nan-class"),
    pytest.param("0 1.02 0.5 0.2 0.2\n", "", id="x-1.02-refused"),
    pytest.param("0 -0.02 0.5 0.2 0.2\n", "", id="x-minus-0.02-refused"),
    pytest.param("0 0.5 0.5 -0.2 0.2\n", "", id="negative-width"),
    pytest.param("0 0.5 0.5 0.2 -0.005\n", "", id="slightly-negative-height"),
    pytest.param("0 0.5 0.5 1.02 0.2\n", "", id="width-beyond-tolerance"),
    pytest.param("0 1.05 0.1 1.1 0.1 1.1 0.5\n", "", id="polygon-box-outside"),
    pytest.param("0 -0.01 0.1 1.01 0.1 1.01 0.5\n", "", id="polygon-wider-than-tolerance"),
    pytest.param("0 nan 0.5 0.2 0.2\n", "", id="nan"),
    pytest.param("0 inf 0.5 0.2 0.2\n", "", id="inf"),
    pytest.param("0 a 0.5 0.2 0.2\n", "", id="not-a-number"),
    pytest.param("0 0x1p-1 0.5 0.2 0.2\n", "", id="hex-float"),
    pytest.param(f"{_BOX} # car\n", "", id="trailing-comment"),
    pytest.param("0,0.5,0.5,0.2,0.2\n", "", id="comma-separated"),
    pytest.param(f"{_BOX}\x00\n", "", id="nul-byte"),
    pytest.param(f"{_BOX}\n".encode("utf-16"), "", id="utf-16"),
    pytest.param(f"{_BOX} \xe9\n".encode("latin-1"), "", id="latin-1"),
    # trainyard stricter on purpose
    pytest.param("0 0.5 0.5 0 0.2\n", _ZERO_SIZE, id="zero-width"),
    pytest.param("0 0.5 0.5 0.2 0\n", _ZERO_SIZE, id="zero-height"),
    pytest.param("0 0.5 0.5 1e-7 0.2\n", _ZERO_SIZE, id="tiny-width"),
    pytest.param(f"0 0.5 0.5\n{_POLY}\n", _ZERO_SIZE + " (a one-point polygon's box)", id="one-point-polygon"),
    # float32 edges: Ultralytics holds labels as float32, so rounding decides tolerance and integer checks
    pytest.param("0 1.010000005 0.5 0.2 0.2\n", "", id="float32-rounds-x-into-max"),
    pytest.param("0 -0.0100000001 0.5 0.2 0.2\n", "", id="float32-rounds-x-into-min"),
    pytest.param("2.00000001 0.5 0.5 0.2 0.2\n", "", id="float32-rounds-class-to-integer"),
    pytest.param("0 -0.00000006 0.1 1.00999994 0.1 0.5 0.5\n", "", id="float32-polygon-width-beyond-max"),
    # polygons are told apart by their float32 bytes: 0 and -0 differ, both rows are kept
    pytest.param("0 0 0.1 0.4 0.1 0.4 0.5\n0 -0 0.1 0.4 0.1 0.4 0.5\n", "", id="negative-zero-polygon-not-a-duplicate"),
]


def _rows(content: bytes) -> int:
    """The rows verify_image_label reads: non-blank lines of the UTF-8 text."""
    return sum(1 for line in content.decode("utf-8-sig").splitlines() if line.strip())


@pytest.mark.parametrize(("content", "stricter"), LABEL_CASES)
def test_label_verdict_matches_verify_image_label(tmp_path: Path, content: str | bytes, stricter: str) -> None:
    """data/utils.py verify_image_label: corrupt exactly when trainyard's _check_label reports problems.

    When both keep the file: trainyard's boxes are the rows Ultralytics keeps, its duplicates the
    rows Ultralytics removes, its polygons Ultralytics' segments, and it notes a tolerated
    coordinate exactly when a kept value lies outside [0, 1] (Ultralytics clips it later).
    """
    raw = content.encode() if isinstance(content, str) else content
    image, label = _label_pair(tmp_path, raw)
    _im, kept, _shape, segments, _kpts, _nm, _nf, _ne, corrupt, msg = _verify_image_label(image, label, NC)
    ours = _check_label(label, "x.txt", NC)

    if stricter:
        assert corrupt == 0, msg
        assert ours.problems, stricter
        return
    assert bool(corrupt) == bool(ours.problems), (msg, ours.problems)
    if corrupt:
        return
    assert ours.boxes == len(kept)
    assert len(ours.duplicates) == _rows(raw) - len(kept), (msg, ours.duplicates)
    assert ours.polygons == len(segments)
    coords = kept[:, 1:]
    assert bool(ours.tolerated) == bool(((coords < 0) | (coords > 1)).any()), ours.tolerated


# --------------------------------------------------------------------------- image verdicts

_AFTER_EOI = (
    "Ultralytics rewrites a JPEG without the end-of-image marker at the end in place (the "
    "'corrupt JPEG restored' message) and trains the re-encoded pixels; trainyard refuses it so "
    "the source data gets re-exported instead of rewritten behind the user's back"
)


def _truncated_jpeg() -> bytes:
    return _encode(_rgb(64, 48), "JPEG")[:-40]


def _bad_png_crc() -> bytes:
    data = bytearray(_encode(_rgb(), "PNG"))
    at = data.index(b"IDAT") + 6  # a byte of the compressed pixel data: the chunk CRC no longer matches
    data[at] ^= 0xFF
    return bytes(data)


def _skip_unless(feature: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not features.check(feature), reason=f"Pillow built without {feature}")


# (file name, bytes builder, why trainyard refuses what Ultralytics keeps or rewrites: "" when both must agree)
IMAGE_CASES = [
    pytest.param("png.png", lambda: _encode(_rgb(), "PNG"), "", id="png"),
    pytest.param("rgba.png", lambda: _encode(_rgb().convert("RGBA"), "PNG"), "", id="rgba-png"),
    pytest.param("jpeg.jpg", lambda: _encode(_rgb(), "JPEG"), "", id="jpeg"),
    pytest.param("upper.JPG", lambda: _encode(_rgb(), "JPEG"), "", id="upper-case-jpg"),
    pytest.param("gray.jpg", lambda: _encode(_rgb().convert("L"), "JPEG"), "", id="grayscale-jpeg"),
    pytest.param("gray.png", lambda: _encode(_rgb().convert("L"), "PNG"), "", id="grayscale-png"),
    pytest.param(
        "deep.png", lambda: _encode(Image.fromarray(np.full((20, 20), 4000, np.uint16)), "PNG"), "", id="16-bit-png"
    ),
    pytest.param("palette.png", lambda: _encode(_rgb().convert("P"), "PNG"), "", id="palette-png"),
    pytest.param("cmyk.jpg", lambda: _encode(_rgb().convert("CMYK"), "JPEG"), "", id="cmyk-jpeg"),
    pytest.param("rotated.jpg", lambda: _with_orientation("JPEG", 40, 20), "", id="exif-rotated-jpeg"),
    pytest.param("rotated_small.jpg", lambda: _with_orientation("JPEG", 40, 9), "", id="exif-rotated-too-small"),
    pytest.param(
        "rotated.webp",
        lambda: _with_orientation("WEBP", 40, 20),
        "",
        id="exif-rotated-webp",
        marks=_skip_unless("webp"),
    ),
    pytest.param("rotated.tif", lambda: _with_orientation("TIFF", 40, 20), "", id="exif-rotated-tiff"),
    pytest.param("webp.webp", lambda: _encode(_rgb(), "WEBP"), "", id="webp", marks=_skip_unless("webp")),
    pytest.param("tiff.tiff", lambda: _encode(_rgb(), "TIFF"), "", id="tiff"),
    pytest.param("bmp.bmp", lambda: _encode(_rgb(), "BMP"), "", id="bmp"),
    pytest.param("mpo.mpo", lambda: _encode(_rgb(), "MPO", save_all=True, append_images=[_rgb()]), "", id="mpo"),
    pytest.param("jp2.jp2", lambda: _encode(_rgb(), "JPEG2000"), "", id="jpeg2000", marks=_skip_unless("jpg_2000")),
    pytest.param("avif.avif", lambda: _encode(_rgb(), "AVIF"), "", id="avif", marks=_skip_unless("avif")),
    pytest.param("png_named.jpg", lambda: _encode(_rgb(), "PNG"), "", id="png-named-jpg"),
    pytest.param("gif_named.jpg", lambda: _encode(_rgb(), "GIF"), "", id="gif-named-jpg"),
    pytest.param("text.jpg", lambda: b"not an image\n", "", id="text-named-jpg"),
    pytest.param("empty.jpg", lambda: b"", "", id="zero-bytes"),
    pytest.param("bad_crc.png", _bad_png_crc, "", id="png-bad-crc"),
    # Pillow (13) cannot decode a JPEG cut short, so Ultralytics' restore raises and it drops the
    # image like trainyard; should a Pillow manage to restore it, trainyard stays stricter.
    pytest.param("truncated.jpg", _truncated_jpeg, _AFTER_EOI, id="truncated-jpeg"),
    pytest.param("after_eoi.jpg", lambda: _encode(_rgb(), "JPEG") + b"\0\0", _AFTER_EOI, id="bytes-after-eoi"),
]


@pytest.mark.parametrize(("name", "build", "stricter"), IMAGE_CASES)
def test_image_verdict_matches_check_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, build: Callable[[], bytes], stricter: str
) -> None:
    """data/utils.py check_image: trainyard's _check_image is None exactly when check_image does not raise.

    Ultralytics runs on a copy: check_image may rewrite a JPEG in place; trainyard never writes.
    """
    data = build()
    path = _write(tmp_path / "ours" / name, data)
    copy = tmp_path / "ultralytics" / name
    copy.parent.mkdir()
    shutil.copyfile(path, copy)

    ours = _trainyard_image(path, monkeypatch)
    accepted, msg = _ultralytics_accepts_image(str(copy))

    assert Path(path).read_bytes() == data  # read-only
    if stricter:
        assert ours is not None, stricter
        assert not accepted or (msg and copy.read_bytes() != data), stricter  # refused, or rewritten
    else:
        assert (ours is None) is accepted, ours
        assert not msg and copy.read_bytes() == data  # nothing rewritten


def test_bytes_after_eoi_are_rewritten_by_ultralytics(tmp_path: Path) -> None:
    """check_image: the JPEG-restore branch trainyard refuses still exists (else drop the _AFTER_EOI case)."""
    copy = _write(tmp_path / "after_eoi.jpg", _encode(_rgb(), "JPEG") + b"\0\0")
    accepted, msg = _ultralytics_accepts_image(copy)
    assert accepted and "corrupt JPEG restored" in msg
    assert Path(copy).read_bytes().endswith(b"\xff\xd9")


def test_range_rules_match_check_cfg() -> None:
    from ultralytics.cfg import CFG_FRACTION_KEYS, CFG_INT_MIN

    from tasks.ultralytics_rules import FRACTION_KEYS, INT_MIN

    assert FRACTION_KEYS == CFG_FRACTION_KEYS
    assert INT_MIN == CFG_INT_MIN


def test_max_stride_is_yolo11s() -> None:
    from ultralytics.nn.tasks import DetectionModel

    assert int(DetectionModel("yolo11n.yaml", nc=3, verbose=False).stride.max()) == rules.MAX_STRIDE
