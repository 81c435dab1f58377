"""Config values the data cannot support are refused before training, naming both numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.config import FoldSpec, Segment, TrainConfig
from orchestrator.errors import ConfigError
from orchestrator.run.cv import plan_folds_for
from orchestrator.run.feasibility import check_folds, min_calibration_size, plan_feasible_folds
from workers.conformal import conformal_quantile

# 2200 bars with lookback 20 give 2179 samples (the base.csv); with 2 folds, fold 0 has
# validation [1309, 1744), calibration [1098, 1288) = 190 samples, train [0, 1077).
CASE_SAMPLES = 2179


def _config(**values: object) -> TrainConfig:
    return TrainConfig.model_validate({"folds": 2, **values})


def _spec(train: int, cal: int, val: int = 100, gap: int = 21) -> list[FoldSpec]:
    cal_start = train + gap
    val_start = cal_start + cal + gap
    return [
        FoldSpec(
            0, Segment(0, train), Segment(cal_start, cal_start + cal), Segment(val_start, val_start + val)
        )
    ]


@pytest.mark.parametrize(
    ("alpha", "expected"), [(0.002, 499), (0.1, 9), (0.05, 19), (0.3, 3), (0.5, 1), (1 / 191, 190)]
)
def test_min_calibration_size_is_the_exact_bound(alpha: float, expected: int) -> None:
    assert min_calibration_size(alpha) == expected
    # The folds' own quantile is finite with that many scores and infinite with one fewer.
    assert math.isfinite(conformal_quantile(np.arange(float(expected)), alpha))
    assert math.isinf(conformal_quantile(np.arange(float(expected - 1)), alpha))


def test_case_alpha_is_refused_naming_alpha_and_the_calibration_size() -> None:
    config = _config(alpha=0.002)
    specs = plan_folds_for(config, CASE_SAMPLES)
    assert len(specs[0].calibration) == 190
    with pytest.raises(ConfigError) as err:
        check_folds(config, specs)
    text = str(err.value)
    assert "alpha=0.002" in text and "at least 499 calibration samples" in text
    assert "fold 0 has n_cal=190" in text and "alpha >= 1/(n_cal+1) = 1/191" in text


def test_alpha_at_the_bound_passes_and_just_below_is_refused() -> None:
    specs = plan_folds_for(_config(), CASE_SAMPLES)
    check_folds(_config(alpha=1 / 191), specs)
    with pytest.raises(ConfigError, match=r"alpha=0\.005 needs at least 199 .* n_cal=190"):
        check_folds(_config(alpha=0.005), specs)


def test_batch_size_larger_than_the_train_segment_is_refused() -> None:
    config = _config(batch_size=2000)
    specs = plan_folds_for(config, CASE_SAMPLES)
    assert len(specs[0].train) == 1077
    with pytest.raises(
        ConfigError,
        match=r"batch_size=2000 is larger than fold 0's train segment "
        r"of 1077 samples.*batch_size <= 1077",
    ):
        check_folds(config, specs)
    check_folds(_config(batch_size=1077), specs)


def test_lookback_longer_than_the_train_segment_is_refused() -> None:
    with pytest.raises(
        ConfigError,
        match=r"lookback=100 is longer than fold 0's train segment of "
        r"80 samples",
    ):
        check_folds(_config(lookback=100), _spec(train=80, cal=300, gap=101))


def test_calibration_splits_need_two_samples_per_block() -> None:
    with pytest.raises(
        ConfigError,
        match=r"calibration_splits=10 needs at least 20 calibration "
        r"samples .* n_cal=16.*calibration_splits <= 8",
    ):
        check_folds(_config(calibration_splits=10, alpha=0.2), _spec(train=500, cal=16))


def test_every_problem_is_named_at_once_and_defaults_pass() -> None:
    with pytest.raises(ConfigError) as err:
        check_folds(_config(alpha=0.002, batch_size=4096), plan_folds_for(_config(), CASE_SAMPLES))
    assert "alpha=0.002" in str(err.value) and "batch_size=4096" in str(err.value)
    default = TrainConfig()
    check_folds(default, plan_folds_for(default, 5010))  # the bundled S&P 500 run


def test_purge_gaps_eating_the_segments_name_lookback() -> None:
    config = _config(lookback=300)
    with pytest.raises(ConfigError) as err:
        plan_feasible_folds(config, 1000)
    text = str(err.value)
    assert "lookback=300" in text and "lookback+1=301" in text and "1000 samples" in text
    longest = int(text.rsplit("use lookback <= ", 1)[1].split()[0])
    plan_folds_for(config.model_copy(update={"lookback": longest}), 1000)
    with pytest.raises(ConfigError):
        plan_folds_for(config.model_copy(update={"lookback": longest + 1}), 1000)


def test_too_little_data_for_any_lookback_keeps_the_plan_error() -> None:
    with pytest.raises(ConfigError, match=r"each validation segment would have"):
        plan_feasible_folds(_config(lookback=300), 60)
    assert len(plan_feasible_folds(_config(), CASE_SAMPLES)) == 2
