"""workers.diagnostics against scikit-learn, numpy and the project's own ECE and coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr
from sklearn.calibration import calibration_curve

from workers.conformal import interval_coverage
from workers.diagnostics import (
    coverage_trace,
    fold_diagnostics,
    pit_histogram,
    reliability_bins,
    thin_indices,
)
from workers.metrics import expected_calibration_error


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_reliability_bins_equal_sklearn_calibration_curve(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    p = rng.beta(2.0, 3.0, size=2000)
    y_up = (rng.uniform(size=2000) < p**1.3).astype(np.float64)
    bins = reliability_bins(y_up, p, n_bins)
    prob_true, prob_pred = calibration_curve(y_up, p, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(bins.observed, prob_true, rtol=1e-12)
    np.testing.assert_allclose(bins.mean_predicted, prob_pred, rtol=1e-12)
    assert bins.count.sum() == 2000
    assert np.all((bins.mean_predicted >= bins.lower) & (bins.mean_predicted < bins.upper))


def test_reliability_bins_on_edges_give_the_metrics_ece() -> None:
    # values on the edges: [k/n, (k+1)/n) bins, 1.0 in the last one (sklearn puts edges left)
    p = np.array([0.0, 0.1, 0.1, 0.2, 0.5, 0.5, 0.9, 1.0, 1.0, 0.35])
    y_up = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 0], dtype=np.float64)
    bins = reliability_bins(y_up, p, 10)
    assert bins.lower.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.5, 0.9])
    assert bins.count.tolist() == [1, 2, 1, 1, 2, 3]
    assert bins.observed[-1] == 1.0 and bins.mean_predicted[-1] == pytest.approx(29 / 30)
    assert bins.ece == pytest.approx(expected_calibration_error(y_up, p, 10), rel=1e-12)


def test_reliability_bins_refuse_what_is_not_a_probability() -> None:
    with pytest.raises(ValueError, match="p must lie in"):
        reliability_bins([1.0, 0.0], [0.2, 1.2])
    with pytest.raises(ValueError, match="n_bins=0"):
        reliability_bins([1.0], [0.2], 0)
    with pytest.raises(ValueError, match="one length"):
        reliability_bins([1.0, 0.0], [0.2])


def test_pit_histogram_is_numpy_histogram_of_the_normal_cdf() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=5000)
    hist = pit_histogram(z, 10)
    expected, _ = np.histogram(ndtr(z), bins=np.linspace(0.0, 1.0, 11))
    assert hist.counts.tolist() == expected.tolist()
    assert hist.expected == 500.0
    # calibrated: every bin within 5 standard errors of uniform
    assert np.all(np.abs(hist.counts - 500) < 5 * np.sqrt(500 * 0.9))


def test_pit_histogram_of_an_overconfident_forecast_is_u_shaped() -> None:
    z = np.random.default_rng(4).normal(scale=2.0, size=5000)  # sigma half what it should be
    counts = pit_histogram(z, 10).counts
    assert counts[0] > 2 * counts[5] and counts[-1] > 2 * counts[4]
    assert pit_histogram([np.nan, 0.0], 2).counts.tolist() == [0, 1]  # NaN left out; Phi(0)=0.5


def test_coverage_trace_matches_a_loop_and_interval_coverage() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(size=300)
    lo, hi = np.full(300, -1.5), np.full(300, 1.5)
    trace = coverage_trace(y, lo, hi, window=25)
    inside = [(lo[i] <= y[i] <= hi[i]) for i in range(300)]
    assert trace.coverage == pytest.approx(interval_coverage(y, lo, hi))
    assert trace.cumulative[9] == pytest.approx(np.mean(inside[:10]))
    assert np.all(np.isnan(trace.rolling[:24]))
    for end in (24, 100, 299):
        assert trace.rolling[end] == pytest.approx(np.mean(inside[end - 24 : end + 1]))
    with pytest.raises(ValueError, match="window=0"):
        coverage_trace(y, lo, hi, window=0)


def test_thin_indices_keep_the_ends_and_the_limit() -> None:
    assert thin_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    kept = thin_indices(1000, 200)
    assert len(kept) == 200 and kept[0] == 0 and kept[-1] == 999
    assert np.all(np.diff(kept) > 0)
    assert thin_indices(7, 1).tolist() == [6]


def _columns(n_cal: int, n_val: int, seed: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n_cal + n_val
    y = rng.normal(scale=0.01, size=n)
    mu = np.zeros(n)
    sigma = np.full(n, 0.01)
    p = rng.uniform(0.3, 0.7, size=n)
    return {
        "timestamp": np.array([f"2020-01-{1 + i % 28:02d}T00:00:00" for i in range(n)]),
        "segment": np.array(["calibration"] * n_cal + ["validation"] * n_val),
        "y": y,
        "p_up_raw": p,
        "p_up_cal": np.clip(p + 0.05, 0, 1),
        "conformal_lo": mu - 0.0164 * np.ones(n),
        "conformal_hi": mu + 0.0164 * np.ones(n),
        "pit_z": (y - mu) / sigma,
    }


def test_fold_diagnostics_use_only_validation_rows() -> None:
    columns = _columns(100, 400)
    columns["p_up_raw"][:100] = 1.0  # calibration rows that would show in the top bin
    out = fold_diagnostics(columns, alpha=0.1, max_points=50)
    assert out["rows"] == 400
    raw = out["reliability"]["raw"]
    assert sum(raw["count"]) == 400 and max(raw["upper"]) <= 0.7 + 1e-12
    val = slice(100, None)
    y_up = (columns["y"][val] > 0).astype(float)
    assert raw["ece"] == pytest.approx(expected_calibration_error(y_up, columns["p_up_raw"][val]))
    assert sum(out["pit"]["counts"]) == 400
    coverage = out["coverage"]
    assert coverage["target"] == pytest.approx(0.9)
    assert coverage["coverage"] == pytest.approx(
        interval_coverage(columns["y"][val], columns["conformal_lo"][val], columns["conformal_hi"][val])
    )
    assert len(coverage["timestamps"]) == len(coverage["cumulative"]) == 50
    assert coverage["cumulative"][-1] == pytest.approx(coverage["coverage"])
    assert coverage["window"] == 40 and coverage["rolling"][0] is None


def test_fold_diagnostics_name_what_is_wrong() -> None:
    columns = _columns(10, 30)
    with pytest.raises(ValueError, match="alpha=1.5"):
        fold_diagnostics(columns, alpha=1.5)
    del columns["pit_z"]
    with pytest.raises(ValueError, match="pit_z"):
        fold_diagnostics(columns, alpha=0.1)
