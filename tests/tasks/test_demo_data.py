"""tasks.demo_data: the generated demo dataset is deterministic, valid and written atomically."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tasks import demo_data
from tasks.demo_data import CLASS_NAMES, DemoSpec, generate_demo_dataset
from tasks.validate import validate_dataset

# Small enough to be quick, big enough to hit the two-object and retry paths.
SPEC = DemoSpec(train_images=12, val_images=5, size=64, max_objects=3, seed=7)


def digests(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_labels(root: Path) -> dict[str, list[tuple[int, float, float, float, float]]]:
    out = {}
    for path in sorted((root / "labels").rglob("*.txt")):
        rows = []
        for line in path.read_text().splitlines():
            c, x, y, w, h = line.split()
            rows.append((int(c), float(x), float(y), float(w), float(h)))
        out[path.relative_to(root).as_posix()] = rows
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "ds", SPEC)


def test_same_spec_gives_byte_identical_files(tmp_path: Path, generated: Path) -> None:
    again = generate_demo_dataset(tmp_path / "other" / "ds", SPEC)
    first, second = digests(generated), digests(again)
    assert len(first) == 1 + 2 * (SPEC.train_images + SPEC.val_images)
    assert first == second


def test_returns_the_destination(tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    assert generate_demo_dataset(dest, DemoSpec(train_images=1, val_images=1, size=32)) == dest
    assert (
        generate_demo_dataset(str(tmp_path / "ds2"), DemoSpec(train_images=1, val_images=1, size=32))
        == tmp_path / "ds2"
    )


def test_different_seed_gives_different_images(tmp_path: Path, generated: Path) -> None:
    other = generate_demo_dataset(tmp_path / "ds", DemoSpec(**{**SPEC.__dict__, "seed": SPEC.seed + 1}))
    first, second = digests(generated), digests(other)
    assert first.keys() == second.keys()
    images = [k for k in first if k.startswith("images/")]
    assert images
    # every image differs, not just one
    assert all(first[k] != second[k] for k in images)
    assert first["data.yaml"] == second["data.yaml"]


def test_layout_and_data_yaml(generated: Path) -> None:
    data = yaml.safe_load((generated / "data.yaml").read_text())
    assert data == {"train": "images/train", "val": "images/val", "names": {0: "circle", 1: "square", 2: "triangle"}}
    for split, count in (("train", SPEC.train_images), ("val", SPEC.val_images)):
        images = sorted(p.name for p in (generated / "images" / split).iterdir())
        labels = sorted(p.name for p in (generated / "labels" / split).iterdir())
        assert images == [f"{split}_{i:04d}.jpg" for i in range(count)]
        assert labels == [f"{split}_{i:04d}.txt" for i in range(count)]
        for name in images:
            with Image.open(generated / "images" / split / name) as im:
                assert im.format == "JPEG"
                assert im.size == (SPEC.size, SPEC.size)
                assert im.mode == "RGB"


def test_generated_dataset_passes_validation(generated: Path) -> None:
    report = validate_dataset(generated)
    assert report.problems == []
    assert report.ok
    assert report.nc == 3
    assert report.names == list(CLASS_NAMES)
    assert set(report.splits) == {"train", "val"}
    assert report.splits["train"].images == SPEC.train_images
    assert report.splits["train"].labels == SPEC.train_images
    assert report.splits["val"].images == SPEC.val_images
    assert report.splits["val"].labels == SPEC.val_images
    # every image carries at least one object
    assert report.splits["train"].backgrounds == 0
    assert report.splits["val"].backgrounds == 0
    assert report.splits["train"].boxes >= SPEC.train_images


def test_default_spec_passes_validation(tmp_path: Path) -> None:
    spec = DemoSpec()
    report = validate_dataset(generate_demo_dataset(tmp_path / "demo", spec))
    assert report.ok, report.problems
    assert report.nc == 3
    assert report.splits["train"].images == spec.train_images == 96
    assert report.splits["val"].images == spec.val_images == 32


def test_boxes_lie_inside_the_image_and_do_not_overlap(generated: Path) -> None:
    labels = read_labels(generated)
    assert len(labels) == SPEC.train_images + SPEC.val_images
    tol = 1e-6  # labels are written with 6 decimals
    counts = set()
    classes = set()
    for name, rows in labels.items():
        assert 1 <= len(rows) <= SPEC.max_objects, name
        counts.add(len(rows))
        corners = []
        for c, x, y, w, h in rows:
            classes.add(c)
            assert 0 <= c < len(CLASS_NAMES), name
            assert w > 0 and h > 0, name
            x1, y1, x2, y2 = x - w / 2, y - h / 2, x + w / 2, y + h / 2
            assert x1 >= -tol and y1 >= -tol and x2 <= 1 + tol and y2 <= 1 + tol, (name, x1, y1, x2, y2)
            corners.append((x1, y1, x2, y2))
        for a, b in itertools.combinations(corners, 2):
            apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            assert apart, (name, a, b)
    # the sample is big enough to exercise more than one object per image and every class
    assert len(counts) > 1
    assert classes == {0, 1, 2}


def test_boxes_stay_inside_over_many_seeds(tmp_path: Path) -> None:
    for seed in range(4):
        root = generate_demo_dataset(tmp_path / f"s{seed}", DemoSpec(train_images=25, val_images=1, size=40, seed=seed))
        for name, rows in read_labels(root).items():
            for _c, x, y, w, h in rows:
                assert x - w / 2 >= -1e-6 and x + w / 2 <= 1 + 1e-6, (seed, name)
                assert y - h / 2 >= -1e-6 and y + h / 2 <= 1 + 1e-6, (seed, name)


def test_shapes_are_drawn_where_the_labels_say(generated: Path) -> None:
    # The centre pixel of every labelled box differs clearly from the mean colour outside all boxes.
    labels = read_labels(generated)
    for name, rows in list(labels.items())[:6]:
        image_path = generated / name.replace("labels/", "images/").replace(".txt", ".jpg")
        pixels = np.asarray(Image.open(image_path).convert("RGB"), dtype=float)
        s = SPEC.size
        mask = np.zeros((s, s), dtype=bool)
        for _c, x, y, w, h in rows:
            mask[int((y - h / 2) * s) : int((y + h / 2) * s) + 1, int((x - w / 2) * s) : int((x + w / 2) * s) + 1] = (
                True
            )
        background = pixels[~mask].mean(axis=0)
        for _c, x, y, _w, _h in rows:
            centre = pixels[int(y * s), int(x * s)]
            assert np.abs(centre - background).sum() > 30, (name, centre, background)


def test_refuses_to_overwrite_an_existing_destination(tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    before = digests(dest)
    with pytest.raises(FileExistsError, match="already exists"):
        generate_demo_dataset(dest, SPEC)
    assert digests(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_refuses_an_existing_empty_directory_or_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileExistsError):
        generate_demo_dataset(empty, SPEC)
    assert list(empty.iterdir()) == []
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(FileExistsError):
        generate_demo_dataset(file, SPEC)
    assert file.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"]


def test_failure_mid_generation_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = demo_data._draw_sample
    calls = []

    def flaky(rng, spec):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk on fire")
        return real(rng, spec)

    monkeypatch.setattr(demo_data, "_draw_sample", flaky)
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "neighbour").write_text("stay")
    dest = parent / "ds"
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_demo_dataset(dest, SPEC)
    assert len(calls) == 5
    assert not dest.exists()
    assert sorted(p.name for p in parent.iterdir()) == ["neighbour"]

    # and a later attempt works and is identical to a clean run
    monkeypatch.setattr(demo_data, "_draw_sample", real)
    generate_demo_dataset(dest, SPEC)
    assert digests(dest) == digests(generate_demo_dataset(tmp_path / "clean", SPEC))


def test_interrupt_mid_generation_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(rng, spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_data, "_draw_sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(tmp_path / "ds", SPEC)
    assert list(tmp_path.iterdir()) == []


def test_creates_missing_parent_directories(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "ds"
    generate_demo_dataset(dest, DemoSpec(train_images=2, val_images=1, size=32))
    assert (dest / "data.yaml").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["ds"]
