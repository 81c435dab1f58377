"""``evaluate_epoch`` for K models at once that forecast the same rows (pure: arrays in, dicts out).

The folds of HPO trials asked together share their segments (fold k of every trial is scored on
the same validation rows), so a pack's per-epoch metrics need not be computed model by model:
each metric of ``workers.metrics`` is written here over a leading model axis, ``[K, n]``, with the
same definitions (and where a library computes it, the same library call, vectorised: scipy's
``rankdata``, ``kstwo.sf`` and ``f.sf`` take an axis or an array). A test holds every field equal to
``evaluate_epoch`` run per model. Each model's dict has exactly ``evaluate_epoch``'s keys and
conventions: undefined metrics are ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import stats

from workers.conformal import conformal_rank
from workers.metrics import (
    _CONSTANT_MU_RTOL,
    _LOG_SQRT_2PI,
    finite_or_none,
    hac_maxlags,
    pit_ks_pvalues,
    wald_f,
)

__all__ = ["StackedForecast", "evaluate_epochs"]

FloatArray = npt.NDArray[np.float64]


class StackedForecast:
    """``[K, n]`` float64 forecasts of one segment by K models."""

    def __init__(self, mu: npt.ArrayLike, sigma: npt.ArrayLike, p_up: npt.ArrayLike) -> None:
        self.mu = np.asarray(mu, dtype=np.float64)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        self.p_up = np.asarray(p_up, dtype=np.float64)
        if not (self.mu.ndim == 2 and self.mu.shape == self.sigma.shape == self.p_up.shape):
            raise ValueError(
                f"mu, sigma, p_up must be [K, n] of one shape, got {self.mu.shape}, "
                f"{self.sigma.shape}, {self.p_up.shape}"
            )


def evaluate_epochs(
    cal: StackedForecast,
    val: StackedForecast,
    y_cal: npt.ArrayLike,
    y_val: npt.ArrayLike,
    *,
    alpha: float | Sequence[float],
    loss_weights: Sequence[tuple[float, float, float]],
) -> list[dict[str, float | None]]:
    """``evaluate_epoch`` of each of the K models (``alpha`` and ``loss_weights`` per model; one
    ``alpha`` for all is allowed). ``y_cal``, ``y_val``: the segments' returns, shared by all."""
    yc = np.asarray(y_cal, dtype=np.float64)
    yv = np.asarray(y_val, dtype=np.float64)
    k = val.mu.shape[0]
    if cal.mu.shape != (k, yc.shape[0]) or val.mu.shape[1] != yv.shape[0] or yv.shape[0] == 0:
        raise ValueError(
            f"forecasts [K, n] must match the segments, got cal {cal.mu.shape} for {yc.shape[0]} "
            f"rows and val {val.mu.shape} for {yv.shape[0]} rows"
        )
    weights = np.asarray(loss_weights, dtype=np.float64).reshape(k, 3)
    alphas = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (k,))
    y_up = (yv > 0.0).astype(np.float64)

    z = (yv - val.mu) / val.sigma
    nll = np.mean(_LOG_SQRT_2PI + np.log(val.sigma) + 0.5 * z * z, axis=1)
    pc = np.clip(val.p_up, 1e-12, 1.0 - 1e-12)
    bce = -np.mean(y_up * np.log(pc) + (1.0 - y_up) * np.log1p(-pc), axis=1)
    brier = np.mean((val.p_up - y_up) ** 2, axis=1)
    loss = weights[:, 0] * nll + weights[:, 1] * bce + weights[:, 2] * brier
    columns: dict[str, FloatArray | list[float | None]] = {
        "val_loss": loss,
        "val_nll": nll,
        "val_bce": bce,
        "val_brier": brier,
        "val_auc": _roc_auc(y_up, val.p_up),
        "DirAcc": np.mean((val.p_up > 0.5) == (y_up > 0.5), axis=1),
        "ECE": _ece(y_up, val.p_up),
        **_mincer_zarnowitz(yv, val.mu),
        "PIT_KS_p": pit_ks_pvalues(z),
        **_conformal(yc, cal, yv, val, alphas),
    }
    return [{key: _value(values, i) for key, values in columns.items()} for i in range(k)]


def _value(values: FloatArray | list[float | None], i: int) -> float | None:
    value = values[i]
    return None if value is None else finite_or_none(value)


def _roc_auc(y_up: FloatArray, p: FloatArray) -> list[float | None]:
    """``metrics.roc_auc`` per model: Mann-Whitney with average ranks; None for one class."""
    positive = y_up > 0.5
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return [None] * p.shape[0]
    ranks = stats.rankdata(p, axis=1)
    u = ranks[:, positive].sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    return [float(x) for x in u / (n_pos * n_neg)]


