"""workers.conformal: exact ranks on hand examples and coverage on exchangeable data."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from workers.conformal import (
    conformal_interval,
    conformal_pvalues,
    conformal_quantile,
    conformal_rank,
    coverage_warning,
    interval_coverage,
    mean_width,
    normalized_scores,
)

FloatArray = npt.NDArray[np.float64]


def test_normalized_scores() -> None:
    y, mu, sigma = np.array([1.0, -1.0, 0.5]), np.array([0.0, 0.0, 0.5]), np.array([2.0, 0.5, 1.0])
    scores = normalized_scores(y, mu, sigma)
    np.testing.assert_array_equal(scores, [0.5, 2.0, 0.0])
    with pytest.raises(ValueError, match="same shape"):
        normalized_scores(np.zeros(2), np.zeros(3), np.ones(2))


def test_quantile_is_kth_smallest_on_hand_example() -> None:
    cal = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])  # n = 9
    # alpha = 0.1: k = ceil(10 * 0.9) = 9 -> the largest
    assert conformal_quantile(cal, 0.1) == 0.9
    # alpha = 0.2: k = ceil(10 * 0.8) = 8 -> 0.8
    assert conformal_quantile(cal, 0.2) == 0.8
    # alpha = 0.25: k = ceil(7.5) = 8 -> 0.8 ; alpha = 0.35: k = ceil(6.5) = 7 -> 0.7
    assert conformal_quantile(cal, 0.25) == 0.8
    assert conformal_quantile(cal, 0.35) == 0.7
    # alpha = 0.5: k = 5 -> the median
    assert conformal_quantile(cal, 0.5) == 0.5


def test_quantile_is_inf_when_rank_exceeds_n() -> None:
    cal = np.array([0.3, 0.1, 0.2, 0.4])  # n = 4, alpha = 0.1: k = ceil(4.5) = 5 > 4
    assert conformal_quantile(cal, 0.1) == math.inf
    lo, hi = conformal_interval(np.array([0.0, 1.0]), np.array([1.0, 2.0]), math.inf)
    assert interval_coverage(np.array([5.0, -7.0]), lo, hi) == 1.0
    assert mean_width(lo, hi) is None


@pytest.mark.parametrize(
    ("n_cal", "alpha", "k"),
    [
        (99, 0.1, 90),
        (9, 0.1, 9),
        (199, 0.05, 190),
        (999, 0.01, 990),
        (9, 0.3, 7),
        (2000, 0.1, 1801),
    ],
)
def test_rank_has_no_binary_rounding_surprises(n_cal: int, alpha: float, k: int) -> None:
    assert conformal_rank(n_cal, alpha) == k


def test_rank_rejects_bad_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        conformal_rank(10, 1.0)


def test_interval_width_and_coverage_hand_example() -> None:
    lo, hi = conformal_interval(np.array([0.0, 1.0]), np.array([1.0, 2.0]), 1.5)
    np.testing.assert_array_equal(lo, [-1.5, -2.0])
    np.testing.assert_array_equal(hi, [1.5, 4.0])
    assert mean_width(lo, hi) == pytest.approx(4.5)
    # closed interval: an endpoint counts as covered
    assert interval_coverage(np.array([1.5, 4.5]), lo, hi) == 0.5


def test_pvalues_exact_on_tiny_example() -> None:
    cal = np.array([0.3, 0.1, 0.2, 0.2])  # sorted 0.1, 0.2, 0.2, 0.3 ; n + 1 = 5
    scores = np.array([0.05, 0.1, 0.2, 0.25, 0.3, 0.9])
    # counts of cal >= s: 4, 4, 3, 1, 1, 0
    expected = np.array([5, 5, 4, 2, 2, 1]) / 5.0
    np.testing.assert_allclose(conformal_pvalues(cal, scores), expected, rtol=0, atol=0)


def test_pvalues_match_brute_force() -> None:
    rng = np.random.default_rng(11)
    cal = np.round(rng.exponential(size=200), 2)  # ties on purpose
    scores = np.round(rng.exponential(size=300), 2)
    brute = np.array([(1 + np.sum(cal >= s)) / (len(cal) + 1) for s in scores])
    np.testing.assert_array_equal(conformal_pvalues(cal, scores), brute)


def _heteroscedastic(rng: np.random.Generator, n: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    x = rng.uniform(-1.0, 1.0, n)
    mu = 0.5 * x
    sigma = 0.2 + 0.8 * np.abs(x)
    y = mu + sigma * rng.normal(size=n)
    return y, mu, sigma


def test_coverage_on_exchangeable_data_is_within_binomial_tolerance() -> None:
    rng = np.random.default_rng(2024)
    alpha, n_cal, n_test = 0.1, 2000, 20_000
    y_cal, mu_cal, sigma_cal = _heteroscedastic(rng, n_cal)
    y_test, mu_test, sigma_test = _heteroscedastic(rng, n_test)
    q = conformal_quantile(normalized_scores(y_cal, mu_cal, sigma_cal), alpha)
    lo, hi = conformal_interval(mu_test, sigma_test, q)
    coverage = interval_coverage(y_test, lo, hi)
    # the randomness is in q (n_cal) and in the test draws (n_test)
    se = math.sqrt(alpha * (1 - alpha) * (1 / n_cal + 1 / n_test))
    assert coverage >= 1 - alpha - 4 * se
    assert coverage <= 1 - alpha + 1 / (n_cal + 1) + 4 * se
    # scores are N(0,1) magnitudes: q is near the 95% normal quantile
    assert q == pytest.approx(stats.norm.ppf(0.95), abs=0.1)


def test_pvalues_are_uniform_on_exchangeable_data_and_match_coverage() -> None:
    rng = np.random.default_rng(99)
    alpha = 0.1
    cal_scores = normalized_scores(*_heteroscedastic(rng, 2000))
    y, mu, sigma = _heteroscedastic(rng, 5000)
    scores = normalized_scores(y, mu, sigma)
    pvalues = conformal_pvalues(cal_scores, scores)
    assert stats.kstest(pvalues, "uniform").pvalue > 0.001
    # p <= alpha exactly when the interval misses y
    q = conformal_quantile(cal_scores, alpha)
    lo, hi = conformal_interval(mu, sigma, q)
    covered = (y >= lo) & (y <= hi)
    np.testing.assert_array_equal(pvalues > alpha, covered)


def test_coverage_warning() -> None:
    assert coverage_warning(0.9, 0.1, 0.05, 400) is None
    assert coverage_warning(0.86, 0.1, 0.05, 400) is None
    assert (
        coverage_warning(0.8125, 0.1, 0.05, 400)
        == "validation coverage 0.812 is outside 0.900 +- 0.050 (n=400)"
    )
    text = coverage_warning(0.99, 0.1, 0.05, 123)
    assert text is not None and "0.990" in text and "n=123" in text
