"""The naive forecast of a fold and a model's skill against it (DESIGN section 12): pure functions.

The naive forecast knows only the fold's train segment: ``mu`` its mean return, ``sigma`` its
sample standard deviation (ddof 1) and ``p_up`` its share of up moves (``y > 0``; a zero return
counts as down, as ``y_up`` does in ``workers.metrics``). It is a constant over the validation
rows, scored there with exactly the functions of ``workers.metrics``.

``skill`` compares a model with it on the same rows:

- ``nll_diff``: mean over rows of the model's Gaussian NLL minus the naive NLL (< 0: the model
  is better);
- ``brier_skill``: 1 - Brier(model p_up_cal) / Brier(naive p_up) (> 0: the model is better).
  The model's *calibrated* ``p_up_cal`` is used: it is the probability the product hands out,
  fitted on the calibration segment before the validation rows, as the naive up-share is fitted
  on the train segment; both are out of sample, so neither side gets an unearned calibration;
- ``dm_stat``, ``dm_p``: the Diebold-Mariano test (Diebold & Mariano 1995, "Comparing
  Predictive Accuracy", JBES 13(3)) of the per-row log-score differences
  d_t = NLL_model,t - NLL_naive,t: dm_stat = mean(d) / sqrt(V / T), V the Newey-West (1987)
  long-run variance of d (Bartlett kernel, lag floor(4 (T/100)^(2/9)), no small-sample factor),
  one-sided: dm_p = Phi(dm_stat), small when the model's loss is lower. That is statsmodels'
  ``OLS(d, 1).fit(cov_type="HAC", cov_kwds={"maxlags": L})`` t-value, which is what runs here
  (0.15 ms for 500 rows; statsmodels itself takes about 1 s to import, paid once per process on
  the first call).

Every value is a finite float or ``None`` (never NaN): ``None`` where it is undefined (fewer
than 3 rows for DM, zero variance of d, a zero naive Brier score, a zero naive sigma).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from workers.metrics import (
    brier_score,
    directional_accuracy,
    finite_or_none,
    gaussian_nll,
    hac_maxlags,
    spread_beyond_rounding,
)

__all__ = [
    "NAIVE_SIGMA_DDOF",
    "DMResult",
    "NaiveForecast",
    "diebold_mariano",
    "fold_baseline",
    "gaussian_nll_rows",
    "naive_forecast",
    "naive_rows",
    "naive_scores",
    "skill",
]

FloatArray = npt.NDArray[np.float64]

# Sample standard deviation: the usual "standard deviation of the returns" (pandas' default),
# and slightly wider than the maximum-likelihood one, as a forecast of a new draw should be.
NAIVE_SIGMA_DDOF = 1
# Fewest rows for the Diebold-Mariano test (a mean, a variance and one lag).
_DM_MIN_ROWS = 3
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class NaiveForecast:
    """The constant forecast of one fold, from its train segment's returns."""

    mu: float  # mean return
    sigma: float  # standard deviation, ddof NAIVE_SIGMA_DDOF (0.0 when the train returns are constant)
    p_up: float  # share of rows with y > 0, in [0, 1]
    n_train: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mu": self.mu, "sigma": self.sigma, "p_up": self.p_up, "n_train": self.n_train}


@dataclass(frozen=True)
class DMResult:
    """A one-sided Diebold-Mariano test: ``stat`` < 0 and ``p_value`` small favour the model."""

    stat: float | None
    p_value: float | None
    n: int
    maxlags: int | None


def _vector(name: str, values: npt.ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(array)))} non-finite values")
    return array


