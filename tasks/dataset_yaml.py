"""Find and read a dataset yaml the way Ultralytics' ``check_det_dataset`` does.

Accepted, as Ultralytics accepts them: ``names`` as a list or a mapping (int or digit-string
keys), ``nc`` alone (names become ``class_0..``), both together when they agree, ``nc`` as
an integer-like string; ``path:`` absent, absolute or relative; splits as a folder, a .txt
list of images, or a list of both; Roboflow's ``../train/images`` (tried as ``train/images``
when it does not exist); ``validation:`` standing in for a missing ``val:``; keys Ultralytics
does not read (``roboflow:``, ``description:`` ...) are noted and ignored.

One deliberate difference: a relative ``path:`` resolves against the yaml's own folder.
Ultralytics resolves it against the process's working directory (then its ``datasets_dir``
setting), which differs between a terminal, a scheduled worker and a container, so the same
yaml would train on different data; nothing in a dataset folder can rely on that.
"""

from __future__ import annotations

import difflib
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import DatasetError
from tasks.ultralytics_rules import KEY_TYPES, KNOWN_KEYS, default_names

YAML_SUFFIXES = (".yaml", ".yml")
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_SPLITS: tuple[str, ...] = ("train", "val")
_NAMES_FORM = "a list of class names like [cat, dog] or a mapping {0: cat, 1: dog}"


@dataclass(frozen=True)
class SplitEntry:
    """One path a split names: a folder of images or a .txt list of image paths."""

    split: str
    given: str  # as written in the yaml
    path: str  # absolute, normalised (not resolved through links)
    line: int | None  # line in the yaml


@dataclass(frozen=True)
class DatasetConfig:
    """A dataset yaml, read and resolved; ``splits`` holds only splits that are set."""

    yaml_path: Path
    root: Path  # the dataset root: ``path:``, else the yaml's folder
    names: list[str]
    splits: dict[str, list[SplitEntry]]
    data: dict[str, Any]  # the yaml as parsed
    notes: list[str] = field(default_factory=list)

    @property
    def nc(self) -> int:
        return len(self.names)

    def where(self, line: int | None) -> str:
        return f"{self.yaml_path.name}:{line}" if line else self.yaml_path.name


