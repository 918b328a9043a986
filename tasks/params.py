"""params.yaml: load, check, override, flatten and hash.

params.yaml is the single source of truth for `trainyard run` and `dvc repro` alike, so
a typo must never be silently ignored: an unknown key or a value of the wrong type is
rejected with a message naming the key, the file and the valid form.

The ``train`` section is passed to Ultralytics verbatim, so it is checked against
Ultralytics' own ``cfg/default.yaml`` (read from the installed package without importing
it, which would pull in torch).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import importlib.util
import json
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from tasks.errors import ParamsError
from tasks.sweep_space import OBJECTIVES, Dimension, check_sweep, dimensions

# Ultralytics keys that trainyard owns: it sets them itself from other sections, and a
# user value would silently send output or data somewhere trainyard does not track.
OWNED_TRAIN_KEYS: dict[str, str] = {
    "data": "set data.source instead; trainyard stages and validates it first",
    "project": "trainyard gives each run its own output directory",
    "name": "trainyard gives each run its own output directory",
    "exist_ok": "trainyard gives each run its own output directory",
    "mode": "trainyard always trains",
    "resume": "trainyard decides when to resume a run",
}

# Ultralytics keys whose default in cfg/default.yaml does not show every valid type.
# Each entry: accepted Python types and the valid form as the user should read it.
_TRAIN_TYPE_EXCEPTIONS: dict[str, tuple[tuple[type, ...], str]] = {
    "imgsz": ((int, list), "an integer like 640 or a list [height, width]"),
    "batch": ((int, float), "an integer batch size, -1 for auto, or a fraction of GPU memory like 0.7"),
    "device": ((str, int, list, type(None)), "cpu, a GPU index like 0, a list like [0, 1], or '0,1'"),
    "pretrained": ((bool, str), "true, false, or a path to weights"),
    "cache": ((bool, str), "false, true, 'ram' or 'disk'"),
    "freeze": ((int, list, type(None)), "null, a number of layers, or a list of layer indices"),
    "classes": ((int, list, type(None)), "null or a list of class ids"),
    "time": ((int, float, type(None)), "null or hours as a number"),
    "model": ((str,), "a YOLO11 yaml like yolo11n.yaml, or a path to a local .pt file"),
    "multi_scale": ((bool, int, float), "false, or a scale range as a number"),
}

_TYPE_WORDS: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


@dataclass(frozen=True)
class _Key:
    """One trainyard-owned key: accepted types, default, and the valid form for messages."""

    types: tuple[type, ...]
    default: Any
    form: str
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _non_empty(value: Any) -> str | None:
    return None if str(value).strip() else "must not be empty"


def _non_empty_or_null(value: Any) -> str | None:
    return None if value is None else _non_empty(value)


def _key(default: Any, form: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """A section field: its default, the valid form named in messages, and an optional check."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"form": form, "check": check})
    return field(default=default, metadata={"form": form, "check": check})


# The trainyard sections (everything but ``train``): typed, frozen, and the one source of their
# defaults (tests/tasks/test_params.py checks that params.yaml states the same values).


@dataclass(frozen=True)
class DataParams:
    """``data``: the dataset to train on."""

    source: str = _key(
        "data/demo",
        "s3://bucket/prefix, a path to a dataset folder holding one dataset yaml, or the yaml file itself",
        _non_empty,
    )
    rev: str | None = _key(None, "a git revision for a DVC-tracked data.source, or null for the working copy")
    endpoint_url: str | None = _key(None, "an S3-compatible endpoint like http://minio:9000, or null for AWS")
    region: str | None = _key(None, "an AWS region like eu-west-1, or null for the AWS default chain")
    profile: str | None = _key(None, "an AWS profile name, or null for the default credential chain")


@dataclass(frozen=True)
class StageParams:
    """``stage``: the local, content-addressed copy training reads."""

    root: str | None = _key(None, "a directory on local SSD or tmpfs, or null for ~/.cache/trainyard/stage")
    max_gb: int | float | None = _key(None, "a size in GB for LRU eviction, like 200, or null for no limit", _positive)
    verify: bool = _key(False, "true to re-hash a staged copy before every use, false to trust its manifest")
    workers: int = _key(32, "parallel downloads, like 32", _positive)


