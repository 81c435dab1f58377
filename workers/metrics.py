"""Forecast metrics of DESIGN section 6: pure functions of float64 arrays.

``y`` is the realized next log return, ``mu``/``sigma`` the forecast Gaussian, ``p_up`` the
forecast probability that ``y > 0`` and ``y_up = (y > 0)`` as 0.0/1.0. Each function returns a
plain ``float``; where a metric is undefined for the data (one class only, constant ``mu``, too
few samples) it returns ``None`` rather than NaN, because the values go straight into JSON.
``evaluate_epoch`` assembles one epoch's validation metrics (the ``epoch_metrics`` fields) from
a model's ``Forecast`` of the calibration and validation segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from workers.conformal import (
    conformal_interval,
    conformal_quantile,
    interval_coverage,
    mean_width,
    normalized_scores,
)

__all__ = [
    "Forecast",
    "MZResult",
    "binary_cross_entropy",
    "brier_score",
    "directional_accuracy",
    "evaluate_epoch",
    "expected_calibration_error",
    "finite_or_none",
    "forecast_metrics",
    "gaussian_nll",
    "hac_maxlags",
    "mincer_zarnowitz",
    "pit_ks_pvalues",
    "spread_beyond_rounding",
    "wald_f",
    "pit_ks_pvalue",
    "roc_auc",
    "segment_loss",
]

FloatArray = npt.NDArray[np.float64]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# mu whose standard deviation is below this fraction of its magnitude is treated as constant:
# the MZ regression is then not identified (the slope would be rounding noise). The model computes
# in float32 (machine epsilon 1.2e-7): mu that differs only in its last bits on a few rows is one
# value, so the bound is a few float32 ulps, not float64's.
_CONSTANT_MU_RTOL = 1e-6


def _vectors(*arrays: npt.ArrayLike) -> list[FloatArray]:
    """Return the arguments as 1-D float64 arrays of one common, non-zero length."""
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    for a in out:
        if a.ndim != 1:
            raise ValueError(f"expected 1-D arrays, got shape {a.shape}")
    lengths = {a.shape[0] for a in out}
    if len(lengths) != 1:
        raise ValueError(f"arrays must have the same length, got lengths {[a.shape[0] for a in out]}")
    if lengths == {0}:
        raise ValueError("metrics need at least one sample, got empty arrays")
    return out


def spread_beyond_rounding(x: FloatArray) -> bool:
    """Whether ``x`` (non-empty, finite) holds more than one value beyond rounding: its range is
    over 4 float64 ulps of its largest magnitude."""
    return bool(np.max(x) - np.min(x) > 4.0 * np.finfo(np.float64).eps * np.max(np.abs(x)))


def finite_or_none(x: float | np.floating | None) -> float | None:
    """``float(x)`` when finite, else ``None`` (JSON has no NaN/Infinity)."""
    if x is None:
        return None
    value = float(x)
    return value if math.isfinite(value) else None


def gaussian_nll(y: npt.ArrayLike, mu: npt.ArrayLike, sigma: npt.ArrayLike) -> float:
    """Mean Gaussian negative log-likelihood, with the 0.5*log(2*pi) constant included."""
    y_, mu_, sigma_ = _vectors(y, mu, sigma)
    z = (y_ - mu_) / sigma_
    return float(np.mean(_LOG_SQRT_2PI + np.log(sigma_) + 0.5 * z * z))


def binary_cross_entropy(y_up: npt.ArrayLike, p: npt.ArrayLike, eps: float = 1e-12) -> float:
    """Mean BCE; ``p`` is clipped to [eps, 1-eps] so a confident miss costs a finite amount."""
    y_, p_ = _vectors(y_up, p)
    pc = np.clip(p_, eps, 1.0 - eps)
    return float(-np.mean(y_ * np.log(pc) + (1.0 - y_) * np.log1p(-pc)))


def brier_score(y_up: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean squared error of the probability, in [0, 1]."""
    y_, p_ = _vectors(y_up, p)
    return float(np.mean((p_ - y_) ** 2))


