"""workers.baselines against direct numpy computations and statsmodels' HAC regression."""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest
import statsmodels.api as sm
from scipy import stats

from workers.baselines import (
    NAIVE_SIGMA_DDOF,
    NaiveForecast,
    diebold_mariano,
    fold_baseline,
    gaussian_nll_rows,
    naive_forecast,
    naive_rows,
    naive_scores,
    skill,
)
from workers.metrics import gaussian_nll, hac_maxlags

FloatArray = npt.NDArray[np.float64]
REL = 1e-9


def _returns(seed: int, n: int) -> FloatArray:
    """Fat-tailed daily-like returns with a few exact zeros (a zero counts as down)."""
    rng = np.random.default_rng(seed)
    y = 0.0003 + 0.01 * rng.standard_t(4, n) / math.sqrt(2.0)
    y[:: max(1, n // 7)] = 0.0
    return y


def _model(seed: int, y: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    rng = np.random.default_rng(seed)
    n = y.shape[0]
    mu = np.asarray(rng.normal(0.0, 0.002, n), dtype=np.float64)
    sigma = np.exp(rng.normal(math.log(0.01), 0.2, n))
    p_up = np.clip(0.5 + rng.normal(0.0, 0.05, n), 0.01, 0.99)
    return mu, sigma, p_up


def _newey_west_t(d: FloatArray) -> float:
    """mean(d) / sqrt(V / T), V the Bartlett-weighted long-run variance, written out plainly."""
    n = d.shape[0]
    lags = math.floor(4 * (n / 100) ** (2 / 9))
    e = d - d.mean()
    v = float(e @ e) / n
    for lag in range(1, lags + 1):
        v += 2 * (1 - lag / (lags + 1)) * float(e[lag:] @ e[:-lag]) / n
    return float(d.mean() / math.sqrt(v / n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_naive_forecast_is_the_train_mean_std_and_up_share(seed: int) -> None:
    y = _returns(seed, 700)
    naive = naive_forecast(y)
    assert NAIVE_SIGMA_DDOF == 1
    assert naive.mu == pytest.approx(float(np.sum(y) / y.size), rel=REL)
    assert naive.sigma == pytest.approx(math.sqrt(float(np.sum((y - y.mean()) ** 2)) / (y.size - 1)), rel=REL)
    assert naive.p_up == float(np.count_nonzero(y > 0)) / y.size
    assert np.any(y == 0.0) and naive.p_up < float(np.mean(y >= 0))  # zeros count as down
    assert naive.n_train == 700


@pytest.mark.parametrize("seed", [0, 1])
def test_naive_scores_match_a_direct_computation(seed: int) -> None:
    y_train, y_val = _returns(seed, 500), _returns(seed + 10, 300)
    naive = naive_forecast(y_train)
    out = naive_scores(naive, y_val)
    z = (y_val - naive.mu) / naive.sigma
    nll = float(np.mean(0.5 * np.log(2 * np.pi) + np.log(naive.sigma) + 0.5 * z**2))
    y_up = (y_val > 0).astype(float)
    assert out["val_nll"] == pytest.approx(nll, rel=REL)
    assert out["val_nll"] == pytest.approx(
        -float(np.mean(stats.norm.logpdf(y_val, naive.mu, naive.sigma))), rel=REL
    )
    assert out["val_brier"] == pytest.approx(float(np.mean((naive.p_up - y_up) ** 2)), rel=REL)
    # a constant forecast calls every row 'up' when p_up > 0.5, every row 'down' otherwise
    expected_diracc = float(np.mean(y_up)) if naive.p_up > 0.5 else float(np.mean(1 - y_up))
    assert out["DirAcc"] == pytest.approx(expected_diracc, rel=REL)


def test_naive_scores_with_a_zero_sigma_leave_the_nll_undefined() -> None:
    naive = naive_forecast(np.full(10, 0.001))
    assert naive.sigma == 0.0 and naive.p_up == 1.0
    out = naive_scores(naive, np.array([0.01, -0.02, 0.0]))
    assert out["val_nll"] is None
    assert out["val_brier"] == pytest.approx(2 / 3, rel=REL) and out["DirAcc"] == pytest.approx(
        1 / 3, rel=REL
    )


def test_naive_forecast_rejects_short_or_broken_input() -> None:
    with pytest.raises(ValueError, match="at least 2 train rows, got 1"):
        naive_forecast(np.array([0.01]))
    with pytest.raises(ValueError, match="must be finite"):
        naive_forecast(np.array([0.01, np.nan, 0.02]))
    with pytest.raises(ValueError, match="1-D"):
        naive_forecast(np.zeros((3, 2)))


def test_gaussian_nll_rows_are_the_terms_of_gaussian_nll() -> None:
    y = _returns(3, 400)
    mu, sigma, _ = _model(3, y)
    rows = gaussian_nll_rows(y, mu, sigma)
    assert rows.shape == (400,)
    np.testing.assert_allclose(rows, -stats.norm.logpdf(y, mu, sigma), rtol=1e-12)
    assert float(np.mean(rows)) == pytest.approx(gaussian_nll(y, mu, sigma), rel=1e-12)
    assert gaussian_nll_rows(y, 0.001, 0.02)[5] == pytest.approx(
        -stats.norm.logpdf(y[5], 0.001, 0.02), rel=1e-12
    )


@pytest.mark.parametrize(("seed", "n"), [(0, 60), (1, 250), (2, 1500)])
def test_diebold_mariano_is_statsmodels_hac_t_and_a_plain_newey_west(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=n)
    d = np.empty(n)
    d[0] = e[0]
    for t in range(1, n):  # autocorrelated differences: the lags matter
        d[t] = 0.5 * d[t - 1] + e[t]
    d = d - 0.1
    result = diebold_mariano(d)
    fit = sm.OLS(d, np.ones(n)).fit(
        cov_type="HAC", cov_kwds={"maxlags": hac_maxlags(n), "kernel": "bartlett", "use_correction": False}
    )
    assert result.n == n and result.maxlags == math.floor(4 * (n / 100) ** (2 / 9))
    assert result.stat is not None
    assert result.stat == pytest.approx(float(fit.tvalues[0]), rel=REL)
    assert result.stat == pytest.approx(_newey_west_t(d), rel=REL)
    assert result.p_value == pytest.approx(float(stats.norm.cdf(fit.tvalues[0])), rel=REL)
    # one-sided: half the two-sided p of statsmodels when d leans the model's way, else 1 - that
    half = float(fit.pvalues[0]) / 2
    assert result.p_value == pytest.approx(half if result.stat < 0 else 1 - half, rel=1e-8)
    iid_t = float(d.mean() / (d.std(ddof=0) / math.sqrt(n)))
    assert abs(result.stat - iid_t) > 0.05 * abs(iid_t)  # the HAC variance is not the iid one


def test_diebold_mariano_undefined_cases_give_none() -> None:
    assert diebold_mariano(np.array([0.1, -0.2])).stat is None
    short = diebold_mariano(np.array([0.1, -0.2]))
    assert short.p_value is None and short.n == 2 and short.maxlags is None
    flat = diebold_mariano(np.full(50, 0.3))
    assert flat.stat is None and flat.p_value is None and flat.maxlags == hac_maxlags(50)
    assert diebold_mariano(np.zeros(50)).p_value is None
    defined = diebold_mariano(np.array([0.1, -0.2, 0.05]))
    assert defined.stat is not None and defined.p_value is not None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skill_matches_a_direct_computation(seed: int) -> None:
    y_train, y_val = _returns(seed, 600), _returns(seed + 20, 400)
    mu, sigma, p_cal = _model(seed, y_val)
    naive = naive_forecast(y_train)
    out = skill(y_val, mu, sigma, p_cal, naive.mu, naive.sigma, naive.p_up)
    d = -stats.norm.logpdf(y_val, mu, sigma) + stats.norm.logpdf(y_val, naive.mu, naive.sigma)
    y_up = (y_val > 0).astype(float)
    assert out["nll_diff"] == pytest.approx(float(np.mean(d)), rel=1e-9)
    assert out["brier_skill"] == pytest.approx(
        1 - float(np.mean((p_cal - y_up) ** 2)) / float(np.mean((naive.p_up - y_up) ** 2)), rel=REL
    )
    assert out["dm_stat"] == pytest.approx(_newey_west_t(d), rel=1e-8)
    assert out["dm_p"] == pytest.approx(float(stats.norm.cdf(_newey_west_t(d))), rel=1e-8)


def test_skill_of_the_naive_forecast_against_itself_is_nil() -> None:
    y_train, y_val = _returns(4, 300), _returns(5, 200)
    naive = naive_forecast(y_train)
    n = y_val.size
    out = skill(
        y_val,
        np.full(n, naive.mu),
        np.full(n, naive.sigma),
        np.full(n, naive.p_up),
        naive.mu,
        naive.sigma,
        naive.p_up,
    )
    assert out == {"nll_diff": 0.0, "brier_skill": 0.0, "dm_stat": None, "dm_p": None}


def test_skill_sees_a_planted_ar1_signal_and_not_noise() -> None:
    rng = np.random.default_rng(11)
    n, phi, scale = 3000, 0.3, 0.01
    y = np.zeros(n)
    for t in range(1, n):
        y[t] = phi * y[t - 1] + scale * rng.normal()
    y_train, y_val, y_prev = y[1:2000], y[2000:], y[1999:-1]
    naive = naive_forecast(y_train)
    sigma = np.full(y_val.size, scale)
    p_up = stats.norm.sf(0.0, phi * y_prev, scale)
    good = skill(y_val, phi * y_prev, sigma, p_up, naive.mu, naive.sigma, naive.p_up)
    assert good["nll_diff"] is not None and good["nll_diff"] < 0
    assert good["dm_p"] is not None and good["dm_p"] < 0.01
    assert good["brier_skill"] is not None and good["brier_skill"] > 0
    noise = rng.normal(0.0, 0.003, y_val.size)
    useless = skill(y_val, noise, sigma, stats.norm.sf(0.0, noise, scale), naive.mu, naive.sigma, naive.p_up)
    assert useless["dm_p"] is not None and useless["dm_p"] > 0.5  # worse than naive: large p


def test_skill_with_per_row_naive_forecasts_of_several_folds() -> None:
    y = _returns(6, 900)
    folds = {0: naive_forecast(y[:300]), 1: naive_forecast(y[:600])}
    y_val = np.concatenate([y[300:450], y[600:750]])
    fold_id = np.repeat([0, 1], 150)
    n_mu, n_sigma, n_p = naive_rows(fold_id, folds)
    assert n_mu[0] == folds[0].mu and n_mu[-1] == folds[1].mu and n_sigma[149] == folds[0].sigma
    mu, sigma, p_cal = _model(6, y_val)
    out = skill(y_val, mu, sigma, p_cal, n_mu, n_sigma, n_p)
    d = -stats.norm.logpdf(y_val, mu, sigma) + stats.norm.logpdf(y_val, n_mu, n_sigma)
    assert out["nll_diff"] == pytest.approx(float(np.mean(d)), rel=1e-9)
    assert out["dm_stat"] == pytest.approx(_newey_west_t(d), rel=1e-8)
    with pytest.raises(ValueError, match=r"no naive forecast for fold_id \[2\]"):
        naive_rows(np.array([0, 2]), folds)


def test_skill_rejects_rows_of_another_length() -> None:
    y = _returns(7, 50)
    with pytest.raises(ValueError, match=r"naive_mu must be a scalar or have shape \(50,\)"):
        skill(y, y, np.ones(50), np.full(50, 0.5), np.zeros(49), 1.0, 0.5)


def test_fold_baseline_is_json_ready_and_consistent() -> None:
    y_train, y_val = _returns(8, 400), _returns(9, 120)
    mu, sigma, p_cal = _model(8, y_val)
    out = fold_baseline(y_train, y_val, mu, sigma, p_cal)
    json.dumps(out, allow_nan=False)
    naive = naive_forecast(y_train)
    assert out["naive"] == {"mu": naive.mu, "sigma": naive.sigma, "p_up": naive.p_up, "n_train": 400}
    assert out["baseline"] == naive_scores(naive, y_val)
    assert out["skill"] == skill(y_val, mu, sigma, p_cal, naive.mu, naive.sigma, naive.p_up)
    assert NaiveForecast(**out["naive"]) == naive  # type: ignore[arg-type]
