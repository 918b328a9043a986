"""The ``sweep`` section: forms of the space, what is refused (with the key and the valid form), the
``--set`` texts trials get, and the objective names against the installed Ultralytics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.errors import ParamsError
from tasks.params import TRAIN_RULES, load_params
from tasks.sweep_space import (
    EPOCH_OBJECTIVES,
    dimensions,
    objective_direction,
    overrides,
    rounded,
    study_name,
    suggest,
)


def params_with(tmp_path: Path, sweep: dict[str, Any], **train: Any) -> Path:
    path = tmp_path / "params.yaml"
    body = {"train": {"model": "yolo11n.yaml", "epochs": 2, **train}, "sweep": sweep}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_the_three_forms_become_float_int_and_choice_dimensions(tmp_path: Path) -> None:
    space = {
        "lr0": {"low": "1e-4", "high": 0.1, "log": True},  # YAML 1.1 reads 1e-4 as a string
        "batch": {"low": 8, "high": 32, "step": 8},
        "warmup_epochs": {"low": 0, "high": 3},
        "optimizer": ["SGD", "AdamW"],
    }
    params = load_params(params_with(tmp_path, {"space": space}))
    kinds = {d.key: (d.kind, d.low, d.high) for d in params.sweep_dimensions()}
    assert kinds == {
        "lr0": ("float", 1e-4, 0.1),
        "batch": ("int", 8, 32),  # an integer default: a batch size, not a GPU-memory fraction
        "warmup_epochs": ("float", 0, 3),  # a float default: 0..3 is a float range
        "optimizer": ("choice", None, None),
    }


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"data": ["a.yaml"]}, "sweep.space.data: 'data' cannot be searched: set data.source instead"),
        ({"lr00": {"low": 0.1, "high": 0.2}}, "not an Ultralytics training argument"),
        ({"lr0": {"low": 0.1}}, "sweep.space.lr0 = {'low': 0.1}; valid form: {low: 1e-4, high: 0.1, log: true}"),
        ({"lr0": {"low": 0.2, "high": 0.1}}, "low 0.2 and high 0.1 must be numbers with low < high"),
        ({"lr0": {"low": 0.0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
        ({"lr0": {"low": 0.001, "high": 0.1, "log": True, "step": 0.01}}, "log and step exclude each other"),
        ({"lr0": {"low": 0.001, "high": 2.0}}, "sweep.space.lr0 = 2.0 is not a valid train.lr0"),
        ({"epochs": {"low": 1.5, "high": 3}}, "train.epochs is an integer; low, high and step must be integers"),
        ({"imgsz": [64, 100]}, "sweep.space.imgsz[1] = 100 is not a valid train.imgsz"),
        ({"imgsz": [[64, 64]]}, "a choice is a number, a string, true/false or null"),
        ({"optimizer": {"low": 1, "high": 2}}, "train.optimizer is not a number; search it with a list of choices"),
        ({"imgsz": [64, 64]}, "lists a choice twice"),
        ({"imgsz": []}, "has 0 choices"),
    ],
)
def test_a_space_that_could_give_an_invalid_train_value_is_refused_naming_the_key(
    tmp_path: Path, space: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ParamsError) as info:
        load_params(params_with(tmp_path, {"space": space}))
    assert expected in str(info.value)
    assert str(tmp_path / "params.yaml") in str(info.value)


def test_enqueued_trials_set_searched_keys_to_valid_values_only(tmp_path: Path) -> None:
    space = {"lr0": {"low": 0.001, "high": 0.1}}
    with pytest.raises(ParamsError, match=r"sweep.enqueue\[0\].imgsz is not in sweep.space"):
        load_params(params_with(tmp_path, {"space": space, "enqueue": [{"imgsz": 64}]}))
    with pytest.raises(ParamsError, match=r"sweep.enqueue\[0\].lr0 = -1 is not a valid train.lr0"):
        load_params(params_with(tmp_path, {"space": space, "enqueue": [{"lr0": -1}]}))
    with pytest.raises(ParamsError, match=r"sweep.parallel = 4 is more than sweep.trials = 2"):
        load_params(params_with(tmp_path, {"space": space, "trials": 2, "parallel": 4}))


def test_unknown_sweep_keys_and_wrong_types_name_the_key_and_form(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"unknown key 'sweep.trails'; did you mean 'sweep.trials'"):
        load_params(params_with(tmp_path, {"trails": 3}))
    with pytest.raises(ParamsError, match=r"sweep.objective = 'map' must be one of mAP50-95, mAP50"):
        load_params(params_with(tmp_path, {"objective": "map"}))
    with pytest.raises(ParamsError, match=r"sweep.trials = 'many' has the wrong type"):
        load_params(params_with(tmp_path, {}), ["sweep.trials=many"])


def test_trial_values_round_trip_through_set_texts_exactly(tmp_path: Path) -> None:
    values = {"lr0": 1.234e-05, "imgsz": 96, "optimizer": "AdamW", "cos_lr": True}
    texts = overrides(values)
    assert texts[0] == "train.lr0=1.234e-05"
    params = load_params(params_with(tmp_path, {}), texts)
    assert {k: params.train[k] for k in values} == values


def test_float_suggestions_are_rounded_to_four_digits_inside_the_range() -> None:
    class Fixed:
        def suggest_float(self, name: str, low: float, high: float, *, step: Any = None, log: bool = False) -> float:
            return 0.0123456789

        def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
            return low

        def suggest_categorical(self, name: str, choices: Any) -> Any:
            return choices[-1]

    space = {"lr0": {"low": 0.001, "high": 0.1, "log": True}, "imgsz": [64, 96]}
    assert suggest(Fixed(), dimensions(space, TRAIN_RULES)) == {"lr0": 0.01235, "imgsz": 96}
    assert rounded(0.0123456, 0.001, 0.012345) == 0.012345  # never outside the range


def test_direction_follows_the_objective_unless_set() -> None:
    assert objective_direction("mAP50-95", None) == "maximize"
    assert objective_direction("val/box_loss", None) == "minimize"
    assert objective_direction("val/box_loss", "maximize") == "maximize"


def test_the_study_name_changes_with_the_search_not_with_the_trial_count(tmp_path: Path) -> None:
    base = load_params(params_with(tmp_path, {"trials": 4}))
    more = load_params(params_with(tmp_path, {"trials": 8}))
    other = load_params(params_with(tmp_path, {"objective": "mAP50"}))

    def name(p: Any) -> str:
        from dataclasses import asdict

        return study_name("exp", asdict(p.sweep), p.train, p.data.source)

    assert name(base) == name(more) and name(base) != name(other)
    assert name(base).startswith("exp-sweep-")


def test_per_epoch_objectives_are_columns_the_installed_ultralytics_writes() -> None:
    import inspect

    from ultralytics.utils.loss import v8DetectionLoss
    from ultralytics.utils.metrics import DetMetrics

    names = ("box_loss", "cls_loss", "dfl_loss")  # the detection loss's items (a training's results.csv has them too)
    assert ", ".join(f'"{n}"' for n in names) in inspect.getsource(v8DetectionLoss)
    losses = [f"{split}/{name}" for split in ("train", "val") for name in names]
    assert set(EPOCH_OBJECTIVES) == set(DetMetrics().keys) | set(losses)


def test_the_sweep_section_is_not_on_each_trials_run_as_tags(tmp_path: Path) -> None:
    params = load_params(params_with(tmp_path, {"trials": 4}))
    assert not [k for k in params.settings_tags() if ".sweep." in k]