def roc_auc(y_up: npt.ArrayLike, p: npt.ArrayLike) -> float | None:
    """ROC AUC as the Mann-Whitney statistic with average ranks (ties count 1/2, as sklearn).

    ``None`` when ``y_up`` holds one class only.
    """
    y_, p_ = _vectors(y_up, p)
    positive = y_ > 0.5
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(p_)  # average ranks for ties
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def directional_accuracy(y_up: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Share of samples where ``p > 0.5`` agrees with ``y_up`` (p == 0.5 counts as 'down')."""
    y_, p_ = _vectors(y_up, p)
    return float(np.mean((p_ > 0.5) == (y_ > 0.5)))


def expected_calibration_error(y_up: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` equal-width bins on [0, 1]; each bin is [k/n, (k+1)/n), the last closed.

    Bin index = min(floor(p * n_bins), n_bins - 1); the sum runs over non-empty bins of
    n_b / N * |mean(y_up in b) - mean(p in b)|.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got n_bins={n_bins}")
    y_, p_ = _vectors(y_up, p)
    if np.any((p_ < 0.0) | (p_ > 1.0)) or not np.all(np.isfinite(p_)):
        raise ValueError("probabilities must lie in [0, 1]")
    bins = np.minimum(np.floor(p_ * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    sum_y = np.bincount(bins, weights=y_, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p_, minlength=n_bins)
    filled = counts > 0
    # n_b/N * |sum_y/n_b - sum_p/n_b| == |sum_y - sum_p| / N
    return float(np.sum(np.abs(sum_y[filled] - sum_p[filled])) / p_.shape[0])


@dataclass(frozen=True)
class MZResult:
    """Mincer-Zarnowitz regression y = a + b*mu and p-values of the joint test a=0, b=1."""

    intercept: float | None
    slope: float | None
    f_pvalue: float | None
    hac_pvalue: float | None


def hac_maxlags(n: int) -> int:
    """Newey-West lag truncation floor(4 * (n/100)^(2/9))."""
    return int(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0)))


def mincer_zarnowitz(y: npt.ArrayLike, mu: npt.ArrayLike) -> MZResult:
    """OLS y = a + b*mu with two joint tests of a=0, b=1 (an unbiased forecast).

    ``f_pvalue``: classic F-test, F = ((SSR_restricted - SSR) / 2) / (SSR / (n-2)) ~ F(2, n-2).
    It over-rejects when the variance of y moves (DESIGN 6), hence ``hac_pvalue``: the same
    Wald statistic with a Newey-West covariance (Bartlett kernel, ``hac_maxlags(n)`` lags,
    small-sample factor n/(n-2)), divided by 2 and referred to F(2, n-2). That is exactly what
    statsmodels gives for ``OLS(...).fit(cov_type='HAC', cov_kwds={'maxlags': L,
    'use_correction': True}).f_test(...)``; it is the F form, not the chi2(2) Wald form.
    All four fields are ``None`` when n < 3 or ``mu`` is (near-)constant.
    """
    y_, mu_ = _vectors(y, mu)
    n = y_.shape[0]
    undefined = MZResult(None, None, None, None)
    if n < 3:
        return undefined
    mu_mean = float(np.mean(mu_))
    mu_dev = mu_ - mu_mean
    sxx = float(mu_dev @ mu_dev)
    scale = float(np.max(np.abs(mu_)))
    if sxx == 0.0 or math.sqrt(sxx / n) <= _CONSTANT_MU_RTOL * scale:
        return undefined

    slope = float(mu_dev @ (y_ - np.mean(y_))) / sxx
    intercept = float(np.mean(y_)) - slope * mu_mean
    resid = y_ - intercept - slope * mu_
    ssr = float(resid @ resid)
    df_resid = n - 2
    # distance of the estimate from the hypothesis (a, b) = (0, 1)
    delta = np.array([intercept, slope - 1.0])

    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.column_stack([np.ones(n), mu_])
        try:
            xtx_inv = np.linalg.inv(x.T @ x)
        except np.linalg.LinAlgError:  # not identified after all: no test, not a failed fold
            return undefined
        cov_classic = xtx_inv * (ssr / df_resid)
        f_classic = wald_f(delta, cov_classic)
        cov_hac = _newey_west_cov(x, resid, xtx_inv, hac_maxlags(n))
        f_hac = wald_f(delta, cov_hac)

    return MZResult(
        intercept=finite_or_none(intercept),
        slope=finite_or_none(slope),
        f_pvalue=_f_sf(f_classic, df_resid),
        hac_pvalue=_f_sf(f_hac, df_resid),
    )


def wald_f(delta: FloatArray, cov: FloatArray) -> float:
    """F statistic delta' cov^-1 delta / 2 of a two-restriction test; NaN if cov is singular."""
    try:
        return float(delta @ np.linalg.solve(cov, delta)) / 2.0
    except np.linalg.LinAlgError:
        return math.nan


def _f_sf(f_stat: float, df_denom: int) -> float | None:
    if math.isnan(f_stat):
        return None
    return finite_or_none(stats.f.sf(f_stat, 2, df_denom))


def _newey_west_cov(x: FloatArray, resid: FloatArray, xtx_inv: FloatArray, maxlags: int) -> FloatArray:
    """Sandwich (X'X)^-1 S (X'X)^-1 * n/(n-k), S with Bartlett weights 1 - l/(maxlags+1)."""
    n, k = x.shape
    scores = x * resid[:, None]
    meat = scores.T @ scores
    for lag in range(1, maxlags + 1):
        gamma = scores[lag:].T @ scores[:-lag]
        meat += (1.0 - lag / (maxlags + 1.0)) * (gamma + gamma.T)
    cov: FloatArray = (xtx_inv @ meat @ xtx_inv) * (n / (n - k))
    return cov


def pit_ks_pvalue(y: npt.ArrayLike, mu: npt.ArrayLike, sigma: npt.ArrayLike) -> float:
    """p-value of scipy's default (two-sided, method 'auto') KS test of (y-mu)/sigma vs N(0, 1).

    Computed as ``stats.kstest`` computes it ('auto' is its exact branch: ``kstwo.sf`` of the
    two-sided D, clipped to [0, 1]), without kstest's per-call wrapper, which costs about three
    quarters of the call at n=400 (0.71 ms against 0.16; ``bench/metrics_ks.py``) and a third of
    ``evaluate_epoch``. ``tests/test_metrics.py`` holds it equal to ``stats.kstest``.
    """
    y_, mu_, sigma_ = _vectors(y, mu, sigma)
    return float(pit_ks_pvalues(((y_ - mu_) / sigma_)[None, :])[0])


def pit_ks_pvalues(z: FloatArray) -> FloatArray:
    """``pit_ks_pvalue`` of each row of ``z`` (``[K, n]`` standardized residuals): the same exact
    two-sided D and ``kstwo.sf``, one call for all rows (``kstest(axis=1)`` loops over them)."""
    z = np.sort(z, axis=1)
    n = z.shape[1]
    cdf = special.ndtr(z)  # stats.norm.cdf
    d = np.maximum(
        np.max(np.arange(1.0, n + 1) / n - cdf, axis=1), np.max(cdf - np.arange(0.0, n) / n, axis=1)
    )
    pvalues: FloatArray = np.clip(stats.kstwo.sf(d, n), 0.0, 1.0)
    return pvalues


def _gaussian_interval_coverage(y: FloatArray, mu: FloatArray, sigma: FloatArray, alpha: float) -> float:
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * sigma
    return float(np.mean((y >= mu - half) & (y <= mu + half)))


def forecast_metrics(
    y: npt.ArrayLike,
    mu: npt.ArrayLike,
    sigma: npt.ArrayLike,
    p_up: npt.ArrayLike,
    *,
    alpha_interval: float | None = None,
    w_nll: float = 1.0,
    w_bce: float = 1.0,
    w_brier: float = 1.0,
) -> dict[str, float | None]:
    """All per-segment metrics of DESIGN 6 (conformal fields are added by the caller).

    Keys: nll, bce, brier, loss, auc, DirAcc, ECE, MZ_intercept, MZ_slope, MZ_F_p, MZ_F_p_hac,
    PIT_KS_p; with ``alpha_interval`` also ``gaussian_coverage``, the share of y inside the
    central (1 - alpha_interval) interval of N(mu, sigma) (a reference for conformal coverage).
    ``loss`` is the training objective w_nll*nll + w_bce*bce + w_brier*brier. Every value is a
    finite float or None.
    """
    y_, mu_, sigma_, p_ = _vectors(y, mu, sigma, p_up)
    y_up = (y_ > 0.0).astype(np.float64)
    nll = gaussian_nll(y_, mu_, sigma_)
    bce = binary_cross_entropy(y_up, p_)
    brier = brier_score(y_up, p_)
    mz = mincer_zarnowitz(y_, mu_)
    values: dict[str, float | None] = {
        "nll": nll,
        "bce": bce,
        "brier": brier,
        "loss": w_nll * nll + w_bce * bce + w_brier * brier,
        "auc": roc_auc(y_up, p_),
        "DirAcc": directional_accuracy(y_up, p_),
        "ECE": expected_calibration_error(y_up, p_),
        "MZ_intercept": mz.intercept,
        "MZ_slope": mz.slope,
        "MZ_F_p": mz.f_pvalue,
        "MZ_F_p_hac": mz.hac_pvalue,
        "PIT_KS_p": pit_ks_pvalue(y_, mu_, sigma_),
    }
    if alpha_interval is not None:
        if not 0.0 < alpha_interval < 1.0:
            raise ValueError(f"alpha_interval must be in (0, 1), got alpha_interval={alpha_interval}")
        values["gaussian_coverage"] = _gaussian_interval_coverage(y_, mu_, sigma_, alpha_interval)
    return {key: finite_or_none(value) for key, value in values.items()}


@dataclass(frozen=True)
class Forecast:
    """Float64 forecasts of one segment."""

    mu: FloatArray
    sigma: FloatArray
    p_up: FloatArray


def segment_loss(f: Forecast, y: FloatArray, weights: tuple[float, float, float]) -> float:
    """The training objective on a segment (early stopping watches it on calibration); inf
    when undefined, so an undefined loss never counts as an improvement."""
    y_up = (y > 0).astype(np.float64)
    loss = (
        weights[0] * gaussian_nll(y, f.mu, f.sigma)
        + weights[1] * binary_cross_entropy(y_up, f.p_up)
        + weights[2] * brier_score(y_up, f.p_up)
    )
    return loss if math.isfinite(loss) else math.inf


def evaluate_epoch(
    cal: Forecast,
    val: Forecast,
    y_cal: FloatArray,
    y_val: FloatArray,
    *,
    alpha: float,
    loss_weights: tuple[float, float, float],
) -> dict[str, float | None]:
    """Validation metrics of DESIGN 6 plus conformal coverage fitted on the calibration segment.

    The keys are the validation fields of ``epoch_metrics`` (its ``val_*``, ``MZ_*``, ...).
    """
    w = loss_weights
    m = forecast_metrics(y_val, val.mu, val.sigma, val.p_up, w_nll=w[0], w_bce=w[1], w_brier=w[2])
    q = conformal_quantile(normalized_scores(y_cal, cal.mu, cal.sigma), alpha)
    lo, hi = conformal_interval(val.mu, val.sigma, q)
    return {
        "val_loss": m["loss"],
        "val_nll": m["nll"],
        "val_bce": m["bce"],
        "val_brier": m["brier"],
        "val_auc": m["auc"],
        "DirAcc": m["DirAcc"],
        "ECE": m["ECE"],
        "MZ_intercept": m["MZ_intercept"],
        "MZ_slope": m["MZ_slope"],
        "MZ_F_p": m["MZ_F_p"],
        "MZ_F_p_hac": m["MZ_F_p_hac"],
        "PIT_KS_p": m["PIT_KS_p"],
        "conformal_coverage": interval_coverage(y_val, lo, hi),
        "conformal_width": mean_width(lo, hi),
    }