@dataclass(frozen=True)
class ValidateParams:
    """``validate``: how strict the dataset check is."""

    strict: bool = _key(
        False, "true to refuse images without a label file, false to train them as backgrounds (as Ultralytics does)"
    )


@dataclass(frozen=True)
class RunnerParams:
    """``runner``: where the training process runs, and how a crashed one is resumed."""

    kind: str = _key("local", "local or docker", _one_of("local", "docker"))
    retries: int = _key(
        2, "how often a crashed or killed training is resumed from last.pt, like 2 (0 = never)", _not_negative
    )
    retry_delay: int | float = _key(30, "seconds to wait before resuming a crashed training, like 30", _not_negative)
    oom_min_batch: int = _key(
        1, "the smallest batch an out-of-memory retry may halve train.batch to, like 2", _positive
    )


@dataclass(frozen=True)
class ContainerParams:
    """``container``: the training image and what the container gets."""

    image: str | None = _key(None, "an image as name:tag, name@sha256:<digest> or name:tag@sha256:<digest>")
    gpus: str | int = _key("none", 'all, none, or GPU indices like "0,1"')
    shm_size: str = _key("8g", "a size like 8g (Docker's 64m default kills dataloader workers)")
    ipc: str | None = _key(None, "host, or null for Docker's default")
    require_digest: bool = _key(False, "true to refuse a bare tag in container.image")
    pull: bool = _key(True, "true to pull container.image when it is not on this machine")


@dataclass(frozen=True)
class ReproduceParams:
    """``reproduce``: the tolerances of `trainyard reproduce`'s verdict."""

    rtol: int | float = _key(0.0, "a relative tolerance like 1e-3 for `trainyard reproduce` (0 = bit-identical)")
    atol: int | float = _key(0.0, "an absolute tolerance like 1e-4 for `trainyard reproduce`")


@dataclass(frozen=True)
class TrackingParams:
    """``tracking``: the MLflow server or store."""

    uri: str | None = _key(None, "an MLflow tracking URI like http://mlflow:5000, or null for the local store")
    experiment: str = _key("trainyard", "an MLflow experiment name", _non_empty)
    run_name: str | None = _key(None, "a run name, or null for model, epochs and the --set train values")
    wait: int | float = _key(
        60, "seconds to wait for an unreachable tracking server when a training ends, like 60", _not_negative
    )
    registered_model: str | None = _key(
        None, "a registered model name, or null for the experiment's name", _non_empty_or_null
    )
    promote: str = _key("manual", "manual or auto", _one_of("manual", "auto"))


@dataclass(frozen=True)
class SweepParams:
    """``sweep``: `trainyard sweep`'s search (tasks/sweep_space.py checks ``space`` and ``enqueue``)."""

    trials: int = _key(20, "how many trials the study ends with (finished, pruned or failed), like 20", _positive)
    parallel: int = _key(1, "how many trials train at once, like 2", _positive)
    pool: str | None = _key(
        None, "a Prefect work pool whose workers train the trials, or null to train them in this process"
    )
    deployment: str = _key("train", "the deployment of the train flow on sweep.pool, like train", _non_empty)
    gpu_limit: str = _key(
        "trainyard-gpus",
        "the Prefect global concurrency limit whose slots are GPUs (created with sweep.parallel slots if missing)",
        _non_empty,
    )
    objective: str = _key(
        "mAP50-95",
        "mAP50-95, mAP50, precision or recall of best.pt, or a per-epoch metric like val/box_loss",
        lambda v: None if v in OBJECTIVES else f"must be one of {', '.join(OBJECTIVES)}",
    )
    direction: str | None = _key(
        None, "maximize, minimize, or null (maximize metrics, minimize losses)", _one_of("maximize", "minimize")
    )
    pruner: str = _key(
        "median", "median (stop trials below the median at the same epoch) or none", _one_of("median", "none")
    )
    prune_after: int = _key(3, "epochs a trial trains before it can be pruned, like 3", _positive)
    startup_trials: int = _key(2, "finished trials before pruning starts, like 2", _not_negative)
    sampler: str = _key("tpe", "tpe or random", _one_of("tpe", "random"))
    seed: int | None = _key(0, "the sampler's seed (same seed, same suggestions), or null")
    storage: str | None = _key(
        None, "an Optuna storage URL like postgresql://user@db/optuna, or null for optuna.db beside params.yaml"
    )
    study: str | None = _key(None, "the study's name, or null for <experiment>-sweep-<hash of the search>")
    enqueue: list[Any] = _key([], "trials to run first, a list of train values like [{lr0: 0.01, imgsz: 96}]")
    space: dict[str, Any] = _key(
        {"lr0": {"low": 0.0005, "high": 0.01, "log": True}, "imgsz": [64, 96, 128]},
        "train keys to search, each {low: 1e-4, high: 0.1, log: true}, {low: 8, high: 32, step: 8} or a list of choices",
    )


