"""evaluate_epochs (K models at once) against evaluate_epoch run model by model."""

from __future__ import annotations

import numpy as np
import pytest

from workers.metrics import Forecast, evaluate_epoch
from workers.stacked_metrics import StackedForecast, evaluate_epochs


def forecasts(rng: np.random.Generator, k: int, n: int) -> StackedForecast:
    return StackedForecast(
        mu=rng.normal(0.0, 2e-3, (k, n)),
        sigma=0.01 + rng.uniform(0.0, 5e-3, (k, n)),
        p_up=rng.uniform(0.2, 0.8, (k, n)),
    )


def one(f: StackedForecast, j: int) -> Forecast:
    return Forecast(mu=f.mu[j], sigma=f.sigma[j], p_up=f.p_up[j])


def assert_equal_per_model(
    cal: StackedForecast,
    val: StackedForecast,
    y_cal: np.ndarray,
    y_val: np.ndarray,
    alphas: list[float],
    weights: list[tuple[float, float, float]],
) -> None:
    stacked = evaluate_epochs(cal, val, y_cal, y_val, alpha=alphas, loss_weights=weights)
    assert len(stacked) == len(alphas) > 0
    for j, got in enumerate(stacked):
        want = evaluate_epoch(
            one(cal, j), one(val, j), y_cal, y_val, alpha=alphas[j], loss_weights=weights[j]
        )
        assert list(got) == list(want)
        for key, value in want.items():
            if value is None:
                assert got[key] is None, (j, key)
            else:
                assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (j, key)


@pytest.mark.parametrize("seed", range(4))
def test_every_field_equals_evaluate_epoch_model_by_model(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n_cal, n_val = 6, int(rng.integers(30, 400)), int(rng.integers(30, 400))
    y_cal, y_val = rng.normal(0.0, 0.01, n_cal), rng.normal(0.0, 0.01, n_val)
    alphas = [float(a) for a in rng.uniform(0.05, 0.3, k)]
    weights = [tuple(float(w) for w in rng.uniform(0.0, 2.0, 3)) for _ in range(k)]
    assert_equal_per_model(forecasts(rng, k, n_cal), forecasts(rng, k, n_val), y_cal, y_val, alphas, weights)  # type: ignore[arg-type]


def test_undefined_metrics_are_none_as_model_by_model() -> None:
    rng = np.random.default_rng(7)
    k, n = 3, 12
    cal, val = forecasts(rng, k, n), forecasts(rng, k, n)
    val.mu[1] = 0.004  # a constant mu: the MZ regression is not identified
    y_val = np.abs(rng.normal(0.0, 0.01, n))  # every return up: one class, no AUC
    y_cal = rng.normal(0.0, 0.01, n)
    # alpha 0.01 on 12 calibration rows: the conformal quantile is infinite (no width)
    assert_equal_per_model(cal, val, y_cal, y_val, [0.01, 0.1, 0.2], [(1.0, 1.0, 1.0)] * k)
    got = evaluate_epochs(cal, val, y_cal, y_val, alpha=0.01, loss_weights=[(1.0, 1.0, 1.0)] * k)
    assert {m["val_auc"] for m in got} == {None}
    assert got[1]["MZ_slope"] is None and got[0]["MZ_slope"] is not None
    assert {m["conformal_width"] for m in got} == {None}


def test_shapes_must_match_the_segments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="must match the segments"):
        evaluate_epochs(
            forecasts(rng, 2, 10),
            forecasts(rng, 2, 10),
            np.zeros(9),
            np.zeros(10),
            alpha=0.1,
            loss_weights=[(1, 1, 1)] * 2,
        )
