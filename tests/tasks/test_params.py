"""tasks.params: params.yaml is checked strictly, overrides apply typed, the hash is stable."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from tasks.errors import ParamsError
from tasks.params import (
    OWNED_TRAIN_KEYS,
    SCHEMA,
    SECTIONS,
    Params,
    flatten,
    load_params,
    params_hash,
    parse_override,
)

TYPICAL = """\
data:
  source: data/demo
stage:
  root: null
train:
  model: yolo11n.yaml
  epochs: 40
  imgsz: 96
  batch: 8
  device: cpu
  workers: 0
  seed: 0
  deterministic: true
runner:
  kind: local
tracking:
  uri: null
  experiment: trainyard
"""


def typical() -> dict:
    return yaml.safe_load(TYPICAL)


def write(tmp_path: Path, content: str | dict, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


def with_train(**changes: object) -> dict:
    tree = typical()
    tree["train"].update(changes)
    return tree


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ParamsError) as info:
        load_params(path, overrides)
    return str(info.value)


# --------------------------------------------------------------------------- valid files


def test_typical_file_loads_with_every_value(tmp_path: Path) -> None:
    path = write(tmp_path, TYPICAL)
    params = load_params(path)
    assert isinstance(params, Params)
    assert params.train == {
        "model": "yolo11n.yaml",
        "epochs": 40,
        "imgsz": 96,
        "batch": 8,
        "device": "cpu",
        "workers": 0,
        "seed": 0,
        "deterministic": True,
    }
    assert params.data.source == "data/demo"
    assert asdict(params.stage) == {"root": None, "max_gb": None, "verify": False, "workers": 32}
    assert asdict(params.runner) == {"kind": "local", "retries": 2, "retry_delay": 30, "oom_min_batch": 1}
    assert params.tracking.uri is None
    assert params.tracking.experiment == "trainyard"
    assert params.path == path.resolve()
    assert params.overrides == ()
    assert params.seed == 0


def test_train_keys_are_passed_verbatim_without_ultralytics_defaults(tmp_path: Path) -> None:
    # Only what the user wrote goes to Ultralytics; filling lr0 etc. would change the hash
    # whenever Ultralytics changes a default.
    params = load_params(write(tmp_path, {"train": {"model": "yolo11n.yaml", "epochs": 2}}))
    assert params.train == {"model": "yolo11n.yaml", "epochs": 2}


def test_omitted_trainyard_keys_get_their_defaults(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, {"train": {"model": "yolo11n.yaml"}}))
    for section, keys in SCHEMA.items():
        assert asdict(getattr(params, section)) == {key: spec.default for key, spec in keys.items()}, section
    assert params.data.source == "data/demo"
    assert asdict(params.stage) == {"root": None, "max_gb": None, "verify": False, "workers": 32}
    assert asdict(params.runner) == {"kind": "local", "retries": 2, "retry_delay": 30, "oom_min_batch": 1}
    assert asdict(params.tracking) == {
        "uri": None,
        "experiment": "trainyard",
        "run_name": None,
        "wait": 60,
        "registered_model": None,
        "promote": "manual",
    }


def test_null_sections_count_as_empty(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, "data:\nstage:\ntrain:\n  model: yolo11n.yaml\nrunner:\ntracking:\n"))
    assert params.data.source == "data/demo"
    assert params.tracking.experiment == "trainyard"


def test_relative_data_source_resolves_against_params_folder_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write(project, TYPICAL)
    monkeypatch.chdir(elsewhere)
    params = load_params(Path("..") / "project" / "params.yaml")
    assert params.data_source == (project / "data" / "demo").resolve()
    assert params.base_dir == project.resolve()
    assert params.path == path.resolve()


def test_absolute_data_source_is_kept(tmp_path: Path) -> None:
    tree = typical()
    tree["data"]["source"] = str(tmp_path / "somewhere" / "ds")
    params = load_params(write(tmp_path, tree))
    assert params.data_source == tmp_path / "somewhere" / "ds"


def test_default_path_is_params_yaml_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, TYPICAL)
    monkeypatch.chdir(tmp_path)
    assert load_params().path == (tmp_path / "params.yaml").resolve()


# --------------------------------------------------------------------------- unknown keys


def test_unknown_section_is_rejected_naming_file_and_valid_sections(tmp_path: Path) -> None:
    tree = typical()
    tree["trian"] = {"epochs": 3}
    path = write(tmp_path, tree)
    message = load_error(path)
    assert str(path) in message
    assert "'trian'" in message
    assert "did you mean 'train'" in message
    for section in SECTIONS:
        assert section in message


def test_unknown_key_in_trainyard_section_is_rejected_with_suggestion(tmp_path: Path) -> None:
    tree = typical()
    tree["tracking"]["experimnt"] = "x"
    path = write(tmp_path, tree)
    message = load_error(path)
    assert str(path) in message
    assert "tracking.experimnt" in message
    assert "did you mean 'tracking.experiment'" in message
    # the valid keys of the section are listed
    assert "tracking.uri" in message and "tracking.run_name" in message


def test_unknown_key_in_data_section_is_rejected(tmp_path: Path) -> None:
    tree = typical()
    tree["data"]["path"] = "x"
    message = load_error(write(tmp_path, tree))
    assert "data.path" in message
    assert "data.source" in message


def test_unknown_ultralytics_key_suggests_the_real_one(tmp_path: Path) -> None:
    tree = typical()
    tree["train"]["epoch"] = 3
    path = write(tmp_path, tree)
    message = load_error(path)
    assert str(path) in message
    assert "'train.epoch'" in message
    assert "did you mean 'train.epochs'?" in message
    assert "default.yaml" in message


def test_unknown_ultralytics_key_without_close_match_is_still_rejected(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, with_train(zzqqxx=1)))
    assert "train.zzqqxx" in message


# BUG (tasks/params.py, _unknown): the suggestion is matched on "train.<key>", so the shared
# "train." prefix alone makes nonsense keys look close: train.foo -> "did you mean 'train.lrf'?".
@pytest.mark.parametrize(
    ("section", "key"), [("train", "zzqqxx"), ("train", "foo"), ("train", "gpu"), ("tracking", "xyz")]
)
def test_no_suggestion_for_a_key_unlike_any_valid_one(tmp_path: Path, section: str, key: str) -> None:
    tree = typical()
    tree[section][key] = 1
    message = load_error(write(tmp_path, tree))
    assert f"{section}.{key}" in message
    assert "did you mean" not in message


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("key", "value", "form"),
    [
        ("epochs", "ten", "an integer"),
        ("epochs", True, "an integer"),  # bool is a subclass of int, but not a count
        ("epochs", 3.5, "an integer"),
        ("lr0", "fast", "a number"),
        ("lr0", False, "a number"),
        ("deterministic", "yes please", "true or false"),
        ("deterministic", 1, "true or false"),
        ("imgsz", "big", "an integer like 640 or a list"),
        ("model", 5, "yolo11n.yaml"),
    ],
)
def test_wrong_train_types_are_rejected(tmp_path: Path, key: str, value: object, form: str) -> None:
    path = write(tmp_path, with_train(**{key: value}))
    message = load_error(path)
    assert str(path) in message
    assert f"train.{key} = {value!r}" in message
    assert "wrong type" in message
    assert form in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("imgsz", [96, 96]),
        ("batch", 0.7),
        ("batch", -1),
        ("lr0", 1),  # an int where a float is expected is fine
        ("device", 0),
        ("device", [0, 1]),
        ("device", "0,1"),
        ("device", None),
        ("cache", "ram"),
        ("pretrained", "weights/backbone.pt"),
        ("time", 0.5),
    ],
)
def test_train_values_of_other_valid_types_are_accepted(tmp_path: Path, key: str, value: object) -> None:
    params = load_params(write(tmp_path, with_train(**{key: value})))
    assert params.train[key] == value
    assert type(params.train[key]) is type(value)


def test_runner_kind_must_be_a_known_runner(tmp_path: Path) -> None:
    tree = typical()
    tree["runner"]["kind"] = "docker2"
    path = write(tmp_path, tree)
    message = load_error(path)
    assert str(path) in message
    assert "runner.kind = 'docker2'" in message
    assert "must be one of local" in message


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("tracking.promote=always", "tracking.promote = 'always'"),
        ("tracking.registered_model='  '", "tracking.registered_model"),
    ],
)
def test_registry_settings_are_checked(tmp_path: Path, override: str, says: str) -> None:
    message = load_error(write(tmp_path, typical()), (override,))
    assert says in message
    assert "manual or auto" in message or "registered model name" in message


def test_registry_settings_default_to_the_experiment_and_manual_promotion(tmp_path: Path) -> None:
    from tasks.registry import registry_plan

    params = load_params(write(tmp_path, typical()), ("tracking.experiment=shapes", "train.imgsz=[96, 128]"))
    plan = registry_plan(params)
    assert plan is not None and (plan.model, plan.promote, plan.imgsz) == ("shapes", "manual", 128)
    assert registry_plan(params, reproduction=True) is None  # a reproduction checks a model, it offers none
    named = registry_plan(
        load_params(write(tmp_path, typical()), ("tracking.registered_model=detector", "tracking.promote=auto"))
    )
    assert named is not None and (named.model, named.promote) == ("detector", "auto")


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_experiment_name_is_rejected(tmp_path: Path, value: str) -> None:
    tree = typical()
    tree["tracking"]["experiment"] = value
    message = load_error(write(tmp_path, tree))
    assert f"tracking.experiment = {value!r}" in message
    assert "must not be empty" in message


def test_null_experiment_name_is_rejected(tmp_path: Path) -> None:
    tree = typical()
    tree["tracking"]["experiment"] = None
    message = load_error(write(tmp_path, tree))
    assert "tracking.experiment = None" in message
    assert "MLflow experiment name" in message


def test_empty_data_source_is_rejected(tmp_path: Path) -> None:
    tree = typical()
    tree["data"]["source"] = ""
    assert "data.source" in load_error(write(tmp_path, tree))


def test_wrong_type_in_trainyard_section_is_rejected(tmp_path: Path) -> None:
    tree = typical()
    tree["stage"]["root"] = 5
    message = load_error(write(tmp_path, tree))
    assert "stage.root = 5" in message
    assert "wrong type" in message


def test_section_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "train: 5\n")
    message = load_error(path)
    assert str(path) in message
    assert "'train' must be a mapping" in message


def test_model_is_required(tmp_path: Path) -> None:
    tree = typical()
    del tree["train"]["model"]
    message = load_error(write(tmp_path, tree))
    assert "train.model is required" in message


# --------------------------------------------------------------------------- owned keys


@pytest.mark.parametrize("key", sorted(OWNED_TRAIN_KEYS))
def test_keys_trainyard_sets_are_rejected(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, with_train(**{key: "whatever"}))
    message = load_error(path)
    assert str(path) in message
    assert f"train.{key} is set by trainyard" in message
    assert OWNED_TRAIN_KEYS[key] in message


def test_owned_data_key_points_at_data_source(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, with_train(data="coco8.yaml")))
    assert "data.source" in message


def test_owned_key_via_override_is_rejected(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, TYPICAL), ("train.project=/elsewhere",))
    assert "train.project is set by trainyard" in message


# --------------------------------------------------------------------------- file problems


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = load_error(path)
    assert str(path) in message
    assert "file not found" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    message = load_error(tmp_path)
    assert str(tmp_path) in message
    assert "cannot read" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  model: yolo11n.yaml\n  epochs: 3\n   imgsz: 96\n")
    message = load_error(path)
    assert message.startswith(f"{path}:4: ")
    assert "not valid YAML" in message


def test_unclosed_bracket_names_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  model: yolo11n.yaml\n  imgsz: [96, 96\nrunner:\n  kind: local\n")
    message = load_error(path)
    assert message.startswith(f"{path}:")
    line = message[len(f"{path}:") :].split(":", 1)[0]
    assert line.isdigit() and int(line) >= 3


# BUG (tasks/params.py, load_params): read_text() raises UnicodeDecodeError, which is not an
# OSError, so a params.yaml saved as Latin-1 crashes with a traceback instead of a ParamsError.
def test_file_that_is_not_utf8_is_a_params_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(TYPICAL.replace("experiment: trainyard", "experiment: caf\xe9").encode("latin-1"))
    message = load_error(path)
    assert str(path) in message


@pytest.mark.parametrize("text", ["- data\n- train\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert str(path) in message
    assert "top level must be a mapping" in message


def test_empty_file_needs_a_model(tmp_path: Path) -> None:
    assert "train.model is required" in load_error(write(tmp_path, ""))


# --------------------------------------------------------------------------- overrides


def test_parse_override_values_are_yaml_typed() -> None:
    assert parse_override("train.epochs=3") == ("train", "epochs", 3)
    assert parse_override("train.device=cpu") == ("train", "device", "cpu")
    assert parse_override("train.deterministic=false") == ("train", "deterministic", False)
    assert parse_override("train.lr0=0.5") == ("train", "lr0", 0.5)
    assert parse_override("train.imgsz=[64, 96]") == ("train", "imgsz", [64, 96])
    assert parse_override("tracking.uri=http://x:5000") == ("tracking", "uri", "http://x:5000")
    assert parse_override("tracking.uri=") == ("tracking", "uri", None)
    assert parse_override("tracking.run_name=a=b") == ("tracking", "run_name", "a=b")


@pytest.mark.parametrize("text", ["train.epochs", "epochs=3", "a.b.c=1", ".epochs=3", "train.=3", "=3"])
def test_bad_override_syntax_names_the_valid_form(text: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_override(text)
    message = str(info.value)
    assert repr(text) in message
    assert "section.key=value" in message


@pytest.mark.parametrize("text", ["train.epochs", "epochs=3", "a.b.c=1"])
def test_bad_override_syntax_is_rejected_by_load_params(tmp_path: Path, text: str) -> None:
    message = load_error(write(tmp_path, TYPICAL), (text,))
    assert "section.key=value" in message


def test_overrides_apply_with_their_types(tmp_path: Path) -> None:
    overrides = ("train.epochs=3", "train.device=cpu", "tracking.uri=http://x:5000")
    params = load_params(write(tmp_path, with_train(device="0")), overrides)
    assert params.train["epochs"] == 3 and type(params.train["epochs"]) is int
    assert params.train["device"] == "cpu"
    assert params.tracking.uri == "http://x:5000"
    assert params.overrides == overrides
    # the rest of the file is untouched
    assert params.train["imgsz"] == 96
    assert params.tracking.experiment == "trainyard"


def test_override_adds_a_key_absent_from_the_file(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, TYPICAL), ("train.lr0=0.02", "stage.root=/fast/ssd"))
    assert params.train["lr0"] == 0.02
    assert params.stage.root == "/fast/ssd"


def test_override_fills_a_null_or_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  model: yolo11n.yaml\nstage:\n")
    params = load_params(path, ("stage.root=/x", "tracking.experiment=exp2"))
    assert params.stage.root == "/x"
    assert params.tracking.experiment == "exp2"


def test_later_override_wins(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, TYPICAL), ("train.epochs=3", "train.epochs=5"))
    assert params.train["epochs"] == 5


def test_overrides_do_not_touch_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, TYPICAL)
    load_params(path, ("train.epochs=3",))
    assert path.read_text() == TYPICAL
    assert load_params(path).train["epochs"] == 40


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=ten", "train.epochs"),
        ("train.epochs=true", "train.epochs"),
        ("train.lr0=fast", "train.lr0"),
        ("runner.kind=docker2", "runner.kind"),
        ("tracking.experiment=", "tracking.experiment"),
    ],
)
def test_override_with_wrong_type_is_rejected_like_the_file(tmp_path: Path, override: str, key: str) -> None:
    message = load_error(write(tmp_path, TYPICAL), (override,))
    assert f"{key} = " in message


def test_override_with_unknown_key_or_section_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, TYPICAL)
    assert "did you mean 'train.epochs'" in load_error(path, ("train.epoch=3",))
    message = load_error(path, ("trian.epochs=3",))
    assert "unknown section 'trian'" in message
    assert "tracking.experimnt" in load_error(path, ("tracking.experimnt=x",))


def test_override_into_a_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  model: yolo11n.yaml\nrunner: local\n")
    message = load_error(path, ("runner.kind=local",))
    assert "'runner'" in message and "not a mapping" in message


def test_overrides_show_in_as_dict_and_in_what_mlflow_records(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, TYPICAL), ("train.epochs=3", "tracking.uri=http://x:5000"))
    tree = params.as_dict()
    assert tree["train"]["epochs"] == 3
    assert tree["tracking"]["uri"] == "http://x:5000"
    assert params.mlflow_params()["epochs"] == "3"
    assert params.settings_tags()["trainyard.params.tracking.uri"] == "http://x:5000"
    assert yaml.safe_load(params.to_yaml()) == tree


def test_url_passwords_stay_out_of_what_a_run_records(tmp_path: Path) -> None:
    params = load_params(
        write(tmp_path, TYPICAL), ("tracking.uri=http://ci:s3cret@x:5000", "data.endpoint_url=http://k:pw@minio:9000")
    )
    assert params.tracking.uri == "http://ci:s3cret@x:5000"  # the client still gets it
    assert params.settings_tags()["trainyard.params.tracking.uri"] == "http://ci:***@x:5000"
    assert params.settings_tags()["trainyard.params.data.endpoint_url"] == "http://k:***@minio:9000"
    assert "s3cret" not in params.to_yaml() and "pw@" not in params.to_yaml() and "k:***@minio" in params.to_yaml()


def test_as_dict_is_a_copy(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, with_train(imgsz=[96, 96])))
    tree = params.as_dict()
    tree["train"]["imgsz"].append(1)
    tree["train"]["epochs"] = 1
    assert params.train["imgsz"] == [96, 96]
    assert params.train["epochs"] == 40
    assert list(tree) == list(SECTIONS)


# --------------------------------------------------------------------------- params_hash


def test_hash_is_stable_for_the_same_content(tmp_path: Path) -> None:
    a = params_hash(load_params(write(tmp_path, TYPICAL, "a.yaml")))
    b = params_hash(load_params(write(tmp_path, TYPICAL, "b.yaml")))
    assert a == b
    assert len(a) == 64 and int(a, 16) >= 0


def test_hash_ignores_key_order(tmp_path: Path) -> None:
    tree = typical()
    reordered = {section: dict(reversed(list(body.items()))) for section, body in reversed(list(tree.items()))}
    first = write(tmp_path, tree, "a.yaml")
    second = write(tmp_path, reordered, "b.yaml")
    assert first.read_text() != second.read_text()
    assert params_hash(load_params(first)) == params_hash(load_params(second))


def test_hash_ignores_data_stage_and_tracking(tmp_path: Path) -> None:
    base = params_hash(load_params(write(tmp_path, TYPICAL, "a.yaml")))
    tree = typical()
    tree["data"] = {"source": "/nas/elsewhere/demo"}
    tree["stage"] = {"root": "/dev/shm/stage"}
    tree["tracking"] = {"uri": "http://mlflow:5000", "experiment": "other", "run_name": "r1"}
    assert params_hash(load_params(write(tmp_path, tree, "b.yaml"))) == base


def test_hash_does_not_depend_on_the_params_folder(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    a = params_hash(load_params(write(tmp_path / "one", TYPICAL)))
    b = params_hash(load_params(write(tmp_path / "two", TYPICAL)))
    assert a == b


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 41),
        ("imgsz", 128),
        ("imgsz", [96, 96]),
        ("batch", 0.7),
        ("device", "0"),
        ("seed", 1),
        ("deterministic", False),
        ("model", "yolo11s.yaml"),
        ("lr0", 0.02),  # a key that was not in the file before
    ],
)
def test_hash_changes_when_a_train_value_changes(tmp_path: Path, key: str, value: object) -> None:
    base = params_hash(load_params(write(tmp_path, TYPICAL, "a.yaml")))
    changed = params_hash(load_params(write(tmp_path, with_train(**{key: value}), "b.yaml")))
    assert changed != base


def test_hash_changes_with_an_override_of_a_train_value(tmp_path: Path) -> None:
    path = write(tmp_path, TYPICAL)
    base = params_hash(load_params(path))
    assert params_hash(load_params(path, ("train.epochs=3",))) != base
    # an override that sets the same value is not a change
    assert params_hash(load_params(path, ("train.epochs=40",))) == base
    # and the override equals writing the value in the file
    assert params_hash(load_params(path, ("train.epochs=3",))) == params_hash(
        load_params(write(tmp_path, with_train(epochs=3), "b.yaml"))
    )


def test_hash_ignores_overrides_outside_train(tmp_path: Path) -> None:
    path = write(tmp_path, TYPICAL)
    assert params_hash(load_params(path, ("tracking.uri=http://x:5000",))) == params_hash(load_params(path))


def test_hash_follows_local_pt_file_content(tmp_path: Path) -> None:
    weights = tmp_path / "weights" / "start.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"first weights")
    path = write(tmp_path, with_train(model="weights/start.pt"))
    params = load_params(path)
    first = params_hash(params)
    assert params_hash(load_params(path)) == first
    weights.write_bytes(b"other weights")
    second = params_hash(load_params(path))
    assert second != first
    weights.write_bytes(b"first weights")
    assert params_hash(load_params(path)) == first


def test_pt_path_resolves_against_params_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "start.pt").write_bytes(b"project weights")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "start.pt").write_bytes(b"decoy weights")
    path = write(project, with_train(model="start.pt"))
    monkeypatch.chdir(project)
    in_project = params_hash(load_params(path))
    monkeypatch.chdir(elsewhere)
    assert params_hash(load_params(path)) == in_project


def test_missing_local_pt_model_is_a_params_error_not_a_download(tmp_path: Path) -> None:
    # "yolo11n.pt" would make Ultralytics download weights; trainyard refuses instead,
    # with a one-line ParamsError rather than a FileNotFoundError traceback.
    for model in ("weights/missing.pt", "yolo11n.pt"):
        path = write(tmp_path, with_train(model=model))
        with pytest.raises(ParamsError) as info:
            params_hash(load_params(path))
        message = str(info.value)
        assert "train.model" in message
        assert model in message
        assert str(path.resolve()) in message


# --------------------------------------------------------------------------- what MLflow records


def test_mlflow_params_and_settings_tags_are_flat_strings(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, with_train(imgsz=[96, 128], lr0=0.01)))
    logged, tags = params.mlflow_params(), params.settings_tags()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in {**logged, **tags}.items())
    assert logged["epochs"] == "40"
    assert logged["lr0"] == "0.01"
    assert logged["model"] == "yolo11n.yaml"
    assert logged["device"] == "cpu"
    assert logged["deterministic"] == "true"
    assert logged["imgsz"] == "[96, 128]"
    assert tags["trainyard.params.stage.root"] == "null"
    assert tags["trainyard.params.tracking.uri"] == "null"
    assert tags["trainyard.params.data.source"] == "data/demo"
    assert tags["trainyard.params.runner.kind"] == "local"
    # every key of params.yaml is recorded once: train's as params, the others as tags
    sections = params.as_dict()
    assert set(logged) == set(sections["train"])
    # the sweep section is the sweep's parent run's record, not each training's (flows/sweep.py)
    expected_tags = {
        f"trainyard.params.{s}.{k}" for s, body in sections.items() if s not in ("train", "sweep") for k in body
    }
    assert set(tags) == expected_tags


def test_flatten_encodes_none_bools_lists_as_json_and_recurses() -> None:
    flat = flatten({"a": {"b": None, "c": False, "d": [1, "x", None], "e": {"f": 2.5}}, "g": "text"})
    assert flat == {"a.b": "null", "a.c": "false", "a.d": '[1, "x", null]', "a.e.f": "2.5", "g": "text"}
    assert json.loads(flat["a.d"]) == [1, "x", None]


def test_staging_keys_are_checked(tmp_path: Path) -> None:
    base = {"train": {"model": "yolo11n.yaml"}}
    with pytest.raises(ParamsError, match="stage.max_gb .* must be greater than 0"):
        load_params(write(tmp_path, {**base, "stage": {"max_gb": 0}}))
    with pytest.raises(ParamsError, match="stage.workers"):
        load_params(write(tmp_path, {**base, "stage": {"workers": "many"}}))
    with pytest.raises(ParamsError, match="did you mean 'data.endpoint_url'"):
        load_params(write(tmp_path, {**base, "data": {"endpoint": "http://minio:9000"}}))
    ok = load_params(write(tmp_path, {**base, "data": {"source": "s3://b/p", "endpoint_url": "http://minio:9000"}}))
    assert ok.data.endpoint_url == "http://minio:9000" and ok.stage.workers == 32


@pytest.mark.parametrize(
    "override, expected",
    [
        ("runner.retries=-1", "runner.retries"),
        ("runner.retries=two", "runner.retries"),
        ("runner.retry_delay=-5", "runner.retry_delay"),
    ],
)
def test_retry_settings_are_checked(tmp_path: Path, override: str, expected: str) -> None:
    path = write(tmp_path, {"train": {"model": "yolo11n.yaml"}})
    with pytest.raises(ParamsError, match=expected):
        load_params(path, [override])


def test_params_yaml_states_the_defaults_the_code_holds() -> None:
    """The sections' dataclasses are the one source of defaults; the shipped params.yaml must agree."""
    from tasks.params import SECTION_TYPES

    shipped = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    for name, cls in SECTION_TYPES.items():
        assert getattr(shipped, name) == cls(), f"params.yaml's {name} section differs from {cls.__name__}'s defaults"


