"""CLI flags generated from the config model: every field a flag, help from its description."""

from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from orchestrator.config import TrainConfig
from orchestrator.console.flags import add_model_flags, flag_specs, given_values
from orchestrator.console.main import build_parser
from orchestrator.console.run_flags import TRAIN_FLAGS, config_from_args


class _Model(BaseModel):
    count: int = Field(3, description="how many")
    rate: float | None = None
    mode: Literal["a", "b"] = "a"
    on: bool = True
    table: dict[str, int] = Field(default_factory=dict)


def _parser(**kwargs: object) -> tuple[argparse.ArgumentParser, list]:
    specs = flag_specs(_Model, **kwargs)  # type: ignore[arg-type]
    parser = argparse.ArgumentParser()
    add_model_flags(parser, specs)
    return parser, specs


def test_scalar_fields_get_flags_and_others_do_not() -> None:
    _, specs = _parser()
    assert [(s.field, s.flag, s.kind) for s in specs] == [
        ("count", "--count", "int"),
        ("rate", "--rate", "float"),
        ("mode", "--mode", "choice"),
        ("on", "--on", "bool"),
    ]
    assert specs[0].help == "how many (default 3)"


def test_only_given_flags_are_values() -> None:
    parser, specs = _parser(spelling={"on": "switch"})
    assert given_values(parser.parse_args([]), specs) == {}
    args = parser.parse_args(["--count", "7", "--no-switch", "--mode", "b", "--rate", "0.5"])
    assert given_values(args, specs) == {"count": 7, "on": False, "mode": "b", "rate": 0.5}
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_every_scalar_train_config_field_has_a_flag_with_its_description() -> None:
    flagged = {spec.field: spec for spec in TRAIN_FLAGS}
    scalar = {
        name
        for name, info in TrainConfig.model_fields.items()
        if info.annotation in (int, float, str, bool, int | None, float | None)
        or getattr(info.annotation, "__origin__", None) is Literal
    }
    assert scalar <= set(flagged)
    for name, spec in flagged.items():
        assert TrainConfig.model_fields[name].description, f"{name} has no description"
        assert spec.help.startswith(TrainConfig.model_fields[name].description.replace("%", "%%"))


def test_todays_spellings_are_kept() -> None:
    args = build_parser().parse_args(
        ["train", "--no-cv", "--reports-dir", "r", "--cpus-per-fold", "0.5", "--set", "lr=0.01"]
    )
    config = config_from_args(args)
    assert (config.use_cv, config.reports_dir, config.cpus_per_fold, config.lr) == (False, "r", 0.5, 0.01)
    assert config_from_args(build_parser().parse_args(["train", "--cv"])).use_cv is True
    assert (
        config_from_args(build_parser().parse_args(["train", "--no-prediction-deltas"])).prediction_deltas
        is False
    )
