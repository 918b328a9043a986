"""What to stage for a local dataset whose yaml reaches outside its folder or uses absolute paths.

Most datasets are self-contained: every split lies inside the folder and is named by a
relative path, so the folder is staged as it is and its hash is its DVC md5. Real ones
often are not: COCO-style ``train2017.txt`` lists with absolute paths, ``path: /mnt/nas/coco``
beside a yaml kept with the code, splits in ``../other/images``. Training must still read
only the staged copy, so such a dataset is staged as a self-contained copy:

    <copy>/...                       the folder, as it is
    <copy>/_external/<name>/...      each outside tree the splits use (only the images they
                                     name and their label files), keeping images/ -> labels/
    <copy>/_trainyard_<split>.txt    every image of the split, ./-relative, in Ultralytics' order
    <copy>/<the yaml>                rewritten: no path:, each split names its list

Its hash covers exactly this copy. A path outside every root the yaml declares (the folder,
``path:``, a split folder) is refused before anything is copied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tasks.dataset_yaml import DatasetConfig, inside, read_dataset_yaml, read_image_list, split_dir_files
from tasks.errors import DataSourceError
from tasks.ultralytics_rules import has_image_suffix, label_path, list_line_path

EXTERNAL_DIR = "_external"
SPLIT_LIST = "_trainyard_{split}.txt"


@dataclass(frozen=True)
class LocalPlan:
    """Files to add to the staged folder and files of it to replace."""

    external: list[tuple[str, str]]  # (absolute source file, relpath in the copy)
    rewrites: dict[str, bytes] = field(default_factory=dict)  # relpath in the copy -> new content

    @property
    def notes(self) -> tuple[str, ...]:
        rewritten = ", ".join(sorted(self.rewrites))
        outside = (
            f" and {len(self.external)} files from outside the folder under {EXTERNAL_DIR}/" if self.external else ""
        )
        return (
            f"the dataset uses absolute paths or files outside its folder: the staged copy holds them{outside}, "
            f"with {rewritten} written to point inside the copy",
        )


def plan_local(folder: Path, yaml_rel: str) -> LocalPlan | None:
    """None when ``folder`` is self-contained; else what makes its staged copy so.

    A yaml that cannot be read is left to validation (which names every problem); paths
    that escape every declared root raise DataSourceError.
    """
    problems: list[str] = []
    config = read_dataset_yaml(folder / yaml_rel, problems)
    if config is None:
        return None
    base = os.path.normpath(os.path.abspath(folder))
    splits = {split: _split_images(config, split) for split in config.splits}
    if _self_contained(config, base, splits):
        return None
    roots = [base, os.path.normpath(str(config.root))] + [
        e.path for es in config.splits.values() for e in es if os.path.isdir(e.path)
    ]
    names: dict[str, str] = {}
    external: dict[str, str] = {}
    rewrites: dict[str, bytes] = {}
    lists: dict[str, str] = {}
    for split, (images, _absolute) in splits.items():
        lines = []
        for image in images:
            if not any(inside(image, root) for root in roots):
                raise DataSourceError(
                    f"{config.yaml_path}: {split} names {image}, outside every folder the yaml "
                    f"declares ({', '.join(sorted(set(roots)))}); refusing to stage it (valid: "
                    f"images under the dataset folder, path: or a split folder)"
                )
            rel = _copy_rel(image, base, names)
            if not inside(image, base):
                external[image] = rel
                label = label_path(image)
                if os.path.isfile(label):
                    external[label] = _copy_rel(label, base, names, anchor_of=image)
            lines.append(f"./{rel}")
        name = SPLIT_LIST.format(split=split)
        rewrites[name] = ("\n".join(lines) + "\n").encode()
        lists[split] = name
    data = {k: v for k, v in config.data.items() if k not in ("path", "validation")}
    data.update(lists)
    rewrites[config.yaml_path.relative_to(folder).as_posix()] = yaml.safe_dump(
        data, sort_keys=False, allow_unicode=True
    ).encode()
    return LocalPlan(external=sorted(external.items()), rewrites=rewrites)


def _split_images(config: DatasetConfig, split: str) -> tuple[list[str], bool]:
    """get_img_files, leniently (what exists: validation of the staged copy names what does not),
    and whether a list of the split names images by absolute path."""
    images: list[str] = []
    absolute = False
    for entry in config.splits[split]:
        if os.path.isdir(entry.path):
            images += [f for f in split_dir_files(entry.path) if has_image_suffix(f)]
        elif os.path.isfile(entry.path) and not has_image_suffix(entry.path):
            try:
                lines = read_image_list(entry.path)
            except (OSError, UnicodeDecodeError):
                continue
            for _number, line in lines:
                absolute |= line.startswith("/")
                path = list_line_path(line, entry.path)
                if has_image_suffix(line) and os.path.isabs(path):
                    images.append(os.path.normpath(path))
    return sorted(images), absolute


def _self_contained(config: DatasetConfig, base: str, splits: dict[str, tuple[list[str], bool]]) -> bool:
    given = config.data.get("path")
    if (
        isinstance(given, str)
        and given
        and (os.path.isabs(os.path.expanduser(given)) or not inside(str(config.root), base))
    ):
        return False
    for entries in config.splits.values():
        if any(os.path.isabs(os.path.expanduser(e.given)) or not inside(e.path, base) for e in entries):
            return False
    return not any(absolute for _images, absolute in splits.values()) and all(
        inside(image, base) for images, _absolute in splits.values() for image in images
    )


def _anchor(image: str) -> str:
    """The folder above the last /images/ (so labels/ comes along), else the image's own folder."""
    marker = f"{os.sep}images{os.sep}"
    cut = image.rfind(marker)
    return image[:cut] if cut > 0 else os.path.dirname(image)


def _copy_rel(path: str, base: str, names: dict[str, str], anchor_of: str | None = None) -> str:
    if inside(path, base):
        return Path(os.path.relpath(path, base)).as_posix()
    anchor = _anchor(anchor_of or path)
    if anchor not in names:
        stem = os.path.basename(anchor) or "root"
        taken = set(names.values())
        name, n = stem, 2
        while name in taken:
            name, n = f"{stem}-{n}", n + 1
        names[anchor] = name
    return f"{EXTERNAL_DIR}/{names[anchor]}/{Path(os.path.relpath(path, anchor)).as_posix()}"