SECTION_TYPES: dict[str, type] = {
    "data": DataParams,
    "stage": StageParams,
    "validate": ValidateParams,
    "runner": RunnerParams,
    "container": ContainerParams,
    "reproduce": ReproduceParams,
    "tracking": TrackingParams,
    "sweep": SweepParams,
}


def _schema(cls: type) -> dict[str, _Key]:
    hints = typing.get_type_hints(cls)
    return {
        f.name: _Key(
            _accepted(hints[f.name]),
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,
            f.metadata["form"],
            f.metadata["check"],
        )
        for f in fields(cls)
    }


def _accepted(hint: Any) -> tuple[type, ...]:
    origin = typing.get_origin(hint)
    if origin in (dict, list):  # a nested value (sweep.space): its own checker looks inside
        return (origin,)
    return typing.get_args(hint) or (hint,)


# What _check_section checks each section's keys against, read off the dataclasses above.
SCHEMA: dict[str, dict[str, _Key]] = {name: _schema(cls) for name, cls in SECTION_TYPES.items()}
SETTINGS_TAG_PREFIX = "trainyard.params."  # trainyard's own settings on an MLflow run (not its params)
SECTIONS: tuple[str, ...] = (
    "data",
    "stage",
    "validate",
    "train",
    "runner",
    "container",
    "reproduce",
    "tracking",
    "sweep",
)


