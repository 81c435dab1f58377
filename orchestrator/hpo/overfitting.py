"""Selection-bias statistics of a search over trials: PBO by CSCV and the deflated Sharpe ratio.

Pure functions of arrays (DESIGN section 12); ``orchestrator.hpo.selection`` feeds them a study's
trials. The tests recompute ``pbo`` and ``dsr`` from the written files by the rules alone
(``tests/edge_rules.py``).

Sources:

- PBO: Bailey, Borwein, Lopez de Prado & Zhu (2017), "The Probability of Backtest Overfitting",
  Journal of Computational Finance 20(4), 39-69 (working paper 2013/2015): combinatorially
  symmetric cross-validation (CSCV), section 2.
- DSR: Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio: Correcting for Selection
  Bias, Backtest Overfitting, and Non-Normality", Journal of Portfolio Management 40(5), 94-107:
  the expected maximum Sharpe ratio of N unskilled trials and the probabilistic Sharpe ratio
  against it.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from workers.metrics import finite_or_none, spread_beyond_rounding

__all__ = [
    "MATRIX_KEY_COLUMNS",
    "CSCVResult",
    "SharpeStats",
    "cscv",
    "cscv_splits",
    "deflated_sharpe",
    "expected_max_sharpe",
    "sharpe_ratio",
    "sharpe_stats",
    "sign_strategy",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Direction = Literal["minimize", "maximize"]

# The selection matrix's columns that are not trials (selection_matrix.csv).
MATRIX_KEY_COLUMNS = ("block", "first_timestamp", "last_timestamp")
# Bytes of the (splits, S/2, N) block-value gather done at once: bounds memory for many trials.
_CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class CSCVResult:
    """CSCV over the C(S, S/2) splits, in ``itertools.combinations`` order of the in-sample blocks.

    ``logits``: ln(w / (1 - w)) per split, w = OOS rank / (N + 1) of the in-sample choice.
    ``chosen``: that choice, a column index. ``is_performance`` / ``oos_performance``: the chosen
    trial's mean block value in and out of sample, in the metric's own units (the CSCV paper's
    scatter). All arrays have shape (n_splits,).
    """

    pbo: float
    logits: FloatArray
    chosen: IntArray
    is_performance: FloatArray
    oos_performance: FloatArray


@functools.cache
def cscv_splits(n_blocks: int) -> tuple[IntArray, IntArray]:
    """In-sample and out-of-sample block indices of every split, each of shape (C(S, S/2), S/2).

    Row k holds the k-th ``itertools.combinations(range(S), S/2)`` and its complement (ascending).
    Cached (a study recomputes its diagnostics after every trial) and so read-only.
    """
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be even and >= 2, got n_blocks={n_blocks}")
    half = n_blocks // 2
    in_sample = np.array(list(itertools.combinations(range(n_blocks), half)), dtype=np.intp)
    mask = np.ones((in_sample.shape[0], n_blocks), dtype=bool)
    np.put_along_axis(mask, in_sample, False, axis=1)
    out_of_sample = np.nonzero(mask)[1].reshape(in_sample.shape[0], half).astype(np.intp)
    in_sample.setflags(write=False)
    out_of_sample.setflags(write=False)
    return in_sample, out_of_sample


def cscv(values: npt.ArrayLike, direction: Direction) -> CSCVResult:
    """The probability of backtest overfitting of a selection matrix ``values``, shape (S, N):
    S blocks in time order (S even, >= 2), N >= 2 trials, each value the study's metric on a block.

    For each of the C(S, S/2) choices of in-sample blocks (the rest out of sample): the in-sample
    choice is the trial with the best mean of its in-sample block values (``direction``; a tie
    goes to the first column); its rank among all N trials by the mean of their out-of-sample
    block values, ascending by performance (1 the worst, ties averaged), gives w = rank / (N + 1)
    and the logit ln(w / (1 - w)). PBO is the share of splits whose logit is <= 0 (BBLZ 2017,
    section 2). Means of equally many blocks are compared as sums, each summed in block order,
    so equal columns tie exactly. Raises ValueError for a wrong shape or a non-finite value.
    """
    perf = np.asarray(values, dtype=np.float64)
    if perf.ndim != 2:
        raise ValueError(f"values must be 2-D (blocks, trials), got shape {perf.shape}")
    n_blocks, n_trials = perf.shape
    if n_trials < 2:
        raise ValueError(f"CSCV needs at least 2 trials, got {n_trials}")
    if not np.all(np.isfinite(perf)):
        raise ValueError("values must be finite (leave out trials whose metric is undefined)")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got direction={direction!r}")
    in_idx, out_idx = cscv_splits(n_blocks)
    half = n_blocks // 2
    if direction == "minimize":
        perf = -perf  # larger is better from here on
    n_splits = in_idx.shape[0]
    logits = np.empty(n_splits)
    chosen = np.empty(n_splits, dtype=np.intp)
    is_sum = np.empty(n_splits)
    oos_sum = np.empty(n_splits)
    step = max(1, _CHUNK_BYTES // (8 * half * n_trials))
    for start in range(0, n_splits, step):
        part = slice(start, min(start + step, n_splits))
        in_sums = perf[in_idx[part]].sum(axis=1)  # (splits, N)
        out_sums = perf[out_idx[part]].sum(axis=1)
        best = np.argmax(in_sums, axis=1)  # the first of equal sums
        rows = np.arange(best.shape[0])
        best_out = out_sums[rows, best][:, None]
        rank = np.sum(out_sums < best_out, axis=1) + (np.sum(out_sums == best_out, axis=1) + 1) / 2.0
        w = rank / (n_trials + 1.0)
        logits[part] = np.log(w / (1.0 - w))
        chosen[part] = best
        is_sum[part] = in_sums[rows, best]
        oos_sum[part] = best_out[:, 0]
    sign = -1.0 if direction == "minimize" else 1.0
    return CSCVResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        chosen=chosen,
        is_performance=sign * is_sum / half,
        oos_performance=sign * oos_sum / half,
    )


def sign_strategy(p_up_cal: npt.ArrayLike, y: npt.ArrayLike) -> FloatArray:
    """The returns s_t = sign(p_up_cal - 0.5) * y_t of going long when up is more likely than not,
    short when less, flat at exactly 0.5 (shape (n,) for inputs of shape (n,))."""
    p, r = np.asarray(p_up_cal, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"p_up_cal and y must be 1-D of one length, got shapes {p.shape} and {r.shape}")
    out: FloatArray = np.sign(p - 0.5) * r
    return out


@dataclass(frozen=True)
class SharpeStats:
    """Per-row (not annualised) Sharpe ratio of a return series and its moments."""

    sr: float | None  # mean / standard deviation (ddof 1)
    t: int  # rows
    skew: float | None  # scipy.stats.skew, bias=True (population g1)
    kurtosis: float | None  # scipy.stats.kurtosis(fisher=False), bias=True: Pearson, 3 for a Gaussian


def _returns(returns: npt.ArrayLike) -> FloatArray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"returns must be 1-D, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("returns must be finite")
    return r


def _dispersed(r: FloatArray) -> bool:
    """At least 2 values whose range is more than rounding of their magnitude."""
    return r.shape[0] >= 2 and spread_beyond_rounding(r)


def sharpe_ratio(returns: npt.ArrayLike) -> float | None:
    """mean / standard deviation (ddof 1) of ``returns`` (shape (t,)), per row, not annualised;
    ``None`` when t < 2 or the returns have no dispersion (a flat strategy is not a strategy)."""
    r = _returns(returns)
    return finite_or_none(float(np.mean(r) / np.std(r, ddof=1))) if _dispersed(r) else None


def sharpe_stats(returns: npt.ArrayLike) -> SharpeStats:
    """The Sharpe ratio and moments of ``returns`` (shape (t,)) that the DSR takes; ``sr``,
    ``skew`` and ``kurtosis`` are ``None`` where ``sharpe_ratio`` is."""
    r = _returns(returns)
    t = int(r.shape[0])
    if not _dispersed(r):
        return SharpeStats(None, t, None, None)
    return SharpeStats(
        sr=sharpe_ratio(r),
        t=t,
        skew=finite_or_none(float(stats.skew(r))),
        kurtosis=finite_or_none(float(stats.kurtosis(r, fisher=False))),
    )


def expected_max_sharpe(n_trials: int, sr_variance: float | None) -> float | None:
    """sr0 = sqrt(V) ((1 - g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e))), g the Euler-Mascheroni
    constant: the expected maximum of N Sharpe ratios with variance V and no skill (BLdP 2014).
    With one trial nothing was selected: sr0 = 0 (the benchmark of the probabilistic
    Sharpe ratio; Phi^-1(0) would be -inf). ``None`` when N >= 2 and V is undefined.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got n_trials={n_trials}")
    if n_trials == 1:
        return 0.0
    if sr_variance is None:
        return None
    if not (math.isfinite(sr_variance) and sr_variance >= 0.0):
        raise ValueError(f"sr_variance must be finite and >= 0, got sr_variance={sr_variance}")
    g = float(np.euler_gamma)
    z = (1.0 - g) * stats.norm.ppf(1.0 - 1.0 / n_trials) + g * stats.norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return math.sqrt(sr_variance) * float(z)


def deflated_sharpe(
    sr: float | None,
    t: int,
    skew: float | None,
    kurtosis: float | None,
    n_trials: int,
    sr_variance: float | None,
) -> tuple[float | None, float | None]:
    """``(sr0, dsr)``: dsr = Phi((sr - sr0) sqrt(t - 1) / sqrt(1 - skew sr + (kurtosis - 1)/4 sr^2))
    (BLdP 2014: the probabilistic Sharpe ratio of Bailey & Lopez de Prado 2012 against sr0; ``kurtosis`` Pearson, not
    excess). ``dsr`` is ``None`` when an input is undefined, t < 3, or the variance term is not
    positive; ``sr0`` as ``expected_max_sharpe``.
    """
    sr0 = expected_max_sharpe(n_trials, sr_variance)
    if sr is None or skew is None or kurtosis is None or sr0 is None or t < 3:
        return sr0, None
    variance_term = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if not variance_term > 0.0:
        return sr0, None
    z = (sr - sr0) * math.sqrt(t - 1.0) / math.sqrt(variance_term)
    return sr0, finite_or_none(float(stats.norm.cdf(z)))
