"""tasks.validate: a broken dataset is refused with every problem named, file and line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml
from PIL import Image

from tasks.errors import DatasetError
from tasks.validate import (
    SplitStats,
    ensure_valid,
    format_problems,
    validate_dataset,
)

NAMES = ["cat", "dog", "bird"]
# Two boxes per label file, so a fault planted on line 2 has a known line number.
GOOD_LABEL = "0 0.5 0.5 0.2 0.3\n1 0.25 0.25 0.1 0.1\n"


def make_dataset(
    root: Path,
    *,
    n_images: int = 3,
    extra_yaml: dict | None = None,
    size: tuple[int, int] = (32, 32),
) -> Path:
    """A valid dataset: train as JPEG, val as PNG, n_images each, 2 boxes per image."""
    for split, ext, fmt in (("train", "jpg", "JPEG"), ("val", "png", "PNG")):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n_images):
            Image.new("RGB", size, (i * 40, 100, 200)).save(root / "images" / split / f"img_{i:03d}.{ext}", fmt)
            (root / "labels" / split / f"img_{i:03d}.txt").write_text(GOOD_LABEL)
    config = {"path": ".", "train": "images/train", "val": "images/val", "names": list(NAMES)}
    config.update(extra_yaml or {})
    write_yaml(root, config)
    return root


def write_yaml(root: Path, config: dict) -> None:
    (root / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=None))


def set_label_line(root: Path, rel: str, line: str, number: int = 2) -> None:
    path = root / rel
    lines = path.read_text().splitlines()
    while len(lines) < number:
        lines.append("")
    lines[number - 1] = line
    path.write_text("\n".join(lines) + "\n")


def edit_yaml(**changes: object) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        config = yaml.safe_load((root / "data.yaml").read_text())
        for key, value in changes.items():
            if value is _DELETE:
                config.pop(key, None)
            else:
                config[key] = value
        write_yaml(root, config)

    return mutate


_DELETE = object()


def label_line(rel: str, line: str, number: int = 2) -> Callable[[Path], None]:
    return lambda root: set_label_line(root, rel, line, number)


def truncate_jpeg(root: Path) -> None:
    path = root / "images/train/img_001.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path, "JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def raw_write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)

    return mutate


def val_list(text: str) -> Callable[[Path], None]:
    """The val split as a .txt list holding ``text``."""

    def mutate(root: Path) -> None:
        raw_write("val.txt", text)(root)
        edit_yaml(val="val.txt")(root)

    return mutate


def remove(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / rel
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()

    return mutate


def tiny_image(root: Path) -> None:
    Image.new("RGB", (5, 5)).save(root / "images/val/img_002.png", "PNG")


# (id, mutation, expected problem prefix (file[:line]:), text the problem must contain, total problems)
# Each is something Ultralytics would crash on, or silently drop, skip, rewrite or misread.
BROKEN: list[tuple[str, Callable[[Path], None], str, str, int]] = [
    ("no-data-yaml", remove("data.yaml"), "", "no dataset yaml", 1),
    (
        "yaml-syntax",
        raw_write("data.yaml", "train: images/train\nval: [images/val\nnames: [a]\n"),
        "data.yaml:",
        "not valid YAML",
        1,
    ),
    ("yaml-not-mapping", raw_write("data.yaml", "- images/train\n- images/val\n"), "data.yaml:", "not a mapping", 1),
    ("missing-val", edit_yaml(val=_DELETE), "data.yaml:", "required key 'val' is missing", 1),
    ("train-not-string", edit_yaml(train=5), "data.yaml:2:", "train must be a string or a list", 1),
    ("path-not-string", edit_yaml(path=3), "data.yaml:1:", "path must be a string", 1),
    ("path-missing-folder", edit_yaml(path="nowhere"), "data.yaml:1:", "path 'nowhere' is not a folder", 1),
    ("names-empty", edit_yaml(names=[]), "data.yaml:4:", "names is empty", 1),
    ("names-gap", edit_yaml(names={0: "cat", 2: "dog", 3: "bird"}), "data.yaml:4:", "must run 0..2 without gaps", 1),
    ("names-key-twice", edit_yaml(names={0: "cat", "0": "dog", 1: "bird"}), "data.yaml:", "class id 0 given twice", 1),
    (
        "name-not-string",
        edit_yaml(names=["cat", None, "bird"]),
        "data.yaml:",
        "name of class 1 must be a non-empty string",
        1,
    ),
    ("nc-mismatch", edit_yaml(nc=4), "data.yaml:5:", "nc is 4 but names lists 3 classes", 1),
    ("nc-not-integer", edit_yaml(names=_DELETE, nc="three"), "data.yaml:", "nc must be an integer", 1),
    ("split-dir-missing", edit_yaml(val="images/valid"), "data.yaml:3:", "'images/valid' does not exist", 1),
    (
        "split-differs-by-space",
        edit_yaml(val="images/val "),
        "data.yaml:3:",
        "without the surrounding spaces exists",
        1,
    ),
    ("test-dir-missing", edit_yaml(test="images/test"), "data.yaml:5:", "'images/test' does not exist", 1),
    ("split-is-an-image", edit_yaml(test="images/val/img_000.png"), "data.yaml:5:", "is an image file", 1),
    (
        "split-no-images",
        lambda root: [p.unlink() for p in (root / "images/val").iterdir()],
        "data.yaml:3:",
        "val split has no images",
        1,
    ),
    (
        "corrupt-image",
        raw_write("images/train/img_001.jpg", b"this is not a jpeg at all"),
        "images/train/img_001.jpg:",
        "not an image",
        1,
    ),
    (
        "gif-named-jpg",
        lambda root: Image.new("RGB", (32, 32)).save(root / "images/train/img_001.jpg", "GIF"),
        "images/train/img_001.jpg:",
        "is a GIF file; Ultralytics skips that format",
        1,
    ),
    ("zero-byte-image", raw_write("images/val/img_000.png", b""), "images/val/img_000.png:", "empty", 1),
    (
        "dangling-symlink",
        lambda root: (
            (root / "images/val/img_000.png").unlink(),
            (root / "images/val/img_000.png").symlink_to(root / "gone.png"),
        ),
        "images/val/img_000.png:",
        "which does not exist",
        1,
    ),
    ("truncated-jpeg", truncate_jpeg, "images/train/img_001.jpg:", "truncated", 1),
    ("tiny-image", tiny_image, "images/val/img_002.png:", "5x5 pixels", 1),
    (
        "label-4-values",
        label_line("labels/train/img_001.txt", "0 0.5 0.5 0.2"),
        "labels/train/img_001.txt:2:",
        "4 values, expected 5",
        1,
    ),
    (
        "label-6-values",
        label_line("labels/train/img_001.txt", "0 0.5 0.5 0.2 0.2 0.9"),
        "labels/train/img_001.txt:2:",
        "6 values, expected 5",
        1,
    ),
    (
        "label-non-numeric",
        label_line("labels/val/img_000.txt", "0 0.5 abc 0.2 0.3"),
        "labels/val/img_000.txt:2:",
        "'abc' is not a number",
        1,
    ),
    (
        "class-too-big",
        label_line("labels/train/img_002.txt", "5 0.5 0.5 0.2 0.3"),
        "labels/train/img_002.txt:2:",
        "class id 5 >= nc 3 (valid: 0..2)",
        1,
    ),
    (
        "class-negative",
        label_line("labels/train/img_000.txt", "-1 0.5 0.5 0.2 0.3"),
        "labels/train/img_000.txt:2:",
        "class id -1 is negative",
        1,
    ),
    (
        "class-fractional",
        label_line("labels/train/img_000.txt", "1.5 0.5 0.5 0.2 0.3", 1),
        "labels/train/img_000.txt:1:",
        "class id '1.5' is not an integer",
        1,
    ),
    (
        "coord-above-tolerance",
        label_line("labels/val/img_001.txt", "2 1.2 0.5 0.2 0.3"),
        "labels/val/img_001.txt:2:",
        "x_center=1.2 outside [0, 1]",
        1,
    ),
    (
        "coord-just-above-tolerance",
        label_line("labels/val/img_001.txt", "2 1.0101 0.5 0.2 0.3"),
        "labels/val/img_001.txt:2:",
        "x_center=1.0101 outside [0, 1]",
        1,
    ),
    (
        "negative-height",
        label_line("labels/val/img_001.txt", "2 0.5 0.5 0.2 -0.003"),
        "labels/val/img_001.txt:2:",
        "height=-0.003 outside [0, 1]",
        1,
    ),
    (
        "coord-nan",
        label_line("labels/val/img_001.txt", "2 0.5 nan 0.2 0.3"),
        "labels/val/img_001.txt:2:",
        "y_center=nan not a finite number",
        1,
    ),
    (
        "coord-inf",
        label_line("labels/val/img_001.txt", "2 0.5 0.5 inf 0.3"),
        "labels/val/img_001.txt:2:",
        "width=inf not a finite number",
        1,
    ),
    (
        "zero-width-box",
        label_line("labels/train/img_001.txt", "1 0.5 0.5 0 0.3"),
        "labels/train/img_001.txt:2:",
        "zero-size box",
        1,
    ),
    (
        "tiny-height-box",
        label_line("labels/train/img_001.txt", "1 0.5 0.5 0.2 0.0000001"),
        "labels/train/img_001.txt:2:",
        "zero-size box",
        1,
    ),
    (
        "boxes-and-polygons-mixed",
        label_line("labels/train/img_002.txt", "0 0.1 0.1 0.9 0.1 0.9 0.9"),
        "labels/train/img_002.txt:1:",
        "a box row in a file with polygon rows (line 2)",
        1,
    ),
    (
        "polygon-odd-coordinates",
        raw_write("labels/train/img_002.txt", "0 0.1 0.1 0.9 0.1 0.9 0.9 0.5\n"),
        "labels/train/img_002.txt:1:",
        "polygon with 7 coordinates",
        1,
    ),
    (
        "label-is-a-folder",
        lambda root: ((root / "labels/val/img_001.txt").unlink(), (root / "labels/val/img_001.txt").mkdir()),
        "labels/val/img_001.txt:",
        "is a folder, not a label file",
        1,
    ),
    (
        "labels-where-ultralytics-never-looks",
        lambda root: (root / "labels/val/img_002.txt").rename(root / "images/val/img_002.txt"),
        "images/val/img_002.png:",
        "but Ultralytics reads labels/val/img_002.txt",
        1,
    ),
    ("val-without-boxes", remove("labels/val"), "data.yaml:3:", "the val split has no boxes at all", 1),
    (
        "orphan-label",
        raw_write("labels/train/ghost.txt", GOOD_LABEL),
        "labels/train/ghost.txt:",
        "label file without a matching image",
        1,
    ),
    (
        "two-images-one-label",
        lambda root: Image.new("RGB", (32, 32)).save(root / "images/train/img_000.png"),
        "images/train/img_000.png:",
        "shares label file",
        1,
    ),
    (
        "label-not-text",
        raw_write("labels/train/img_000.txt", b"\xff\xfe\x00\x81garbage"),
        "labels/train/img_000.txt:",
        "not a UTF-8 text file",
        1,
    ),
    (
        "duplicate-yaml-key",
        raw_write("data.yaml", "train: images/train\nval: images/val\nnames: [a, b, c]\nval: images/val\n"),
        "data.yaml:4:",
        "key 'val' given twice",
        1,
    ),
    (
        "list-line-relative-to-cwd",
        val_list("images/val/img_000.png\n"),
        "val.txt:1:",
        "relative to the working directory",
        1,
    ),
    (
        "list-line-not-an-image",
        val_list("./images/val/img_000.png\n./notes.md\n"),
        "val.txt:2:",
        "is not an image path",
        1,
    ),
    (
        "list-line-trailing-space",
        val_list("./images/val/img_000.png \n./images/val/img_001.png\n"),
        "val.txt:1:",
        "has spaces around the path",
        1,
    ),
    (
        "list-image-missing",
        val_list("./images/val/img_000.png\n./images/val/gone.png\n"),
        "images/val/gone.png:",
        "listed image does not exist",
        1,
    ),
]


def test_strict_makes_a_missing_label_an_error(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "labels/val/img_002.txt").unlink()
    assert validate_dataset(root).ok
    report = validate_dataset(root, strict=True)
    assert report.problems == [
        "images/val/img_002.png: no label file labels/val/img_002.txt (validate.strict is "
        "on; add an empty labels/val/img_002.txt to mark a background image)"
    ]


def test_valid_dataset_is_ok_with_correct_counts(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "labels/train/img_002.txt").write_text("")  # an empty label file = background
    report = validate_dataset(root)
    assert report.problems == [] and report.warnings == []
    assert report.ok
    assert report.nc == 3
    assert report.names == NAMES
    assert report.splits == {
        "train": SplitStats(images=3, labels=3, boxes=4, backgrounds=1),
        "val": SplitStats(images=3, labels=3, boxes=6, backgrounds=0),
    }
    assert ensure_valid(root) == report
    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["root"] == str(root) and summary["yaml"] == "data.yaml"
    assert summary["splits"]["train"] == {
        "images": 3,
        "labels": 3,
        "boxes": 4,
        "backgrounds": 1,
        "missing_labels": 0,
        "polygons": 0,
        "duplicates": 0,
    }
    assert summary["problem_count"] == 0 and summary["problems"] == []


def test_names_as_mapping_and_matching_nc_are_accepted(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", extra_yaml={"names": {0: "cat", 1: "dog", 2: "bird"}, "nc": 3})
    report = validate_dataset(root)
    assert report.ok, report.problems
    assert report.names == NAMES and report.nc == 3


@pytest.mark.parametrize(
    ("mutate", "prefix", "text", "count"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_dataset_is_reported(
    tmp_path: Path, mutate: Callable[[Path], None], prefix: str, text: str, count: int
) -> None:
    root = make_dataset(tmp_path / "ds")
    mutate(root)
    report = validate_dataset(root)
    assert not report.ok
    matching = [p for p in report.problems if p.startswith(prefix) and text in p]
    assert matching, f"no problem starting {prefix!r} containing {text!r} in {report.problems}"
    assert len(report.problems) == count, report.problems

    with pytest.raises(DatasetError) as info:
        ensure_valid(root)
    assert info.value.problems == report.problems
    assert matching[0] in str(info.value)


def test_catalogue_covers_distinct_faults() -> None:
    assert len({case[3] for case in BROKEN}) >= 40


def test_all_problems_are_listed_not_just_the_first(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    set_label_line(root, "labels/train/img_002.txt", "5 0.5 0.5 0.2 0.3")
    (root / "images/val/img_001.png").write_bytes(b"\x89PNG broken")
    (root / "labels/val/img_002.txt").unlink()
    (root / "labels/val/img_002.txt").mkdir()
    edit_yaml(nc=7)(root)

    report = validate_dataset(root)
    assert len(report.problems) == 4, report.problems
    starts = sorted(p.split(" ", 1)[0] for p in report.problems)
    assert starts == [
        "data.yaml:5:",
        "images/val/img_001.png:",
        "labels/train/img_002.txt:2:",
        "labels/val/img_002.txt:",
    ]
    with pytest.raises(DatasetError) as info:
        ensure_valid(root)
    message = str(info.value)
    assert message.splitlines()[0] == f"dataset {root} has 4 problems (nothing was trained):"
    for problem in report.problems:
        assert f"\n  {problem}" in message
    assert "more problem" not in message


def test_long_problem_lists_are_cut_after_max_listed(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n_images=25)
    for i in range(25):
        set_label_line(root, f"labels/train/img_{i:03d}.txt", "9 0.5 0.5 0.2 0.3")

    report = validate_dataset(root)
    assert len(report.problems) == 25  # the report always keeps everything

    with pytest.raises(DatasetError) as info:
        ensure_valid(root, max_listed=5)
    lines = str(info.value).splitlines()
    assert lines[0] == f"dataset {root} has 25 problems (nothing was trained):"
    assert lines[1:6] == [f"  {p}" for p in report.problems[:5]]
    assert len(lines) == 7
    assert lines[-1].endswith("... and 20 more problems")
    assert len(info.value.problems) == 25

    with pytest.raises(DatasetError) as default:
        ensure_valid(root)
    assert str(default.value).endswith("... and 5 more problems")


def test_format_problems_counts_the_rest() -> None:
    problems = [f"labels/train/x.txt:{i}: bad" for i in range(1, 4)]
    assert format_problems(problems, max_listed=3) == "\n".join(f"  {p}" for p in problems)
    text = format_problems(problems, max_listed=2)
    assert text.splitlines() == [f"  {problems[0]}", f"  {problems[1]}", "  ... and 1 more problem"]
    assert format_problems([], max_listed=5) == ""


def test_images_without_label_files_train_as_backgrounds_with_a_warning(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "labels/val/img_001.txt").unlink()
    (root / "labels/train/img_000.txt").unlink()
    report = validate_dataset(root)
    assert report.ok, report.problems
    assert report.splits["val"] == SplitStats(images=3, labels=2, boxes=4, backgrounds=1, missing_labels=1)
    assert report.splits["train"] == SplitStats(images=3, labels=2, boxes=4, backgrounds=1, missing_labels=1)
    assert report.warnings == [
        "train: 1 of 3 images (33.3 %) have no label file and train as background images, as in Ultralytics "
        "(set validate.strict: true to refuse this)",
        "val: 1 of 3 images (33.3 %) have no label file and train as background images, as in Ultralytics "
        "(set validate.strict: true to refuse this)",
    ]


def test_train_split_without_any_box_is_refused(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    for label in (root / "labels/train").iterdir():
        label.unlink()
    report = validate_dataset(root)
    assert len(report.problems) == 1
    assert report.problems[0].startswith("data.yaml:2:") and "no boxes at all (nothing to learn)" in report.problems[0]


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.stat()
            content = path.read_bytes() if path.is_file() else b""
            snap[str(path.relative_to(root))] = (st.st_mtime_ns, st.st_size, content)
    return snap


def test_validation_never_writes_into_the_dataset(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    truncate_jpeg(root)  # Ultralytics would "restore" this file in place
    set_label_line(root, "labels/train/img_000.txt", "0 0.5 0.5 0.2 0.3", 3)  # duplicate box
    (root / "labels/val/img_002.txt").unlink()
    (root / "images/val/img_001.png").write_bytes(b"")
    before = _snapshot(root)
    root_mtime = root.stat().st_mtime_ns

    assert not validate_dataset(root).ok
    with pytest.raises(DatasetError):
        ensure_valid(str(root))

    assert _snapshot(root) == before
    assert root.stat().st_mtime_ns == root_mtime


def test_missing_dataset_directory_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    report = validate_dataset(tmp_path / "nope")
    assert not report.ok and len(report.problems) == 1
    assert "does not exist" in report.problems[0]
    with pytest.raises(DatasetError):
        ensure_valid(tmp_path / "nope")


def test_images_in_subdirectories_and_uppercase_extensions_are_found(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "images/train/sub").mkdir()
    (root / "labels/train/sub").mkdir()
    Image.new("RGB", (32, 32)).save(root / "images/train/sub/extra.JPG", "JPEG")
    report = validate_dataset(root, strict=True)
    # the nested image needs labels/train/sub/extra.txt, exactly as Ultralytics looks for it
    assert report.problems == [
        "images/train/sub/extra.JPG: no label file labels/train/sub/extra.txt (validate.strict is on; add an empty "
        "labels/train/sub/extra.txt to mark a background image)"
    ]
    (root / "labels/train/sub/extra.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    report = validate_dataset(root)
    assert report.ok, report.problems
    assert report.splits["train"].images == 4 and report.splits["train"].boxes == 7


def test_module_imports_no_heavy_dependencies() -> None:
    code = (
        "import sys, tasks.validate\n"
        "heavy = {'ultralytics', 'torch', 'mlflow', 'prefect', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_clean_verdict_is_remembered_per_data_version(tmp_path: Path) -> None:
    from tasks.validate import validate_cached

    root = make_dataset(tmp_path / "ds")
    cache = tmp_path / "validated"
    first = validate_cached(root, version="abc.dir", cache_dir=cache)
    assert first.ok and not first.cached
    (root / "images/val/img_000.png").write_bytes(b"")  # a later edit under the same version is not re-read ...
    second = validate_cached(root, version="abc.dir", cache_dir=cache)
    assert second.cached and second.splits == first.splits
    # ... but a new version, or other options, are: a staged copy never changes under its md5
    with pytest.raises(DatasetError, match="image file is empty"):
        validate_cached(root, version="def.dir", cache_dir=cache)
    with pytest.raises(DatasetError, match="image file is empty"):
        validate_cached(root, version="abc.dir", cache_dir=cache, strict=True)
    assert len(list(cache.glob("*.json"))) == 1  # a broken verdict is never stored


def test_the_dataset_yaml_can_have_any_name_but_must_be_one(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "data.yaml").rename(root / "shapes.yaml")
    assert validate_dataset(root).ok and validate_dataset(root).yaml == "shapes.yaml"
    (root / "other.yml").write_text("train: images/val\nval: images/val\nnames: [a, b, c]\n")
    report = validate_dataset(root)
    assert report.problems == [
        f"{root}: 2 dataset yamls (other.yml, shapes.yaml); point data.source at the one to "
        f"train, e.g. {root / 'other.yml'}"
    ]
    assert validate_dataset(root / "other.yml").ok


def test_worker_processes_report_exactly_what_one_process_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.validate as validate_mod

    root = make_dataset(tmp_path / "ds", n_images=12)
    set_label_line(root, "labels/train/img_003.txt", "7 0.5 0.5 0.2 0.3")
    (root / "images/val/img_005.png").write_bytes(b"")
    (root / "labels/val/img_006.txt").unlink()
    serial = validate_dataset(root)
    monkeypatch.setattr(validate_mod, "PARALLEL_MIN_IMAGES", 1)
    parallel = validate_dataset(root)
    assert parallel == serial and len(serial.problems) == 2 and len(serial.warnings) == 1
