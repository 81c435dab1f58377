"""orchestrator.run.skill: a fold's and a run's skill against the naive forecast, recomputed directly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import statsmodels.api as sm
from scipy import stats

from orchestrator.run.skill import fold_edge, run_skill

FloatArray = npt.NDArray[np.float64]


def _fold(seed: int, start: str, n_cal: int, n_val: int, fold_id: int) -> dict[str, Any]:
    """A fold's predictions as the driver holds them: calibration rows, then validation rows."""
    rng = np.random.default_rng(seed)
    n = n_cal + n_val
    return {
        "timestamp": np.array(np.datetime64(start) + np.arange(n) * np.timedelta64(1, "D")),
        "fold_id": np.full(n, fold_id),
        "segment": np.array(["calibration"] * n_cal + ["validation"] * n_val),
        "y": rng.normal(0.0002, 0.01, n),
        "mu": rng.normal(0.0, 0.002, n),
        "sigma": np.exp(rng.normal(math.log(0.01), 0.2, n)),
        "p_up_raw": rng.uniform(0.3, 0.7, n),
        "p_up_cal": rng.uniform(0.35, 0.65, n),
    }


def _dm(d: FloatArray) -> tuple[float, float]:
    lags = math.floor(4 * (d.shape[0] / 100) ** (2 / 9))
    fit = sm.OLS(d, np.ones_like(d)).fit(cov_type="HAC", cov_kwds={"maxlags": lags})
    t = float(fit.tvalues[0])
    return t, float(stats.norm.cdf(t))


def _nll(y: FloatArray, mu: Any, sigma: Any) -> FloatArray:
    out: FloatArray = -stats.norm.logpdf(y, mu, sigma)
    return out


def test_a_fold_is_scored_on_its_validation_rows_against_its_train_segment() -> None:
    rng = np.random.default_rng(7)
    y_train = rng.normal(0.0005, 0.012, 400)
    fold = _fold(1, "2020-01-01", 60, 150, 0)
    edge = fold_edge(y_train, fold)
    assert tuple(edge) == ("naive", "baseline", "skill")  # what a fold's summary entry gets
    val = fold["segment"] == "validation"
    y, mu, sigma, p = (fold[c][val] for c in ("y", "mu", "sigma", "p_up_cal"))
    m, s, share = y_train.mean(), y_train.std(ddof=1), np.mean(y_train > 0)
    assert edge["naive"] == pytest.approx({"mu": m, "sigma": s, "p_up": share, "n_train": 400}, rel=1e-12)
    up = (y > 0).astype(float)
    assert edge["baseline"]["val_nll"] == pytest.approx(_nll(y, m, s).mean(), rel=1e-9)
    assert edge["baseline"]["val_brier"] == pytest.approx(np.mean((share - up) ** 2), rel=1e-9)
    assert edge["baseline"]["DirAcc"] == pytest.approx(np.mean((share > 0.5) == up), rel=1e-12)
    d = _nll(y, mu, sigma) - _nll(y, m, s)
    assert edge["skill"]["nll_diff"] == pytest.approx(d.mean(), rel=1e-9)
    brier_skill = 1 - np.mean((p - up) ** 2) / np.mean((share - up) ** 2)
    assert edge["skill"]["brier_skill"] == pytest.approx(brier_skill, rel=1e-9)
    dm_stat, dm_p = _dm(d)
    assert edge["skill"]["dm_stat"] == pytest.approx(dm_stat, rel=1e-9)
    assert edge["skill"]["dm_p"] == pytest.approx(dm_p, rel=1e-9)


def test_the_run_path_is_every_validation_row_in_time_order_against_its_own_fold() -> None:
    folds = {1: _fold(2, "2021-01-01", 40, 120, 1), 0: _fold(3, "2020-06-01", 40, 130, 0)}
    naive = {
        0: {"mu": 0.001, "sigma": 0.011, "p_up": 0.55, "n_train": 300},
        1: {"mu": -0.0005, "sigma": 0.009, "p_up": 0.48, "n_train": 460},
    }
    got = run_skill(folds, naive)
    # fold 0's rows come first in time although fold 1 is first in the mapping
    parts = [(k, folds[k], folds[k]["segment"] == "validation") for k in (0, 1)]
    y = np.concatenate([f["y"][v] for _, f, v in parts])
    mu = np.concatenate([f["mu"][v] for _, f, v in parts])
    sigma = np.concatenate([f["sigma"][v] for _, f, v in parts])
    p = np.concatenate([f["p_up_cal"][v] for _, f, v in parts])
    nm, ns, npu = (
        np.concatenate([np.full(int(v.sum()), naive[k][key]) for k, _, v in parts])
        for key in ("mu", "sigma", "p_up")
    )
    d = _nll(y, mu, sigma) - _nll(y, nm, ns)
    up = (y > 0).astype(float)
    dm_stat, dm_p = _dm(d)
    assert got["nll_diff"] == pytest.approx(d.mean(), rel=1e-9)
    assert got["brier_skill"] == pytest.approx(
        1 - np.mean((p - up) ** 2) / np.mean((npu - up) ** 2), rel=1e-9
    )
    assert got["dm_stat"] == pytest.approx(dm_stat, rel=1e-9)  # the HAC lags see the time order
    assert got["dm_p"] == pytest.approx(dm_p, rel=1e-9)
    swapped = run_skill(folds, {0: naive[1], 1: naive[0]})
    assert swapped["nll_diff"] != pytest.approx(got["nll_diff"], rel=1e-6)  # each fold's own forecast


def test_a_run_without_folds_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one fold"):
        run_skill({}, {})