def _rows(name: str, values: npt.ArrayLike, n: int) -> FloatArray:
    """``values`` as ``n`` float64 rows: a scalar is repeated, an array must have length ``n``."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n, float(array))
    if array.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got shape {array.shape}")
    return array


def naive_forecast(y_train: npt.ArrayLike) -> NaiveForecast:
    """The naive forecast fitted on a train segment's returns ``y_train`` (shape (n,), n >= 2).

    ``sigma`` is exactly 0.0 when the returns are constant (up to rounding). Raises ValueError when there are fewer than 2 rows or a value is not finite.
    """
    y = _vector("y_train", y_train)
    if y.shape[0] < 2:
        raise ValueError(f"the naive forecast needs at least 2 train rows, got {y.shape[0]}")
    # constant returns: exactly 0, not the rounding residue of np.std (the NLL is then undefined)
    constant = not spread_beyond_rounding(y)
    return NaiveForecast(
        mu=float(np.mean(y)),
        sigma=0.0 if constant else float(np.std(y, ddof=NAIVE_SIGMA_DDOF)),
        p_up=float(np.mean(y > 0.0)),
        n_train=int(y.shape[0]),
    )


def naive_scores(naive: NaiveForecast, y_val: npt.ArrayLike) -> dict[str, float | None]:
    """``val_nll``, ``val_brier``, ``DirAcc`` of the naive forecast on the validation returns.

    The definitions of ``workers.metrics`` (DESIGN 6): ``DirAcc`` is the share of rows where
    ``p_up > 0.5`` agrees with ``y > 0``, so a naive up-share above 1/2 scores the validation
    up-share. ``val_nll`` is ``None`` when the naive sigma is 0.
    """
    y = _vector("y_val", y_val)
    if y.shape[0] == 0:
        raise ValueError("y_val must have at least one row, got 0")
    n = y.shape[0]
    y_up = (y > 0.0).astype(np.float64)
    p_up = np.full(n, naive.p_up)
    with np.errstate(divide="ignore", invalid="ignore"):
        nll = gaussian_nll(y, np.full(n, naive.mu), np.full(n, naive.sigma))
    return {
        "val_nll": finite_or_none(nll),
        "val_brier": finite_or_none(brier_score(y_up, p_up)),
        "DirAcc": finite_or_none(directional_accuracy(y_up, p_up)),
    }


def gaussian_nll_rows(y: npt.ArrayLike, mu: npt.ArrayLike, sigma: npt.ArrayLike) -> FloatArray:
    """Per-row Gaussian NLL with its constant, shape (n,): the terms whose mean is
    ``workers.metrics.gaussian_nll``. ``mu`` and ``sigma`` may be scalars."""
    y_ = np.asarray(y, dtype=np.float64)
    if y_.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y_.shape}")
    n = y_.shape[0]
    mu_, sigma_ = _rows("mu", mu, n), _rows("sigma", sigma, n)
    z = (y_ - mu_) / sigma_
    out: FloatArray = _LOG_SQRT_2PI + np.log(sigma_) + 0.5 * z * z
    return out


def diebold_mariano(loss_diff: npt.ArrayLike) -> DMResult:
    """One-sided Diebold-Mariano test of ``loss_diff`` (shape (T,), model loss minus benchmark
    loss per row, in time order): H0 E[d] = 0 against H1 E[d] < 0 (the model is better).

    dm_stat = mean(d) / sqrt(V / T), V = the Newey-West variance with Bartlett weights
    1 - l/(L+1) up to L = floor(4 (T/100)^(2/9)) (Newey & West 1987; the lag rule of Newey &
    West 1994 as in ``workers.metrics.hac_maxlags``), referred to N(0, 1): p = Phi(dm_stat).
    Computed by statsmodels' OLS of d on a constant with ``cov_type="HAC"`` (its defaults: Bartlett
    kernel, no small-sample correction, normal reference). ``stat`` and ``p_value`` are ``None``
    when T < 3 or d has no variance (it is constant up to rounding).
    """
    d = _vector("loss_diff", loss_diff)
    n = int(d.shape[0])
    if n < _DM_MIN_ROWS:
        return DMResult(None, None, n, None)
    maxlags = hac_maxlags(n)
    if not spread_beyond_rounding(d):  # constant up to rounding
        return DMResult(None, None, n, maxlags)
    import statsmodels.api as sm  # about 1 s on first import: only where a test is run

    with np.errstate(divide="ignore", invalid="ignore"):
        fit = sm.OLS(d, np.ones(n)).fit(cov_type="HAC", cov_kwds={"maxlags": maxlags})
        stat = finite_or_none(float(np.asarray(fit.tvalues)[0]))
    p_value = None if stat is None else finite_or_none(float(stats.norm.cdf(stat)))
    return DMResult(stat, p_value, n, maxlags)


def skill(
    y: npt.ArrayLike,
    mu: npt.ArrayLike,
    sigma: npt.ArrayLike,
    p_up_cal: npt.ArrayLike,
    naive_mu: npt.ArrayLike,
    naive_sigma: npt.ArrayLike,
    naive_p_up: npt.ArrayLike,
) -> dict[str, float | None]:
    """The model's skill against the naive forecast on the same rows, in time order.

    ``y``, ``mu``, ``sigma``, ``p_up_cal``: shape (n,), n >= 1, the model's validation rows
    (returns, Gaussian forecast, calibrated probability of y > 0). ``naive_*``: scalars (one
    fold) or shape (n,) (several folds, each row with its fold's naive forecast: ``naive_rows``).
    Keys ``nll_diff``, ``brier_skill``, ``dm_stat``, ``dm_p`` (see the module docstring).
    """
    y_ = _vector("y", y)
    n = y_.shape[0]
    if n == 0:
        raise ValueError("skill needs at least one row, got 0")
    mu_, sigma_, p_ = _rows("mu", mu, n), _rows("sigma", sigma, n), _rows("p_up_cal", p_up_cal, n)
    naive_mu_, naive_sigma_ = _rows("naive_mu", naive_mu, n), _rows("naive_sigma", naive_sigma, n)
    naive_p = _rows("naive_p_up", naive_p_up, n)
    y_up = (y_ > 0.0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = gaussian_nll_rows(y_, mu_, sigma_) - gaussian_nll_rows(y_, naive_mu_, naive_sigma_)
    naive_brier = brier_score(y_up, naive_p)
    brier_skill = None if naive_brier == 0.0 else 1.0 - brier_score(y_up, p_) / naive_brier
    nll_diff = finite_or_none(float(np.mean(d)))
    dm = diebold_mariano(d) if nll_diff is not None else DMResult(None, None, n, None)
    return {
        "nll_diff": nll_diff,
        "brier_skill": finite_or_none(brier_skill),
        "dm_stat": dm.stat,
        "dm_p": dm.p_value,
    }


def naive_rows(
    fold_id: npt.ArrayLike, naive: Mapping[int, NaiveForecast]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Each row's naive ``(mu, sigma, p_up)``, shape (n,) each, from its ``fold_id`` (shape (n,)).

    This is how rows of several folds (a run's whole out-of-sample path, or a study trial's rows)
    are compared with the naive forecast: each row against the forecast of its own fold's train
    segment. Raises ValueError for a fold id missing from ``naive``.
    """
    ids = np.asarray(fold_id)
    if ids.ndim != 1:
        raise ValueError(f"fold_id must be 1-D, got shape {ids.shape}")
    missing = sorted({int(k) for k in np.unique(ids)} - set(naive))
    if missing:
        raise ValueError(f"no naive forecast for fold_id {missing}")
    mu = np.array([naive[int(k)].mu for k in ids], dtype=np.float64)
    sigma = np.array([naive[int(k)].sigma for k in ids], dtype=np.float64)
    p_up = np.array([naive[int(k)].p_up for k in ids], dtype=np.float64)
    return mu, sigma, p_up


def fold_baseline(
    y_train: npt.ArrayLike,
    y_val: npt.ArrayLike,
    mu: npt.ArrayLike,
    sigma: npt.ArrayLike,
    p_up_cal: npt.ArrayLike,
) -> dict[str, dict[str, float | int | None]]:
    """One fold's ``naive`` forecast, its ``baseline`` scores and the model's ``skill``.

    ``y_train``: the fold's train returns; ``y_val``, ``mu``, ``sigma``, ``p_up_cal``: its
    validation rows (shape (n,)). JSON-ready; the summary's per-fold ``baseline`` and ``skill``,
    with ``naive`` kept so that rows of several folds can be compared later (``naive_rows``).
    """
    naive = naive_forecast(y_train)
    return {
        "naive": dict(naive.as_dict()),  # a copy typed as the others (dict is invariant)
        "baseline": naive_scores(naive, y_val),
        "skill": skill(y_val, mu, sigma, p_up_cal, naive.mu, naive.sigma, naive.p_up),
    }