def _ece(y_up: FloatArray, p: FloatArray, n_bins: int = 10) -> FloatArray:
    """``metrics.expected_calibration_error`` per model: 10 equal-width bins, the last closed."""
    if np.any((p < 0.0) | (p > 1.0)) or not np.all(np.isfinite(p)):
        raise ValueError("probabilities must lie in [0, 1]")
    k, n = p.shape
    bins = np.minimum(np.floor(p * n_bins).astype(np.int64), n_bins - 1)
    flat = (bins + n_bins * np.arange(k)[:, None]).ravel()
    sum_y = np.bincount(flat, weights=np.broadcast_to(y_up, (k, n)).ravel(), minlength=k * n_bins)
    sum_p = np.bincount(flat, weights=p.ravel(), minlength=k * n_bins)
    # empty bins add |0 - 0|: the sum over non-empty bins
    ece: FloatArray = np.sum(np.abs(sum_y - sum_p).reshape(k, n_bins), axis=1) / n
    return ece


def _mincer_zarnowitz(y: FloatArray, mu: FloatArray) -> dict[str, list[float | None]]:
    """``metrics.mincer_zarnowitz`` per model: OLS y = a + b*mu, classic and HAC tests of (0, 1)."""
    k, n = mu.shape
    out: dict[str, list[float | None]] = {
        "MZ_intercept": [None] * k,
        "MZ_slope": [None] * k,
        "MZ_F_p": [None] * k,
        "MZ_F_p_hac": [None] * k,
    }
    if n < 3:
        return out
    mu_mean = mu.mean(axis=1)
    mu_dev = mu - mu_mean[:, None]
    sxx = np.einsum("kn,kn->k", mu_dev, mu_dev)
    scale = np.max(np.abs(mu), axis=1)
    defined = (sxx != 0.0) & ~(np.sqrt(sxx / n) <= _CONSTANT_MU_RTOL * scale)
    if not defined.any():
        return out
    rows = np.flatnonzero(defined)
    mu, mu_mean, mu_dev, sxx = mu[rows], mu_mean[rows], mu_dev[rows], sxx[rows]
    y_mean = float(np.mean(y))
    slope = (mu_dev @ (y - y_mean)) / sxx
    intercept = y_mean - slope * mu_mean
    resid = y[None, :] - intercept[:, None] - slope[:, None] * mu
    ssr = np.einsum("kn,kn->k", resid, resid)
    df = n - 2
    delta = np.stack([intercept, slope - 1.0], axis=1)  # [K', 2]
    x = np.stack([np.ones_like(mu), mu], axis=2)  # [K', n, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xtx_inv = np.linalg.inv(np.einsum("kni,knj->kij", x, x))
        f_classic = _wald_f(delta, xtx_inv * (ssr / df)[:, None, None])
        scores = x * resid[:, :, None]
        meat = np.einsum("kni,knj->kij", scores, scores)
        lags = hac_maxlags(n)
        for lag in range(1, lags + 1):
            gamma = np.einsum("kni,knj->kij", scores[:, lag:], scores[:, :-lag])
            meat += (1.0 - lag / (lags + 1.0)) * (gamma + np.swapaxes(gamma, 1, 2))
        cov_hac = xtx_inv @ meat @ xtx_inv * (n / (n - 2))
        f_hac = _wald_f(delta, cov_hac)
    p_classic = stats.f.sf(f_classic, 2, df)
    p_hac = stats.f.sf(f_hac, 2, df)
    for j, row in enumerate(rows):
        out["MZ_intercept"][row] = finite_or_none(intercept[j])
        out["MZ_slope"][row] = finite_or_none(slope[j])
        out["MZ_F_p"][row] = None if math.isnan(f_classic[j]) else finite_or_none(p_classic[j])
        out["MZ_F_p_hac"][row] = None if math.isnan(f_hac[j]) else finite_or_none(p_hac[j])
    return out


def _wald_f(delta: FloatArray, cov: FloatArray) -> FloatArray:
    """``metrics.wald_f`` per model (a 2x2 solve each; NaN where cov is singular)."""
    return np.array([wald_f(d, c) for d, c in zip(delta, cov, strict=True)])


def _conformal(
    y_cal: FloatArray, cal: StackedForecast, y_val: FloatArray, val: StackedForecast, alphas: FloatArray
) -> dict[str, list[float | None]]:
    """Split conformal per model (``workers.conformal``): q from the calibration scores, the
    interval mu +- q*sigma on validation; coverage and mean width."""
    scores = np.abs(y_cal - cal.mu) / cal.sigma
    n_cal = scores.shape[1]
    coverage: list[float | None] = []
    width: list[float | None] = []
    for j in range(scores.shape[0]):
        rank = conformal_rank(n_cal, float(alphas[j]))
        q = math.inf if rank > n_cal else float(np.partition(scores[j], rank - 1)[rank - 1])
        half = q * val.sigma[j]
        lo, hi = val.mu[j] - half, val.mu[j] + half
        coverage.append(float(np.mean((y_val >= lo) & (y_val <= hi))))
        mean = float(np.mean(hi - lo))
        width.append(mean if math.isfinite(mean) else None)
    return {"conformal_coverage": coverage, "conformal_width": width}
