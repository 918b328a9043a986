"""The layouts real datasets come in: each must validate, stage into a self-contained copy, and
give Ultralytics' own dataset loader, on the staged training yaml, exactly the images and boxes
trainyard counted (no corrupt file, nothing dropped).

Every layout here is one that Ultralytics trains (that is the last check of each case).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image, features

from tasks.stage import source_spec, stage_dataset
from tasks.stage_cache import StageCache
from tasks.validate import validate_dataset

NAMES = ["cat", "dog", "bird"]
BOX = "0 0.5 0.5 0.4 0.4\n1 0.3 0.3 0.2 0.2\n"  # 2 boxes


def image(path: Path, fmt: str = "JPEG", mode: str = "RGB", size: tuple[int, int] = (48, 32), **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    im.save(path, fmt, **save)
    return path


def text(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def dump(path: Path, config: dict) -> Path:
    return text(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def standard(
    root: Path,
    n: int = 2,
    ext: str = "jpg",
    fmt: str = "JPEG",
    label: str = BOX,
    splits: tuple[str, ...] = ("train", "val"),
    **img: object,
) -> None:
    for split in splits:
        for i in range(n):
            image(root / "images" / split / f"im{i}.{ext}", fmt, **img)  # type: ignore[arg-type]
            text(root / "labels" / split / f"im{i}.txt", label)


@dataclass(frozen=True)
class Layout:
    id: str
    build: Callable[[Path], Path]  # writes the dataset under the folder, returns data.source
    images: dict[str, int]
    boxes: dict[str, int] | None = None  # default: 2 per image
    warnings: tuple[str, ...] = field(default=())


def _yaml(**config: object) -> dict:
    return {"train": "images/train", "val": "images/val", "names": NAMES, **config}


def basic(**config: object) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        standard(root)
        dump(root / "data.yaml", _yaml(**config))
        return root

    return build


def roboflow(root: Path) -> Path:
    for split in ("train", "valid", "test"):
        for i in range(2):
            image(root / split / "images" / f"im{i}_jpg.rf.{i}abc.jpg")
            text(root / split / "labels" / f"im{i}_jpg.rf.{i}abc.txt", BOX)
    dump(
        root / "data.yaml",
        {
            "train": "../train/images",
            "val": "../valid/images",
            "test": "../test/images",
            "nc": 3,
            "names": NAMES,
            "roboflow": {
                "workspace": "w",
                "project": "p",
                "version": 1,
                "license": "CC BY 4.0",
                "url": "https://universe.roboflow.com/w/p/dataset/1",
            },
        },
    )
    text(root / "README.roboflow.txt", "exported")
    return root


def coco_lists(absolute: bool) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        for split in ("train2017", "val2017"):
            lines = []
            for i in range(3):
                image(root / "images" / split / f"{i:012d}.jpg")
                text(root / "labels" / split / f"{i:012d}.txt", BOX)
                lines.append(
                    str(root / "images" / split / f"{i:012d}.jpg") if absolute else f"./images/{split}/{i:012d}.jpg"
                )
            text(root / f"{split}.txt", "\n".join(lines) + "\n")
        image(root / "images" / "train2017" / "unlisted.jpg")  # COCO folders hold more than a list names
        dump(
            root / "coco.yaml",
            {
                "path": str(root) if absolute else ".",
                "train": "train2017.txt",
                "val": "val2017.txt",
                "names": dict(enumerate(NAMES)),
                "download": "python download_coco.py",
            },
        )
        return root

    return build


def outside_data(kind: str) -> Callable[[Path], Path]:
    """The yaml lives with the code; the data is elsewhere (a NAS mount)."""

    def build(root: Path) -> Path:
        data = root / "nas" / "coco"
        standard(data)
        config = root / "project" / "configs"
        if kind == "path":
            dump(config / "data.yaml", _yaml(path=str(data)))
        elif kind == "relative-dirs":
            dump(
                config / "data.yaml",
                _yaml(train="../../nas/coco/images/train", val="../../nas/coco/images/val", path="."),
            )
        else:  # absolute list lines under path:
            lines = "\n".join(str(p) for p in sorted((data / "images" / "train").iterdir()))
            text(config / "train.txt", lines + "\n")
            dump(config / "data.yaml", _yaml(path=str(data), train=str(config / "train.txt")))
        return config

    return build


def lists_of(root: Path) -> Path:
    standard(root, splits=("train", "extra", "val"))
    text(root / "more.txt", "./images/extra/im0.jpg\n")
    dump(root / "data.yaml", _yaml(train=["images/train", "images/extra"], val=["images/val"]))
    return root


def mixed_list(root: Path) -> Path:
    standard(root, splits=("train", "extra", "val"))
    text(root / "extra.txt", "./images/extra/im0.jpg\n./images/extra/im1.jpg\n")
    dump(root / "data.yaml", _yaml(train=["images/train", "extra.txt"]))
    return root


def formats(root: Path) -> Path:
    kinds = [
        ("bmp", "BMP", {}),
        ("png", "PNG", {}),
        ("jpg", "JPEG", {}),
        ("jpeg", "JPEG", {}),
        ("tif", "TIFF", {}),
        ("tiff", "TIFF", {}),
        ("webp", "WEBP", {}),
        ("JPG", "JPEG", {}),
        ("PNG", "PNG", {}),
        ("mpo", "JPEG", {}),
    ]
    if features.check("avif"):
        kinds.append(("avif", "AVIF", {}))
    if features.check("jpg_2000"):
        kinds.append(("jp2", "JPEG2000", {}))
    for i, (ext, fmt, save) in enumerate(kinds):
        image(root / "images/train" / f"f{i}.{ext}", fmt, **save)
        text(root / "labels/train" / f"f{i}.txt", BOX)
    standard(root, splits=("val",))
    dump(root / "data.yaml", _yaml())
    return root


def pixel_kinds(root: Path) -> Path:
    image(root / "images/train/gray.png", "PNG", mode="L")
    image(root / "images/train/sixteen.png", "PNG", mode="I;16")
    image(root / "images/train/palette.png", "PNG", mode="P")
    image(root / "images/train/cmyk.jpg", "JPEG", mode="CMYK")
    image(root / "images/train/rgba.png", "PNG", mode="RGBA")
    exif = Image.Exif()
    exif[274] = 6  # rotated 90 degrees: Ultralytics swaps width and height
    image(root / "images/train/rotated.jpg", "JPEG", exif=exif.tobytes())
    for name in ("gray", "sixteen", "palette", "cmyk", "rgba", "rotated"):
        text(root / "labels/train" / f"{name}.txt", BOX)
    standard(root, splits=("val",))
    dump(root / "data.yaml", _yaml())
    return root


def odd_names(root: Path) -> Path:
    for name in ["a photo 1", "Ünïcødé_猫", "dots.in.name", "ends-with-space "]:
        image(root / "images/train" / f"{name}.jpg")
        text(root / "labels/train" / f"{name}.txt", BOX)
    standard(root, splits=("val",))
    dump(root / "data.yaml", _yaml())
    return root


def label_text(content: str | bytes, boxes: int = 2) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        standard(root)
        text(root / "labels/train/im0.txt", content)
        dump(root / "data.yaml", _yaml())
        return root

    return build


def without_labels(root: Path) -> Path:
    standard(root, n=4)
    (root / "labels/train/im3.txt").unlink()
    text(root / "labels/train/im2.txt", "")
    dump(root / "data.yaml", _yaml())
    return root


def beside(root: Path) -> Path:
    """No images/ folder: Ultralytics reads x.txt beside x.jpg."""
    for split in ("train", "val"):
        for i in range(2):
            image(root / split / f"im{i}.jpg")
            text(root / split / f"im{i}.txt", BOX)
    dump(root / "data.yaml", _yaml(train="train", val="val"))
    return root


def yaml_named(name: str, other: str | None = None) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        standard(root)
        dump(root / name, _yaml())
        if other:
            dump(root / other, {"lr0": 0.01, "epochs": 3})  # a config yaml, not a dataset
        return root

    return build


def point_at_file(root: Path) -> Path:
    standard(root)
    dump(root / "small.yaml", _yaml(train="images/val"))
    dump(root / "full.yaml", _yaml())
    return root / "full.yaml"


def sub_path(root: Path) -> Path:
    standard(root / "dataset")
    dump(root / "data.yaml", _yaml(path="dataset"))
    return root


def yaml_in_subfolder(root: Path) -> Path:
    standard(root)
    dump(root / "cfg" / "data.yaml", _yaml(path=".."))
    return root / "cfg" / "data.yaml"


def list_quirks(root: Path) -> Path:
    standard(root, n=3)
    text(
        root / "train.txt",
        b"\xef\xbb\xbf./images/train/im0.jpg\r\n./images/train/im1.jpg\r\n\r\n"
        b"./images/train/im2.jpg\r\n./images/train/im0.jpg\r\n",
    )
    dump(root / "data.yaml", _yaml(train="train.txt"))
    return root


def stray(root: Path) -> Path:
    standard(root)
    text(root / "images/train/classes.txt", "cat\ndog\nbird\n")
    text(root / "images/train/notes.md", "x")
    text(root / "labels/train.cache.bak", "x")
    dump(root / "data.yaml", _yaml())
    return root


LAYOUTS: list[Layout] = [
    Layout("standard", basic(), {"train": 2, "val": 2}),
    Layout("names-dict-int-keys", basic(names={0: "cat", 1: "dog", 2: "bird"}), {"train": 2, "val": 2}),
    Layout("names-dict-string-keys", basic(names={"0": "cat", "1": "dog", "2": "bird"}), {"train": 2, "val": 2}),
    Layout("names-out-of-order-keys", basic(names={2: "bird", 0: "cat", 1: "dog"}), {"train": 2, "val": 2}),
    Layout("names-numbers", basic(names=[1, 2, 3]), {"train": 2, "val": 2}),
    Layout("nc-only", basic(names=None, nc=3), {"train": 2, "val": 2}, warnings=("class_0..class_2",)),
    Layout("nc-and-names", basic(nc=3), {"train": 2, "val": 2}),
    Layout("nc-as-string", basic(nc="3"), {"train": 2, "val": 2}),
    Layout(
        "extra-keys",
        basic(description="shapes", download="https://x/y.zip", roboflow={"a": 1}),
        {"train": 2, "val": 2},
        warnings=("key 'description' ignored",),
    ),
    Layout(
        "validation-key",
        basic(val=None, validation="images/val"),
        {"train": 2, "val": 2},
        warnings=("'validation:' used as 'val:'",),
    ),
    Layout(
        "test-split",
        lambda root: (
            (standard(root, splits=("train", "val", "test")), dump(root / "data.yaml", _yaml(test="images/test")))[
                -1
            ].parent
        ),
        {"train": 2, "val": 2, "test": 2},
    ),
    Layout("test-empty", basic(test=""), {"train": 2, "val": 2}),
    Layout("path-dot", basic(path="."), {"train": 2, "val": 2}),
    Layout(
        "path-absolute-self",
        lambda root: (standard(root), dump(root / "data.yaml", _yaml(path=str(root))))[-1].parent,
        {"train": 2, "val": 2},
    ),
    Layout("path-relative-subfolder", sub_path, {"train": 2, "val": 2}),
    Layout("yaml-in-subfolder-path-up", yaml_in_subfolder, {"train": 2, "val": 2}),
    Layout("yaml-any-name", yaml_named("shapes-v2.yml"), {"train": 2, "val": 2}),
    Layout("yaml-beside-config-yaml", yaml_named("data.yaml", other="hyp.yaml"), {"train": 2, "val": 2}),
    Layout("source-is-the-yaml", point_at_file, {"train": 2, "val": 2}),
    Layout("roboflow-export", roboflow, {"train": 2, "val": 2, "test": 2}, warnings=("key 'roboflow' ignored",)),
    Layout("coco-txt-lists-relative", coco_lists(absolute=False), {"train": 3, "val": 3}),
    Layout("coco-txt-lists-absolute", coco_lists(absolute=True), {"train": 3, "val": 3}),
    Layout("data-outside-by-path", outside_data("path"), {"train": 2, "val": 2}),
    Layout("data-outside-by-relative-dirs", outside_data("relative-dirs"), {"train": 2, "val": 2}),
    Layout("data-outside-absolute-list", outside_data("list"), {"train": 2, "val": 2}),
    Layout("split-list-of-dirs", lists_of, {"train": 4, "val": 2}),
    Layout("split-dir-plus-txt", mixed_list, {"train": 4, "val": 2}),
    Layout(
        "nested-subfolders",
        lambda root: (
            (
                standard(root),
                image(root / "images/train/a/b/deep.jpg"),
                text(root / "labels/train/a/b/deep.txt", BOX),
                dump(root / "data.yaml", _yaml()),
            )[-1].parent
        ),
        {"train": 3, "val": 2},
    ),
    Layout("all-image-formats", formats, {"train": 10 + features.check("avif") + features.check("jpg_2000"), "val": 2}),
    Layout("pixel-kinds-exif-gray-16bit-palette-cmyk", pixel_kinds, {"train": 6, "val": 2}),
    Layout("spaces-and-unicode-names", odd_names, {"train": 4, "val": 2}),
    Layout("labels-crlf", label_text("0 0.5 0.5 0.4 0.4\r\n1 0.3 0.3 0.2 0.2\r\n"), {"train": 2, "val": 2}),
    Layout("labels-bom", label_text(b"\xef\xbb\xbf0 0.5 0.5 0.4 0.4\n1 0.3 0.3 0.2 0.2\n"), {"train": 2, "val": 2}),
    Layout(
        "labels-tabs-and-blank-lines",
        label_text("\n0\t0.5\t0.5\t0.4\t0.4\n\n  1 0.3 0.3 0.2 0.2  \n\n"),
        {"train": 2, "val": 2},
    ),
    Layout("labels-no-final-newline", label_text("0 0.5 0.5 0.4 0.4\n1 0.3 0.3 0.2 0.2"), {"train": 2, "val": 2}),
    Layout(
        "labels-within-tolerance",
        label_text("0 1.005 0.5 0.4 0.4\n1 -0.005 0.3 0.2 0.2\n"),
        {"train": 2, "val": 2},
        warnings=("within Ultralytics' 1 % tolerance",),
    ),
    Layout(
        "polygon-labels",
        label_text("0 0.1 0.1 0.6 0.1 0.6 0.5 0.1 0.5\n2 0.5 0.5 0.9 0.5 0.7 0.9\n"),
        {"train": 2, "val": 2},
        warnings=("2 segmentation polygons converted",),
    ),
    Layout(
        "duplicate-rows",
        label_text("0 0.5 0.5 0.4 0.4\n0 0.5 0.5 0.4 0.4\n1 0.3 0.3 0.2 0.2\n"),
        {"train": 2, "val": 2},
        warnings=("1 repeated label row",),
    ),
    Layout(
        "backgrounds-missing-and-empty",
        without_labels,
        {"train": 4, "val": 4},
        boxes={"train": 4, "val": 8},
        warnings=("1 of 4 images (25.0 %) have no label file",),
    ),
    Layout("labels-beside-images", beside, {"train": 2, "val": 2}),
    Layout(
        "val-same-as-train",
        basic(val="images/train"),
        {"train": 2, "val": 2},
        warnings=("val names the same images as train",),
    ),
    Layout("txt-list-bom-crlf-repeat", list_quirks, {"train": 3, "val": 3}, warnings=("lists 1 image more than once",)),
    Layout("stray-files", stray, {"train": 2, "val": 2}, warnings=("2 files in the train folder are not images",)),
]


def _ultralytics_counts(training_yaml: Path) -> dict[str, tuple[int, int]]:
    """(distinct images, their boxes) per split, as Ultralytics' own loader reads the training yaml.

    Its loader keeps only images whose image and label passed verify_image_label, so a file it
    would drop shows up as a smaller count.
    """
    from ultralytics.data.dataset import YOLODataset

    data = yaml.safe_load(training_yaml.read_text())
    config = {"names": data["names"], "nc": data["nc"], "channels": 3}
    out = {}
    for split in ("train", "val", "test"):
        if split not in data:
            continue
        ds = YOLODataset(img_path=data[split], data=config, task="detect", augment=False, imgsz=64, cache=False)
        boxes = {label["im_file"]: len(label["cls"]) for label in ds.labels}
        out[split] = (len(boxes), sum(boxes.values()))
    return out


def test_catalogue_is_large_and_distinct() -> None:
    assert len(LAYOUTS) >= 40
    assert len({layout.id for layout in LAYOUTS}) == len(LAYOUTS)


@pytest.mark.parametrize("layout", LAYOUTS, ids=[layout.id for layout in LAYOUTS])
def test_layout_validates_stages_and_loads_in_ultralytics(tmp_path: Path, layout: Layout) -> None:
    source = layout.build(tmp_path / "src")
    report = validate_dataset(source)
    assert report.ok, report.problems
    assert {k: v.images for k, v in report.splits.items()} == layout.images
    boxes = layout.boxes or {k: 2 * n for k, n in layout.images.items()}
    assert {k: v.boxes for k, v in report.splits.items()} == boxes
    for expected in layout.warnings:
        assert any(expected in w for w in report.warnings), (expected, report.warnings)

    staged = stage_dataset(source_spec(str(source), base_dir=tmp_path), StageCache(tmp_path / "cache"))
    copy = validate_dataset(staged.yaml_path, confine=True)  # self-contained: nothing outside the copy
    assert copy.ok, copy.problems
    assert {k: (v.images, v.boxes) for k, v in copy.splits.items()} == {
        k: (v.images, v.boxes) for k, v in report.splits.items()
    }

    training_yaml = staged.training_yaml(tmp_path / "run" / "data.yaml")
    data = yaml.safe_load(training_yaml.read_text())
    for split in report.splits:
        for entry in data[split] if isinstance(data[split], list) else [data[split]]:
            assert Path(entry).is_relative_to(staged.path), (split, entry)
    loaded = _ultralytics_counts(training_yaml)
    assert loaded == {k: (v.images, v.boxes) for k, v in report.splits.items()}
