"""The search space: parsing and validating it, and drawing a trial's values from it."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from orchestrator.config import config_from_mapping
from orchestrator.errors import ConfigError
from orchestrator.hpo.space import (
    DEFAULT_SEARCH_SPACE,
    contains,
    load_search_space,
    parse_search_space,
    suggest,
)


def test_default_search_space_is_valid_and_typed() -> None:
    space = parse_search_space(DEFAULT_SEARCH_SPACE)
    assert list(space) == [
        "lr",
        "hidden",
        "depth",
        "dropout",
        "weight_decay",
        "w_bce",
        "w_brier",
        "lookback",
    ]
    assert space["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["hidden"] == IntDistribution(16, 128)
    assert space["lookback"] == IntDistribution(10, 40)


def test_search_space_reads_yaml_exponents_and_categoricals() -> None:
    space = parse_search_space(
        yaml.safe_load(
            "lr: {type: float, low: 1e-5, high: 1e-1, log: true}\n"
            "window: {type: categorical, choices: [expanding, rolling]}\n"
            "hidden: {type: int, low: 16, high: 64, step: 16}\n"
        )
    )
    assert space["lr"] == FloatDistribution(1e-5, 1e-1, log=True)
    assert space["window"] == CategoricalDistribution(["expanding", "rolling"])
    assert space["hidden"] == IntDistribution(16, 64, step=16)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"lr2": {"type": "float", "low": 0.1, "high": 1.0}}, "'lr2' is not a TrainConfig field"),
        ({"folds": {"type": "int", "low": 2, "high": 5}}, "'folds' cannot be tuned"),
        ({"dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "dropout=1.5 is not a valid value"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "search space: lr:"),
        ({"depth": {"type": "int", "low": 1}}, "depth needs high"),
        ({"depth": {"type": "gauss", "low": 1, "high": 2}}, "depth.type must be one of"),
        ({"depth": {"type": "int", "low": 1, "high": 3, "choices": [1]}}, "unknown keys ['choices']"),
        ({"hidden": {"type": "int", "low": 1.5, "high": 3}}, "hidden.low must be an integer"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_search_space_names_the_parameter(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_search_space(spec)
    assert needle in str(info.value)


def test_bounds_are_checked_against_the_base_config() -> None:
    # each bound is validated as a value of the base config
    base = config_from_mapping({"epochs": 2})
    with pytest.raises(ConfigError, match="lookback=0 is not a valid value"):
        parse_search_space({"lookback": {"type": "int", "low": 0, "high": 5}}, base)


def test_load_search_space_names_the_file(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="search space file not found"):
        load_search_space(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: {type: float, low: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_search_space(bad)


def test_contains_follows_bounds_steps_and_choices() -> None:
    space = parse_search_space(
        {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "hidden": {"type": "int", "low": 16, "high": 64},
            "window": {"type": "categorical", "choices": ["expanding", "rolling"]},
        }
    )
    assert contains(space["lr"], 1e-3) and not contains(space["lr"], 0.5)
    assert contains(space["hidden"], 32) and not contains(space["hidden"], 32.5)
    assert not contains(space["hidden"], True) and not contains(space["lr"], "0.001")
    assert contains(space["window"], "rolling") and not contains(space["window"], "fixed")


def test_suggest_draws_every_parameter_in_order_and_takes_enqueued_values() -> None:
    space = parse_search_space(
        {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "hidden": {"type": "int", "low": 16, "high": 64, "step": 16},
            "window": {"type": "categorical", "choices": ["expanding", "rolling"]},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"lr": 1e-3, "hidden": 48, "window": "rolling"})
    first = study.ask()
    assert suggest(first, space) == {"lr": 1e-3, "hidden": 48, "window": "rolling"}
    drawn = study.ask()
    values = suggest(drawn, space)
    assert list(values) == ["lr", "hidden", "window"]
    assert all(contains(space[name], value) for name, value in values.items())
    assert drawn.distributions == space  # the same distributions ask(fixed_distributions) records