def is_dataset_yaml(path: Path) -> bool:
    """A yaml mapping with a split key: what a folder's dataset yaml looks like (vs. other config files)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and any(k in data for k in ("train", "val", "validation"))


def find_dataset_yaml(source: Path) -> Path:
    """``source`` itself when it is a yaml file, else the one dataset yaml at the top of folder ``source``.

    Raises DatasetError naming what was found when there is none or more than one.
    """
    if source.is_file():
        if source.suffix.lower() not in YAML_SUFFIXES:
            raise DatasetError(
                f"{source} is not a dataset yaml (valid: a folder holding one dataset yaml, or the .yaml file itself)"
            )
        return source
    if not source.is_dir():
        raise DatasetError(
            f"{source}: dataset does not exist (valid: a folder holding a dataset yaml "
            f"like data.yaml, or the yaml file itself)"
        )
    candidates = sorted(p for p in source.iterdir() if p.suffix.lower() in YAML_SUFFIXES and p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    datasets = [p for p in candidates if is_dataset_yaml(p)]
    if len(datasets) == 1:
        return datasets[0]
    if not datasets:
        found = f" (found {', '.join(p.name for p in candidates)}, none with train:/val: keys)" if candidates else ""
        raise DatasetError(
            f"{source}: no dataset yaml at the top of the folder{found} (valid: a data.yaml with "
            f"train:, val: and names:, e.g. train: images/train)"
        )
    names = ", ".join(p.name for p in datasets)
    raise DatasetError(
        f"{source}: {len(datasets)} dataset yamls ({names}); point data.source at the one to train, "
        f"e.g. {source / datasets[0].name}"
    )


def read_dataset_yaml(yaml_path: Path, problems: list[str]) -> DatasetConfig | None:
    """Parse and resolve ``yaml_path``; append every problem (``file:line: what (valid form)``) to ``problems``.

    Returns None when the file cannot be used at all (unreadable, not a mapping).
    """
    name = yaml_path.name
    try:
        text = yaml_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{name}: cannot be read as UTF-8 text: {exc}")
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{name}:{mark.line + 1}" if mark is not None else name
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.append(f"{at}: not valid YAML: {reason}")
        return None
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        problems.append(
            f"{name}: is {kind}, not a mapping (valid: keys like train: images/train, val: images/val, names: [...])"
        )
        return None

    lines: dict[Any, int] = {}
    value_nodes: dict[Any, yaml.Node] = {}
    for key_node, value_node in node.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        if key in lines:
            problems.append(
                f"{name}:{line}: key '{key}' given twice (also line {lines[key]}); YAML keeps only the last one"
            )
        lines[key], value_nodes[key] = line, value_node

    def where(key: str) -> str:
        return f"{name}:{lines[key]}" if key in lines else name

    notes: list[str] = []
    for key in (str(k) for k in data if k not in KNOWN_KEYS):
        if key == "background":  # trainyard's own key before it followed Ultralytics here
            notes.append(
                f"{where(key)}: key 'background' ignored: images without a label file train as "
                f"backgrounds by default; validate.strict: true refuses them"
            )
            continue
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close and close[0] not in data else ""
        notes.append(f"{where(key)}: key '{key}' ignored (Ultralytics does not read it{hint})")
    for key, types in KEY_TYPES.items():
        value = data.get(key)
        if value is not None and not isinstance(value, types):
            valid = " or ".join("a list" if t is list else "a mapping" if t is dict else "a string" for t in types)
            problems.append(f"{where(key)}: {key} must be {valid}, got {_describe(value)}")
    if data.get("val") is None and data.get("validation") is not None:
        data = {**data, "val": data["validation"]}
        lines["val"] = lines.get("validation", 0)
        notes.append(f"{where('validation')}: 'validation:' used as 'val:' (as Ultralytics does)")

    names = _read_names(data, value_nodes.get("names"), name, where, problems, notes)
    root = _resolve_root(yaml_path, data, where, problems)
    splits: dict[str, list[SplitEntry]] = {}
    for split in SPLITS:
        value = data.get(split)
        if value is None or value == [] or value == "":
            if split in REQUIRED_SPLITS:
                detail = "is empty" if split in data else "is missing"
                problems.append(
                    f"{where(split)}: required key '{split}' {detail} (valid: {split}: images/{split}, "
                    f"a folder or .txt list relative to the dataset root)"
                )
            continue
        if not isinstance(value, (str, list)):
            continue  # reported by the type check above
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if not isinstance(v, str) or not v]
        if bad:
            problems.append(
                f"{where(split)}: {split} entries must be path strings, got {_describe(bad[0])} "
                f"(valid: {split}: images/{split} or a list of such paths)"
            )
            continue
        if root is not None:
            splits[split] = [
                SplitEntry(split, v, resolve_split(root, v, roboflow=isinstance(value, str)), lines.get(split))
                for v in items
            ]
    if root is None or names is None:
        return None
    return DatasetConfig(yaml_path=yaml_path, root=root, names=names, splits=splits, data=data, notes=notes)


def split_dir_files(directory: str) -> list[str]:
    """get_img_files on a folder: every file below it with a dot in its name (hidden ones left out, links followed)."""
    return glob.glob(os.path.join(glob.escape(directory), "**", "*.*"), recursive=True)


def read_image_list(list_file: str) -> list[tuple[int, str]]:
    """get_img_files on a .txt split: its non-blank lines as Ultralytics splits them, with their line numbers.

    Raises OSError or UnicodeDecodeError when the file cannot be read as UTF-8 (a BOM is fine).
    """
    with open(list_file, encoding="utf-8-sig") as fh:
        text = fh.read()
    lead = text[: len(text) - len(text.lstrip())]  # Ultralytics strips the whole text first
    first = 1 + lead.count("\n") + lead.count("\r") - lead.count("\r\n")
    return [(number, line) for number, line in enumerate(text.strip().splitlines(), start=first) if line]


def inside(path: str, root: str) -> bool:
    """Whether normalised ``path`` is ``root`` or lies below it."""
    return (path + os.sep).startswith(root.rstrip(os.sep) + os.sep)


def _resolve_root(yaml_path: Path, data: dict[str, Any], where: Any, problems: list[str]) -> Path | None:
    given = data.get("path")
    if not given or not isinstance(given, str):
        return Path(os.path.abspath(yaml_path.parent))
    expanded = os.path.expanduser(given)
    root = Path(os.path.normpath(expanded if os.path.isabs(expanded) else yaml_path.parent / expanded))
    if not root.is_dir():
        hint = (
            ""
            if os.path.isabs(expanded)
            else "; a relative path: resolves against the yaml's folder in trainyard, never the working directory"
        )
        problems.append(
            f"{where('path')}: path {given!r} is not a folder ({root}){hint} (valid: the dataset "
            f"root as an absolute path, or relative to {yaml_path.name}'s folder, or leave path: out)"
        )
        return None
    return root


def resolve_split(root: Path, value: str, *, roboflow: bool) -> str:
    """check_det_dataset: root / value; a string starting with ../ that does not exist is tried without it."""
    path = os.path.normpath(os.path.join(root, os.path.expanduser(value)))
    if roboflow and not os.path.exists(path) and value.startswith("../"):
        path = os.path.normpath(os.path.join(root, value[3:]))
    return path


def _read_names(
    data: dict[str, Any], node: yaml.Node | None, yaml_name: str, where: Any, problems: list[str], notes: list[str]
) -> list[str] | None:
    """check_det_dataset + check_class_names: the class names, or None after appending the problem."""
    raw, nc = data.get("names"), data.get("nc")
    if nc is not None and not (isinstance(nc, int) and not isinstance(nc, bool)):
        try:
            as_float = float(nc)
            if as_float != int(as_float):
                raise ValueError
            nc = int(as_float)
        except (TypeError, ValueError):
            problems.append(
                f"{where('nc')}: nc must be an integer, got {_describe(nc)} (valid: the number of "
                f"classes, or leave nc out)"
            )
            return None
    if raw is None:
        if nc is None:
            problems.append(f"{where('names')}: required key 'names' is missing or empty (valid: {_NAMES_FORM})")
            return None
        if nc < 1:
            problems.append(f"{where('nc')}: nc is {nc} (valid: a positive number of classes)")
            return None
        notes.append(f"{where('nc')}: no names: given; classes are named class_0..class_{nc - 1} (as Ultralytics does)")
        return default_names(nc)
    if not isinstance(raw, (list, dict)):
        return None  # reported by the type check
    item_lines = (
        [(item[0] if isinstance(item, tuple) else item).start_mark.line + 1 for item in getattr(node, "value", [])]
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode))
        else []
    )
    if isinstance(raw, list):
        pairs: list[tuple[Any, Any]] = list(enumerate(raw))
    else:
        pairs = list(raw.items())
    by_id: dict[int, tuple[Any, int | None]] = {}
    for i, (key, value) in enumerate(pairs):
        line = item_lines[i] if i < len(item_lines) else None
        at = f"{yaml_name}:{line}" if line else where("names")
        try:
            if isinstance(key, bool) or isinstance(key, float):
                raise ValueError
            cid = int(key)
        except (TypeError, ValueError):
            problems.append(f"{at}: names key {key!r} is not a class id (valid: {_NAMES_FORM})")
            return None
        if cid in by_id:
            problems.append(f"{at}: class id {cid} given twice (valid: each id 0..n-1 once)")
            return None
        by_id[cid] = (value, line)
    if not by_id:
        problems.append(f"{where('names')}: names is empty (valid: {_NAMES_FORM})")
        return None
    n = len(by_id)
    if sorted(by_id) != list(range(n)):
        missing = sorted(set(range(n)) - set(by_id))
        problems.append(
            f"{where('names')}: names ids must run 0..{n - 1} without gaps, got {sorted(by_id)}"
            + (f" (missing {missing})" if missing else "")
            + f" (valid: {_NAMES_FORM})"
        )
        return None
    if nc is not None and nc != n:  # reported; the splits are still checked against the names
        problems.append(f"{where('nc')}: nc is {nc} but names lists {n} classes (valid: nc: {n}, or leave nc out)")
    names: list[str] = []
    for cid in range(n):
        value, line = by_id[cid]
        if value is None or isinstance(value, (dict, list)) or not str(value).strip():
            at = f"{yaml_name}:{line}" if line else where("names")
            problems.append(f"{at}: name of class {cid} must be a non-empty string, got {_describe(value)}")
            return None
        names.append(str(value))
    seen: dict[str, int] = {}
    for cid, label in enumerate(names):
        if label in seen:
            notes.append(f"{where('names')}: classes {seen[label]} and {cid} are both named {label!r}")
        seen.setdefault(label, cid)
    return names


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{type(value).__name__} {text[:57] + '...' if len(text) > 60 else text}"
