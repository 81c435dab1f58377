"""workers.metrics against the reference implementations in sklearn, scipy and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import statsmodels.api as sm
from scipy import stats
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

from orchestrator.messages import EPOCH_METRIC_FIELDS
from workers.metrics import (
    Forecast,
    MZResult,
    binary_cross_entropy,
    brier_score,
    directional_accuracy,
    evaluate_epoch,
    expected_calibration_error,
    finite_or_none,
    forecast_metrics,
    gaussian_nll,
    hac_maxlags,
    mincer_zarnowitz,
    pit_ks_pvalue,
    roc_auc,
    segment_loss,
)

FloatArray = npt.NDArray[np.float64]
REL = 1e-9


def _labels_and_probs(seed: int, n: int = 500) -> tuple[FloatArray, FloatArray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.99, n)
    y_up = (rng.uniform(size=n) < p).astype(np.float64)
    return y_up, p


def _forecasts(seed: int, n: int = 400) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Heteroscedastic returns with a weakly informative mu; sigma varies with time."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 0.005, n)
    sigma = np.exp(rng.normal(np.log(0.01), 0.3, n))
    y = 0.0005 + 0.8 * mu + sigma * rng.standard_t(5, n) / math.sqrt(5 / 3)
    p_up = 1.0 / (1.0 + np.exp(-(mu / sigma) * 3.0))
    return y, mu, sigma, p_up


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_nll_matches_scipy_logpdf(seed: int) -> None:
    y, mu, sigma, _ = _forecasts(seed)
    expected = -stats.norm.logpdf(y, loc=mu, scale=sigma).mean()
    assert gaussian_nll(y, mu, sigma) == pytest.approx(expected, rel=REL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bce_brier_diracc_match_sklearn(seed: int) -> None:
    y_up, p = _labels_and_probs(seed)
    assert binary_cross_entropy(y_up, p) == pytest.approx(log_loss(y_up, p), rel=REL)
    assert brier_score(y_up, p) == pytest.approx(brier_score_loss(y_up, p), rel=REL)
    assert directional_accuracy(y_up, p) == pytest.approx(
        accuracy_score(y_up, (p > 0.5).astype(np.float64)), rel=REL
    )


def test_bce_clips_confident_misses() -> None:
    # p = 0 for a positive costs -log(eps), not infinity
    assert binary_cross_entropy(np.array([1.0]), np.array([0.0]), eps=1e-12) == pytest.approx(
        -math.log(1e-12), rel=REL
    )
    assert binary_cross_entropy(np.array([0.0, 1.0]), np.array([0.0, 1.0])) < 1e-11


def test_diracc_counts_one_half_as_down() -> None:
    assert directional_accuracy(np.array([0.0, 1.0]), np.array([0.5, 0.5])) == 0.5
    assert directional_accuracy(np.array([1.0]), np.array([0.5])) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    y_up, p = _labels_and_probs(seed, n=600)
    p_ties = np.round(p, 1)  # 11 distinct values: many ties across classes
    assert roc_auc(y_up, p) == pytest.approx(roc_auc_score(y_up, p), rel=REL)
    assert roc_auc(y_up, p_ties) == pytest.approx(roc_auc_score(y_up, p_ties), rel=REL)


def test_auc_tiny_hand_example_and_one_class() -> None:
    # pairs (pos, neg): (0.8 > 0.3) 1, (0.8 > 0.5) 1, (0.5 = 0.5) 1/2, (0.5 > 0.3) 1 -> 3.5/4
    y_up = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.8, 0.3, 0.5, 0.5])
    assert roc_auc(y_up, p) == pytest.approx(0.875, rel=REL)
    assert roc_auc(np.ones(5), np.linspace(0.1, 0.9, 5)) is None
    assert roc_auc(np.zeros(5), np.linspace(0.1, 0.9, 5)) is None


def _ece_loop(y_up: FloatArray, p: FloatArray, n_bins: int = 10) -> float:
    """The stated convention written as plainly as possible."""
    total = 0.0
    n = len(p)
    for b in range(n_bins):
        members = [i for i in range(n) if min(math.floor(p[i] * n_bins), n_bins - 1) == b]
        if not members:
            continue
        mean_y = sum(y_up[i] for i in members) / len(members)
        mean_p = sum(p[i] for i in members) / len(members)
        total += len(members) / n * abs(mean_y - mean_p)
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_ece_matches_direct_loop_including_edges(seed: int) -> None:
    rng = np.random.default_rng(seed)
    edges = np.array([0.0, 1.0, 1.0, 0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.9999999, 0.05, 0.95])
    p = np.concatenate([rng.uniform(0.0, 1.0, 300), edges])
    y_up = (rng.uniform(size=p.size) < p).astype(np.float64)
    assert expected_calibration_error(y_up, p) == pytest.approx(_ece_loop(y_up, p), rel=REL)
    assert expected_calibration_error(y_up, p, n_bins=7) == pytest.approx(
        _ece_loop(y_up, p, n_bins=7), rel=REL
    )


def test_ece_bin_edges_hand_example() -> None:
    # bins: 0.0 -> bin 0 ; 0.1 -> bin 1 (left-closed) ; 1.0 -> bin 9 (last bin closed)
    p = np.array([0.0, 0.1, 1.0, 0.95])
    y_up = np.array([1.0, 0.0, 0.0, 1.0])
    # bin 0: |1 - 0| * 1/4 ; bin 1: |0 - 0.1| * 1/4 ; bin 9: |0.5 - 0.975| * 2/4
    # (a separate bin for p == 1 would give 0.05/4 + 1/4 instead of the last term)
    expected = 0.25 * 1.0 + 0.25 * 0.1 + 0.5 * 0.475
    assert expected_calibration_error(y_up, p) == pytest.approx(expected, rel=REL)
    # a perfectly calibrated constant forecast has zero ECE
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == 0.0


def test_ece_rejects_probabilities_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([1.0]), np.array([1.5]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mincer_zarnowitz_matches_statsmodels(seed: int) -> None:
    y, mu, _, _ = _forecasts(seed)
    result = mincer_zarnowitz(y, mu)
    exog = sm.add_constant(mu)
    ols = sm.OLS(y, exog).fit()
    assert result.intercept == pytest.approx(ols.params[0], rel=REL)
    assert result.slope == pytest.approx(ols.params[1], rel=REL)
    assert result.f_pvalue == pytest.approx(float(ols.f_test("const = 0, x1 = 1").pvalue), rel=REL)

    maxlags = hac_maxlags(len(y))
    hac = sm.OLS(y, exog).fit(cov_type="HAC", cov_kwds={"maxlags": maxlags, "use_correction": True})
    hac_test = hac.f_test("const = 0, x1 = 1")
    assert result.hac_pvalue == pytest.approx(float(hac_test.pvalue), rel=1e-8)
    assert hac_test.df_denom == len(y) - 2  # the F(2, n-2) form, not chi2(2)


def test_mincer_zarnowitz_hac_differs_from_classic_under_autocorrelation() -> None:
    # AR(1) errors: the HAC p-value must not just echo the classic one
    rng = np.random.default_rng(7)
    n = 500
    mu = np.cumsum(rng.normal(size=n)) * 0.01
    e = np.zeros(n)
    for t in range(1, n):
        e[t] = 0.8 * e[t - 1] + rng.normal()
    result = mincer_zarnowitz(mu + 0.01 * e, mu)
    assert result.f_pvalue is not None and result.hac_pvalue is not None
    assert abs(result.f_pvalue - result.hac_pvalue) > 1e-3


def test_hac_maxlags_rule() -> None:
    assert hac_maxlags(100) == 4
    assert hac_maxlags(400) == math.floor(4 * 4 ** (2 / 9))
    assert hac_maxlags(5) == 2


def test_mincer_zarnowitz_undefined_cases_give_none() -> None:
    undefined = MZResult(None, None, None, None)
    y = np.array([0.1, -0.2, 0.3, 0.0])
    assert mincer_zarnowitz(y, np.full(4, 0.01)) == undefined
    # seven 0.7s: their float mean is not exactly 0.7, so the centered variance is ~1e-32, not 0
    seven_y = np.array([0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2])
    assert mincer_zarnowitz(seven_y, np.full(7, 0.7)) == undefined
    assert mincer_zarnowitz(y[:2], np.array([0.1, 0.2])) == undefined


def test_mincer_zarnowitz_mu_that_differs_only_in_float32_rounding_is_constant() -> None:
    # The model computes in float32: on bars that do not move its mu is one value, a few rows
    # one ulp above it (seen in a trial of test_hpo_cli's stale-tail study).
    undefined = MZResult(None, None, None, None)
    flat = np.float32(0.0015873825)
    mu = np.full(437, flat, dtype=np.float32)
    mu[:100] = np.nextafter(flat, np.float32(1.0))  # was: slope 1.2e7, p = 1e-4
    y = np.random.default_rng(0).normal(0.0, 0.01, 437)
    assert mincer_zarnowitz(y, mu) == undefined
    mu[5:100] = flat  # was: LinAlgError: Singular matrix
    assert mincer_zarnowitz(np.zeros(437), mu) == undefined


def test_mincer_zarnowitz_perfect_forecast_accepts_unbiasedness() -> None:
    rng = np.random.default_rng(3)
    mu = rng.normal(size=1000)
    result = mincer_zarnowitz(mu + rng.normal(size=1000), mu)
    assert result.slope == pytest.approx(1.0, abs=0.1)
    assert result.f_pvalue is not None and result.f_pvalue > 0.001


@pytest.mark.parametrize("seed", range(40))
def test_pit_ks_matches_scipy(seed: int) -> None:
    # the hand-written exact branch of kstest (bench/metrics_ks.py) against kstest itself, over
    # sizes from a handful of rows to thousands, fat tails (small p-values) and ties
    rng = np.random.default_rng(seed)
    n = int(rng.choice([5, 16, 100, 400, 3000]))
    y, mu, sigma = rng.standard_t(3, n), np.zeros(n), np.full(n, rng.uniform(0.5, 2.0))
    if seed % 4 == 0:
        y = np.round(y, 1)  # ties
    expected = stats.kstest((y - mu) / sigma, "norm").pvalue
    assert pit_ks_pvalue(y, mu, sigma) == pytest.approx(expected, rel=REL, abs=1e-300)


def test_finite_or_none() -> None:
    assert finite_or_none(None) is None
    assert finite_or_none(float("nan")) is None
    assert finite_or_none(float("inf")) is None
    assert finite_or_none(np.float64(2.5)) == 2.5
    assert type(finite_or_none(np.float64(2.5))) is float


EXPECTED_KEYS = {
    "nll",
    "bce",
    "brier",
    "loss",
    "auc",
    "DirAcc",
    "ECE",
    "MZ_intercept",
    "MZ_slope",
    "MZ_F_p",
    "MZ_F_p_hac",
    "PIT_KS_p",
}


def test_forecast_metrics_keys_values_and_loss_weights() -> None:
    y, mu, sigma, p_up = _forecasts(0)
    out = forecast_metrics(y, mu, sigma, p_up, w_nll=0.5, w_bce=2.0, w_brier=3.0)
    assert set(out) == EXPECTED_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    y_up = (y > 0).astype(np.float64)
    assert out["bce"] == pytest.approx(log_loss(y_up, p_up), rel=REL)
    assert out["auc"] == pytest.approx(roc_auc_score(y_up, p_up), rel=REL)
    nll, bce, brier = out["nll"], out["bce"], out["brier"]
    assert nll is not None and bce is not None and brier is not None
    assert out["loss"] == pytest.approx(0.5 * nll + 2.0 * bce + 3.0 * brier, rel=REL)


def test_forecast_metrics_undefined_values_are_none_not_nan() -> None:
    # all y > 0 (one class) and constant mu: auc and MZ undefined
    n = 50
    y = np.linspace(0.001, 0.02, n)
    out = forecast_metrics(y, np.full(n, 0.01), np.full(n, 0.01), np.full(n, 0.6))
    for key in ("auc", "MZ_intercept", "MZ_slope", "MZ_F_p", "MZ_F_p_hac"):
        assert out[key] is None, key
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.values())
    assert out["DirAcc"] == 1.0


def test_forecast_metrics_gaussian_coverage_when_asked() -> None:
    rng = np.random.default_rng(5)
    n = 20_000
    mu = rng.normal(0.0, 0.01, n)
    sigma = rng.uniform(0.005, 0.02, n)
    y = mu + sigma * rng.normal(size=n)
    out = forecast_metrics(y, mu, sigma, np.full(n, 0.5), alpha_interval=0.1)
    assert set(out) == EXPECTED_KEYS | {"gaussian_coverage"}
    assert out["gaussian_coverage"] == pytest.approx(0.9, abs=4 * math.sqrt(0.09 / n))


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        brier_score(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="at least one sample"):
        gaussian_nll(np.zeros(0), np.zeros(0), np.ones(0))


def _forecast(seed: int, n: int = 400) -> tuple[FloatArray, Forecast]:
    y, mu, sigma, p_up = _forecasts(seed, n)
    return y, Forecast(mu=mu, sigma=sigma, p_up=p_up)


def test_evaluate_epoch_gives_the_validation_fields_of_epoch_metrics() -> None:
    (y_cal, cal), (y_val, val) = _forecast(10, 300), _forecast(11, 500)
    out = evaluate_epoch(cal, val, y_cal, y_val, alpha=0.1, loss_weights=(1.0, 2.0, 0.5))
    train_fields = {"train_loss", "train_nll", "train_bce", "train_brier", "cal_loss"}
    assert set(out) == set(EPOCH_METRIC_FIELDS) - train_fields
    m = forecast_metrics(y_val, val.mu, val.sigma, val.p_up, w_nll=1.0, w_bce=2.0, w_brier=0.5)
    assert out["val_loss"] == m["loss"] and out["val_auc"] == m["auc"]
    assert out["MZ_F_p_hac"] == m["MZ_F_p_hac"] and out["PIT_KS_p"] == m["PIT_KS_p"]
    # split conformal fitted on the calibration forecasts only (DESIGN 6)
    scores = np.sort(np.abs(y_cal - cal.mu) / cal.sigma)
    q = scores[math.ceil((len(scores) + 1) * 0.9) - 1]
    inside = np.abs(y_val - val.mu) <= q * val.sigma
    assert out["conformal_coverage"] == pytest.approx(inside.mean(), rel=REL)
    assert out["conformal_width"] == pytest.approx(np.mean(2 * q * val.sigma), rel=REL)


def test_evaluate_epoch_ignores_validation_outcomes_when_fitting_the_interval() -> None:
    (y_cal, cal), (y_val, val) = _forecast(12, 300), _forecast(13, 300)
    base = evaluate_epoch(cal, val, y_cal, y_val, alpha=0.2, loss_weights=(1.0, 1.0, 1.0))
    shifted = evaluate_epoch(cal, val, y_cal, y_val + 1.0, alpha=0.2, loss_weights=(1.0, 1.0, 1.0))
    assert shifted["conformal_width"] == base["conformal_width"]
    assert shifted["conformal_coverage"] == 0.0


def test_segment_loss_is_the_weighted_objective_and_inf_when_undefined() -> None:
    y, f = _forecast(14)
    y_up = (y > 0).astype(np.float64)
    expected = (
        0.5 * gaussian_nll(y, f.mu, f.sigma)
        + 2.0 * binary_cross_entropy(y_up, f.p_up)
        + 3.0 * brier_score(y_up, f.p_up)
    )
    assert segment_loss(f, y, (0.5, 2.0, 3.0)) == pytest.approx(expected, rel=REL)
    broken = Forecast(mu=f.mu, sigma=np.zeros_like(f.sigma), p_up=f.p_up)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert segment_loss(broken, y, (1.0, 1.0, 1.0)) == math.inf