@dataclass(frozen=True)
class Params:
    """Checked parameters. ``train`` holds Ultralytics arguments exactly as given."""

    data: DataParams
    stage: StageParams
    validate: ValidateParams
    train: dict[str, Any]
    runner: RunnerParams
    container: ContainerParams
    reproduce: ReproduceParams
    tracking: TrackingParams
    sweep: SweepParams
    path: Path  # the params.yaml these came from; relative paths resolve against its folder
    overrides: tuple[str, ...] = field(default=())

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def as_dict(self) -> dict[str, Any]:
        """The resolved parameters (file + overrides), as they would read in params.yaml."""
        return {
            name: copy.deepcopy(self.train) if name == "train" else asdict(getattr(self, name)) for name in SECTIONS
        }

    def mlflow_params(self) -> dict[str, str]:
        """The Ultralytics arguments under Ultralytics' own names (``lr0``, ``epochs``), as its own MLflow
        callback logs them: what the MLflow params table shows and compares. trainyard's own settings
        (where data, caches, images and servers are) are tags instead: see :meth:`settings_tags`."""
        from tasks.redact import redact

        return {k: redact(v) for k, v in flatten(copy.deepcopy(self.train)).items()}

    def settings_tags(self) -> dict[str, str]:
        """The other sections as ``trainyard.params.<section>.<key>`` tags: on the run, out of the params table."""
        from tasks.redact import redact

        # the sweep's search space is the parent run's record (flows/sweep.py), not each trial's
        settings = {name: value for name, value in self.as_dict().items() if name not in ("train", "sweep")}
        return {f"{SETTINGS_TAG_PREFIX}{k}": redact(v) for k, v in flatten(settings).items()}

    def resolve_path(self, value: str | os.PathLike[str]) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def data_source(self) -> Path:
        return self.resolve_path(self.data.source)

    @property
    def seed(self) -> int:
        return int(self.train.get("seed", ultralytics_defaults().get("seed", 0)))

    def model_ref(self) -> str:
        """``train.model`` as Ultralytics should get it: a resolved local path, or a built-in yaml name.

        A missing ``.pt`` is an error here, not a download: Ultralytics would fetch
        "yolo11n.pt" from the internet, which training machines often cannot reach.
        """
        model = str(self.train["model"])
        local = self.resolve_path(model)
        if local.exists():
            return str(local)
        if model.endswith(".pt"):
            raise ParamsError(
                f"{self.path}: train.model = {model!r}: no such file ({local}); trainyard never downloads "
                "weights: give a local .pt path, or a YOLO11 yaml such as yolo11n.yaml to train from scratch"
            )
        if not model.endswith((".yaml", ".yml")):
            raise ParamsError(f"{self.path}: train.model = {model!r}: valid form: {_TRAIN_TYPE_EXCEPTIONS['model'][1]}")
        return model

    def sweep_dimensions(self) -> "tuple[Dimension, ...]":
        """``sweep.space`` as the study's dimensions."""
        return dimensions(self.sweep.space, TRAIN_RULES)

    def to_yaml(self) -> str:
        """The resolved params as the run records them: URL passwords masked (see tasks.redact)."""
        from tasks.redact import redact

        return redact(yaml.safe_dump(self.as_dict(), sort_keys=False))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, type(None), bool)) else str(value)
    return out


def params_hash(params: Params) -> str:
    """sha256 over what shapes the model: the ``train`` section (and a local .pt's content).

    Paths, tracking and staging settings are left out on purpose: moving a dataset or
    pointing at another MLflow server must not make two identical trainings look different.
    The data itself is covered by the data hash.
    """
    payload: dict[str, Any] = {"train": params.train}
    model = str(params.train.get("model", ""))
    if model.endswith(".pt"):
        payload["model_sha256"] = _file_sha256(Path(params.model_ref()))
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- loading