# --------------------------------------------------------------------------- ranges and limits


@pytest.mark.parametrize(
    ("override", "form"),
    [
        ("train.epochs=-1", "an integer >= 1"),
        ("train.epochs=0", "an integer >= 1"),
        ("train.lr0=-1", "0.0 to 1.0"),
        ("train.lr0=0", "above 0"),
        ("train.momentum=1.5", "0.0 to 1.0"),
        ("train.imgsz=0", "multiple of 32"),
        ("train.imgsz=100", "multiple of 32"),
        ("train.imgsz=[64, 0]", "multiple of 32"),
        ("train.batch=0", "-1 for auto"),
        ("train.batch=-5", "-1 for auto"),
        ("train.batch=1.5", "-1 for auto"),
        ("train.workers=-1", ">= 0"),
        ("train.patience=-3", ">= 0"),
        ("train.save_period=0", "-1 (off)"),
        ("train.fraction=0", "above 0"),
        ("train.time=0", "hours above 0"),
    ],
)
def test_out_of_range_values_are_refused_before_any_run(tmp_path: Path, override: str, form: str) -> None:
    message = load_error(write(tmp_path, TYPICAL), (override,))
    key = override.split("=", 1)[0]
    assert key in message and form in message and f"--set {override}" in message


@pytest.mark.parametrize("override", ["train.batch=-1", "train.batch=0.7", "train.imgsz=[96, 64]", "train.lr0=1.0"])
def test_the_edges_ultralytics_accepts_stay_accepted(tmp_path: Path, override: str) -> None:
    load_params(write(tmp_path, TYPICAL), (override,))


def test_an_alias_bomb_is_refused_in_a_blink(tmp_path: Path) -> None:
    import time

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = TYPICAL.replace("train:\n", "train:\n  classes: *a8\n", 1)
    path = write(tmp_path, "\n".join(lines) + "\n" + bomb)
    assert path.stat().st_size < 6000
    started = time.monotonic()
    message = load_error(path)
    assert time.monotonic() - started < 5
    assert "more than 100000 values" in message and "aliases" in message


def test_an_over_long_value_and_odd_bytes_get_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, TYPICAL)
    message = load_error(path, ("data.source=" + "d" * 100_000,))
    assert "characters" in message and len(message) < 300
    message = load_error(path, ("data.source=caf\udce9",))  # how Python passes a non-UTF-8 argv byte
    assert "not UTF-8" in message and "\\udce9" in message
    long_source = TYPICAL.replace("source: data/demo", "source: " + "d" * 5000)
    assert "data.source is 5000 characters" in load_error(write(tmp_path, long_source))
