"""Split conformal intervals with the normalized score |y - mu| / sigma (DESIGN section 6).

The scores are computed on the calibration segment; with exchangeable data the interval
mu +- q*sigma then covers a new y with probability >= 1 - alpha (and < 1 - alpha + 1/(n+1)
when scores have no ties). Pure functions of float64 arrays.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "conformal_interval",
    "conformal_pvalues",
    "conformal_quantile",
    "conformal_rank",
    "coverage_warning",
    "interval_coverage",
    "mean_width",
    "normalized_scores",
]

FloatArray = npt.NDArray[np.float64]

# (n+1)(1-alpha) within this relative distance of an integer is taken as that integer, so that
# alpha=0.1, n=99 gives k=90 even if 1-alpha rounds a hair above 0.9 in binary.
_RANK_RTOL = 1e-9


def _float_array(a: npt.ArrayLike) -> FloatArray:
    return np.asarray(a, dtype=np.float64)


def normalized_scores(y: npt.ArrayLike, mu: npt.ArrayLike, sigma: npt.ArrayLike) -> FloatArray:
    """Nonconformity score |y - mu| / sigma: errors in units of the forecast's own sigma."""
    y_, mu_, sigma_ = _float_array(y), _float_array(mu), _float_array(sigma)
    if not (y_.shape == mu_.shape == sigma_.shape):
        raise ValueError(
            f"y, mu, sigma must have the same shape, got {y_.shape}, {mu_.shape}, {sigma_.shape}"
        )
    scores: FloatArray = np.abs(y_ - mu_) / sigma_
    return scores


def conformal_rank(n_cal: int, alpha: float) -> int:
    """k = ceil((n_cal + 1)(1 - alpha)), the rank of the conformal quantile among the scores."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got alpha={alpha}")
    if n_cal < 0:
        raise ValueError(f"n_cal must be >= 0, got n_cal={n_cal}")
    target = (n_cal + 1) * (1.0 - alpha)
    nearest = round(target)
    if abs(target - nearest) <= _RANK_RTOL * max(1.0, target):
        return int(nearest)
    return int(math.ceil(target))


def conformal_quantile(cal_scores: npt.ArrayLike, alpha: float) -> float:
    """The k-th smallest calibration score, k = ceil((n_cal + 1)(1 - alpha)).

    Returns ``float('inf')`` when k > n_cal: too few calibration scores to guarantee 1 - alpha
    coverage, so the interval is unbounded; callers report that (``mean_width`` gives None).
    """
    scores = _float_array(cal_scores).ravel()
    k = conformal_rank(scores.shape[0], alpha)
    if k > scores.shape[0]:
        return math.inf
    # partition is O(n) and puts exactly the k-th smallest at index k-1
    return float(np.partition(scores, k - 1)[k - 1])


def conformal_interval(mu: npt.ArrayLike, sigma: npt.ArrayLike, q: float) -> tuple[FloatArray, FloatArray]:
    """(mu - q*sigma, mu + q*sigma); infinite q gives (-inf, +inf) for sigma > 0."""
    mu_, sigma_ = _float_array(mu), _float_array(sigma)
    half = q * sigma_
    return mu_ - half, mu_ + half


def conformal_pvalues(cal_scores: npt.ArrayLike, scores: npt.ArrayLike) -> FloatArray:
    """Conformal p-value of each score: (1 + #{cal_scores >= s}) / (n_cal + 1).

    Small p means y is unusual for the forecast; p <= alpha exactly when s > q (the interval
    misses y). Vectorised with a binary search in the sorted calibration scores.
    """
    cal = np.sort(_float_array(cal_scores).ravel())
    s = _float_array(scores)
    n_cal = cal.shape[0]
    at_least = n_cal - np.searchsorted(cal, s, side="left")
    pvalues: FloatArray = (1.0 + at_least) / (n_cal + 1.0)
    return pvalues


def interval_coverage(y: npt.ArrayLike, lo: npt.ArrayLike, hi: npt.ArrayLike) -> float:
    """Share of y inside the closed interval [lo, hi]."""
    y_, lo_, hi_ = _float_array(y), _float_array(lo), _float_array(hi)
    if y_.size == 0:
        raise ValueError("coverage needs at least one sample, got empty arrays")
    return float(np.mean((y_ >= lo_) & (y_ <= hi_)))


def mean_width(lo: npt.ArrayLike, hi: npt.ArrayLike) -> float | None:
    """Mean of hi - lo; ``None`` when the interval is unbounded (q was infinite)."""
    lo_, hi_ = _float_array(lo), _float_array(hi)
    if lo_.size == 0:
        raise ValueError("mean width needs at least one sample, got empty arrays")
    width = float(np.mean(hi_ - lo_))
    return width if math.isfinite(width) else None


def coverage_warning(coverage: float, alpha: float, tolerance: float, n: int) -> str | None:
    """Text when |coverage - (1 - alpha)| > tolerance, else None.

    E.g. "validation coverage 0.812 is outside 0.900 +- 0.050 (n=400)".
    """
    target = 1.0 - alpha
    if abs(coverage - target) <= tolerance:
        return None
    return f"validation coverage {coverage:.3f} is outside {target:.3f} +- {tolerance:.3f} (n={n})"