def load_params(path: str | os.PathLike[str] = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read, check and apply ``--set section.key=value`` overrides; raise ParamsError on any problem."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{where}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except FileNotFoundError:
        raise ParamsError(
            f"{where}: file not found (run trainyard from the project folder or pass --params PATH)"
        ) from None
    except OSError as exc:
        raise ParamsError(f"{where}: cannot read: {exc.strerror}") from None
    if len(text) > MAX_FILE_CHARS:
        raise ParamsError(f"{where}: {len(text)} characters; a params file is at most {MAX_FILE_CHARS}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{where}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: top level must be a mapping of sections ({', '.join(SECTIONS)})")
    _check_size(raw, where)  # before anything copies it: YAML aliases can make 5 KB into millions of values
    tree = copy.deepcopy(raw)
    origins: dict[str, str] = {}
    for override in overrides:
        section, key = _apply_override(tree, override)
        origins[f"{section}.{key}"] = override
    try:
        return _check(tree, path.resolve(), where, tuple(overrides))
    except ParamsError as exc:
        # Point at the --set that caused it, not at a params.yaml that is fine.
        culprit = next(
            (text for dotted, text in origins.items() if f" {dotted} " in f" {exc} " or f"'{dotted}'" in str(exc)), None
        )
        if culprit is None:
            raise
        raise ParamsError(f"{exc} (from --set {culprit})") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``train.epochs=3`` -> ("train", "epochs", 3). Values are YAML, so 3 is an int, true a bool."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # bytes the shell passed that are not UTF-8 (surrogate escapes)
        raise ParamsError(
            f"--set {text.encode('utf-8', 'backslashreplace').decode()!r}: not UTF-8 text "
            f"(character {exc.start}); pass the value as UTF-8"
        ) from None
    if len(text) > MAX_STRING:
        raise ParamsError(f"--set {text[:60]!r}...: {len(text)} characters; a --set is at most {MAX_STRING}")
    if "=" not in text:
        raise ParamsError(f"--set {text!r}: expected section.key=value, e.g. --set train.epochs=3")
    dotted, _, value_text = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not dot or not section or not key or "." in key:
        raise ParamsError(f"--set {text!r}: expected section.key=value, e.g. --set train.epochs=3")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text  # not YAML: take the text as a string, the type check decides
    return section, key, value


def _apply_override(tree: dict[str, Any], text: str) -> tuple[str, str]:
    section, key, value = parse_override(text)
    if section not in SECTIONS:
        raise ParamsError(f"--set {text!r}: unknown section {section!r}; valid sections: {', '.join(SECTIONS)}")
    current = tree.setdefault(section, {})
    if current is None:
        current = tree[section] = {}
    if not isinstance(current, dict):
        raise ParamsError(f"--set {text!r}: section {section!r} in params.yaml is not a mapping")
    current[key] = value
    return section, key


def _check(tree: dict[str, Any], path: Path, where: str, overrides: tuple[str, ...]) -> Params:
    unknown = [s for s in tree if s not in SECTIONS]
    if unknown:
        raise ParamsError(_unknown(where, unknown[0], SECTIONS, "section"))
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        body = tree.get(name)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ParamsError(f"{where}: section '{name}' must be a mapping of key: value")
        sections[name] = body
    checked: dict[str, dict[str, Any]] = {}
    for name, keys in SCHEMA.items():
        checked[name] = _check_section(name, sections[name], keys, where)
    checked["train"] = _check_train(sections["train"], where)
    check_sweep(checked["sweep"], checked["train"], where, TRAIN_RULES)
    if checked["runner"]["kind"] == "docker":
        problem = _devices_beyond_container(checked["train"].get("device"), checked["container"]["gpus"])
        if problem:
            raise ParamsError(f"{where}: {problem}")
    sections_typed = {name: cls(**checked[name]) for name, cls in SECTION_TYPES.items()}
    return Params(path=path, overrides=overrides, train=checked["train"], **sections_typed)


def _devices_beyond_container(device: Any, gpus: str | int) -> str | None:
    """Why ``train.device`` asks for GPUs the container will not have, if it does.

    Inside a container CUDA numbers the GPUs it was given from 0 (container.gpus "2,3" shows
    up as 0 and 1), so train.device indexes the container's GPUs, not the host's.
    """
    given = str(gpus).strip().lower()
    if given == "all":
        return None  # as many as the host has: only the training itself can tell
    count = 0 if given in ("none", "", "false", "0 gpus") else len([g for g in given.split(",") if g.strip()])
    items = device if isinstance(device, list) else str(device if device is not None else "").split(",")
    wanted = [str(i).strip().lower().removeprefix("cuda:") for i in items]
    indices = [int(w) for w in wanted if w.isdigit()]
    asked = len(indices) + wanted.count("-1")  # -1: Ultralytics picks an idle GPU
    if not asked or (asked <= count and all(i < count for i in indices)):
        return None
    if count == 0:
        return (
            f'train.device {device!r} asks for GPUs but container.gpus is {gpus!r}; set container.gpus (all or "0,1")'
        )
    return (
        f"train.device {device!r} asks for GPUs the container does not have: container.gpus {gpus!r} gives it "
        f"{count}, numbered 0..{count - 1} inside the container (train.device indexes the container's GPUs)"
    )


def _check_section(name: str, body: dict[str, Any], keys: dict[str, _Key], where: str) -> dict[str, Any]:
    for key in body:
        if key not in keys:
            raise ParamsError(_unknown(where, f"{name}.{key}", [f"{name}.{k}" for k in keys], "key"))
    out: dict[str, Any] = {}
    for key, spec in keys.items():
        value = body.get(key, spec.default)
        if not _is_type(value, spec.types):
            raise ParamsError(_wrong_type(where, f"{name}.{key}", value, spec.form))
        if spec.check is not None and value is not None:
            problem = spec.check(value)
            if problem:
                raise ParamsError(f"{where}: {name}.{key} = {value!r} {problem} (valid form: {spec.form})")
        out[key] = value
    return out


MAX_FILE_CHARS = 1_000_000  # a params file is a page of settings, not data
MAX_VALUES = 100_000  # values after YAML aliases are expanded (an "alias bomb" makes billions)
MAX_STRING = 4096  # characters in one value (paths, URIs; PATH_MAX is 4096 on Linux)


def _check_size(tree: Any, where: str) -> None:
    """Refuse a document that expands to too many values or holds an over-long string, naming the key."""
    seen = 0
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        dotted, node = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ParamsError(
                f"{where}: more than {MAX_VALUES} values (near {dotted or 'the top'}); YAML aliases (*name) "
                "that repeat large blocks are the usual cause; write the values out"
            )
        if isinstance(node, dict):
            stack.extend((f"{dotted}.{k}" if dotted else str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{dotted}[{i}]", v) for i, v in enumerate(node))
        elif isinstance(node, str) and len(node) > MAX_STRING:
            raise ParamsError(
                f"{where}: {dotted} is {len(node)} characters long; a value is at most {MAX_STRING} (a path or URL)"
            )


def _check_ranges(body: dict[str, Any], where: str) -> None:
    """The ranges Ultralytics' check_cfg enforces at training time, and stricter ones where Ultralytics
    would silently train something else than the params record; checked before any run is opened."""
    from tasks.ultralytics_rules import FRACTION_KEYS, INT_MIN, MAX_STRIDE

    def refuse(key: str, form: str) -> ParamsError:
        return ParamsError(f"{where}: train.{key} is {body[key]!r}; valid form: {form}")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for key, value in body.items():
        if key in INT_MIN and number(value) and value < INT_MIN[key]:
            raise refuse(key, f"an integer >= {INT_MIN[key]}")
        if key in FRACTION_KEYS and key != "fraction" and number(value) and not 0.0 <= value <= 1.0:
            raise refuse(key, "a number from 0.0 to 1.0")
    if number(body.get("lr0")) and body["lr0"] <= 0:
        raise refuse("lr0", "a learning rate above 0 and at most 1.0, like 0.01")
    if number(body.get("fraction")) and body["fraction"] <= 0:
        raise refuse("fraction", "a share of the training images above 0, up to 1.0")
    batch: Any = body.get("batch")
    if number(batch) and not (batch == -1 or (isinstance(batch, int) and batch >= 1) or 0 < batch < 1):
        # Ultralytics trains 0 or -5 as 16 and records 0 or -5
        raise refuse("batch", "an integer >= 1, -1 for auto, or a fraction of GPU memory like 0.7")
    if "imgsz" in body:
        sizes = body["imgsz"] if isinstance(body["imgsz"], list) else [body["imgsz"]]
        bad = not 1 <= len(sizes) <= 2 or any(not isinstance(v, int) or isinstance(v, bool) for v in sizes)
        if bad or any(v < MAX_STRIDE or v % MAX_STRIDE for v in sizes):
            # Ultralytics rounds up to a multiple of the model's stride (0 becomes 32) and trains that
            raise refuse("imgsz", f"a positive multiple of {MAX_STRIDE} like 640, or [height, width] of such")
    for key, form in (
        ("workers", "an integer >= 0"),
        ("close_mosaic", "an integer >= 0"),
        ("warmup_epochs", "a number >= 0"),
    ):
        if number(body.get(key)) and body[key] < 0:
            raise refuse(key, form)
    if number(body.get("save_period")) and body["save_period"] != -1 and body["save_period"] < 1:
        raise refuse("save_period", "-1 (off) or a number of epochs >= 1")
    if number(body.get("time")) and body["time"] <= 0:
        raise refuse("time", "null, or hours above 0 like 1.5")


def _check_train(body: dict[str, Any], where: str) -> dict[str, Any]:
    defaults = ultralytics_defaults()
    for key, value in body.items():
        if key in OWNED_TRAIN_KEYS:
            raise ParamsError(f"{where}: train.{key} is set by trainyard ({OWNED_TRAIN_KEYS[key]}); remove it")
        if key not in defaults:
            raise ParamsError(
                _unknown(where, f"train.{key}", [f"train.{k}" for k in defaults], "Ultralytics argument")
                + " (train takes Ultralytics' own argument names, see ultralytics/cfg/default.yaml)"
            )
        types, form = _train_type(key, defaults[key])
        if float in types and isinstance(value, str):
            value = body[key] = _yaml11_float(value)
        if types and not _is_type(value, types):
            raise ParamsError(_wrong_type(where, f"train.{key}", value, form))
    if not str(body.get("model") or "").strip():
        raise ParamsError(f"{where}: train.model is required (valid form: {_TRAIN_TYPE_EXCEPTIONS['model'][1]})")
    _check_ranges(body, where)
    return dict(body)


def _train_type(key: str, default: Any) -> tuple[tuple[type, ...], str]:
    if key in _TRAIN_TYPE_EXCEPTIONS:
        return _TRAIN_TYPE_EXCEPTIONS[key]
    if default is None:
        return (), "any value"  # Ultralytics leaves these open; it checks them itself
    if isinstance(default, bool):
        return (bool,), "true or false"
    if isinstance(default, int):
        return (int,), f"an integer like {default}"
    if isinstance(default, float):
        return (int, float), f"a number like {default}"
    if isinstance(default, str):
        return (str,), f"a string like {default!r}"
    return (type(default),), _TYPE_WORDS.get(type(default), type(default).__name__)


def _yaml11_float(text: str) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; a number key means the number."""
    try:
        return float(text)
    except ValueError:
        return text


def _is_type(value: Any, types: tuple[type, ...]) -> bool:
    # bool is a subclass of int in Python, but `epochs: true` is a typo, not a count
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _wrong_type(where: str, key: str, value: Any, form: str) -> str:
    return f"{where}: {key} = {value!r} has the wrong type ({type(value).__name__}); valid form: {form}"


def _unknown(where: str, key: str, valid: list[str] | tuple[str, ...], what: str) -> str:
    # match bare names: the shared "train." prefix would make any two keys look alike
    bare = {v.rpartition(".")[2]: v for v in valid}
    guess = difflib.get_close_matches(key.rpartition(".")[2], list(bare), n=1)
    hint = f"; did you mean '{bare[guess[0]]}'?" if guess else ""
    listing = "" if len(valid) > 12 else f" Valid: {', '.join(valid)}."
    return f"{where}: unknown {what} '{key}'{hint}{listing}"


_DEFAULTS_CACHE: dict[str, Any] | None = None


def ultralytics_defaults() -> dict[str, Any]:
    """Ultralytics' cfg/default.yaml as a dict, read from the installed package's files."""
    global _DEFAULTS_CACHE
    if _DEFAULTS_CACHE is None:
        spec = importlib.util.find_spec("ultralytics")  # locates the package without importing torch
        if spec is None or not spec.submodule_search_locations:
            raise ParamsError("ultralytics is not installed; run `make venv` (or pip install -r requirements.lock)")
        cfg = Path(list(spec.submodule_search_locations)[0]) / "cfg" / "default.yaml"
        _DEFAULTS_CACHE = yaml.safe_load(cfg.read_text())
    return dict(_DEFAULTS_CACHE)


class _TrainRules:
    """``train.*`` as tasks/sweep_space.py checks a search space against it."""

    owned = OWNED_TRAIN_KEYS

    def known(self, key: str) -> bool:
        return key in ultralytics_defaults()

    def types(self, key: str) -> tuple[type, ...]:
        return _train_type(key, ultralytics_defaults().get(key))[0]

    def default(self, key: str) -> Any:
        return ultralytics_defaults().get(key)

    def check(self, body: dict[str, Any], where: str) -> None:
        _check_train(body, where)


TRAIN_RULES = _TrainRules()
