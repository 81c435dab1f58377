"""A completed trial's out-of-sample rows (``TrialRows``) and a study metric on a block of them.

``TrialRows`` holds one trial's validation rows over all its folds, sorted by time, as the study's
selection diagnostics (``orchestrator.hpo.selection``) take them. ``BLOCK_METRICS`` computes a
study metric (an ``epoch_metrics`` field the validation rows define) on any subset of those rows
with exactly the functions of ``workers.metrics`` and the uncalibrated ``p_up_raw``, as the
trial's objective value is computed per fold (DESIGN 6). Pure: arrays in, numbers out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from workers.conformal import interval_coverage, mean_width
from workers.metrics import (
    binary_cross_entropy,
    brier_score,
    directional_accuracy,
    expected_calibration_error,
    gaussian_nll,
    mincer_zarnowitz,
    pit_ks_pvalue,
    roc_auc,
)

__all__ = [
    "BLOCK_METRICS",
    "BlockMetric",
    "TrialRows",
    "trial_rows",
    "trial_rows_from_frame",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True)
class TrialRows:
    """One completed trial's validation rows over all its folds, sorted by ``timestamp`` (unique).

    Build it with ``trial_rows`` or ``trial_rows_from_frame`` (they validate and sort). Arrays
    have shape (n,). ``naive_mu``/``naive_sigma``: each row's naive forecast (its fold's train
    mean and standard deviation, ``workers.baselines.naive_rows``), needed for ``best_dm_p``.
    ``conformal_lo``/``conformal_hi`` are needed only for a conformal study metric.
    ``loss_weights`` (w_nll, w_bce, w_brier) only for ``val_loss``.
    """

    number: int
    timestamp: npt.NDArray[np.datetime64]
    y: FloatArray
    mu: FloatArray
    sigma: FloatArray
    p_up_raw: FloatArray
    p_up_cal: FloatArray
    naive_mu: FloatArray | None = None
    naive_sigma: FloatArray | None = None
    conformal_lo: FloatArray | None = None
    conformal_hi: FloatArray | None = None
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)


def trial_rows(
    number: int,
    timestamp: npt.ArrayLike,
    y: npt.ArrayLike,
    mu: npt.ArrayLike,
    sigma: npt.ArrayLike,
    p_up_raw: npt.ArrayLike,
    p_up_cal: npt.ArrayLike,
    *,
    naive_mu: npt.ArrayLike | None = None,
    naive_sigma: npt.ArrayLike | None = None,
    conformal_lo: npt.ArrayLike | None = None,
    conformal_hi: npt.ArrayLike | None = None,
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> TrialRows:
    """A validated ``TrialRows``, sorted by time. ``timestamp``: anything pandas reads as times
    (ISO strings, datetime64), kept to the second. Raises ValueError naming the trial for
    arrays of different lengths, a repeated timestamp, or a non-finite ``y`` or ``p_up_cal``
    (the returns and the sign strategy; a non-finite forecast only makes its metrics undefined)."""
    times = np.asarray(pd.to_datetime(np.asarray(timestamp)), dtype="datetime64[s]")
    if times.ndim != 1:
        raise ValueError(f"trial {number}: timestamp must be 1-D, got shape {times.shape}")
    order = np.argsort(times, kind="stable")
    times = times[order]
    if times.size > 1 and np.any(times[1:] == times[:-1]):
        repeated = times[1:][times[1:] == times[:-1]][0]
        raise ValueError(f"trial {number}: timestamp {repeated} appears more than once")

    def column(name: str, values: npt.ArrayLike) -> FloatArray:
        array = np.asarray(values, dtype=np.float64)
        if array.shape != times.shape:
            raise ValueError(f"trial {number}: {name} has shape {array.shape}, timestamp {times.shape}")
        return array[order]

    def finite(name: str, values: npt.ArrayLike) -> FloatArray:
        array = column(name, values)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"trial {number}: {name} must be finite")
        return array

    def optional(name: str, values: npt.ArrayLike | None) -> FloatArray | None:
        return None if values is None else column(name, values)

    return TrialRows(
        number=int(number),
        timestamp=times,
        y=finite("y", y),
        mu=column("mu", mu),
        sigma=column("sigma", sigma),
        p_up_raw=column("p_up_raw", p_up_raw),
        p_up_cal=finite("p_up_cal", p_up_cal),
        naive_mu=optional("naive_mu", naive_mu),
        naive_sigma=optional("naive_sigma", naive_sigma),
        conformal_lo=optional("conformal_lo", conformal_lo),
        conformal_hi=optional("conformal_hi", conformal_hi),
        loss_weights=loss_weights,
    )


def trial_rows_from_frame(
    number: int, frame: pd.DataFrame, loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> TrialRows:
    """``TrialRows`` from a trial's predictions (its predictions CSVs concatenated): the rows of
    segment ``validation`` when there is a ``segment`` column; ``naive_mu``, ``naive_sigma``,
    ``conformal_lo``, ``conformal_hi`` are read when present."""
    rows = frame[frame["segment"] == "validation"] if "segment" in frame.columns else frame

    def optional(name: str) -> npt.ArrayLike | None:
        return rows[name].to_numpy() if name in rows.columns else None

    return trial_rows(
        number,
        rows["timestamp"].to_numpy(),
        rows["y"].to_numpy(),
        rows["mu"].to_numpy(),
        rows["sigma"].to_numpy(),
        rows["p_up_raw"].to_numpy(),
        rows["p_up_cal"].to_numpy(),
        naive_mu=optional("naive_mu"),
        naive_sigma=optional("naive_sigma"),
        conformal_lo=optional("conformal_lo"),
        conformal_hi=optional("conformal_hi"),
        loss_weights=loss_weights,
    )


# -- the study metric on a block of rows: the definitions of workers.metrics, p_up uncalibrated


def _y_up(r: TrialRows, i: IntArray) -> FloatArray:
    return (r.y[i] > 0.0).astype(np.float64)


def _val_loss(r: TrialRows, i: IntArray) -> float:
    w_nll, w_bce, w_brier = r.loss_weights
    return (
        w_nll * gaussian_nll(r.y[i], r.mu[i], r.sigma[i])
        + w_bce * binary_cross_entropy(_y_up(r, i), r.p_up_raw[i])
        + w_brier * brier_score(_y_up(r, i), r.p_up_raw[i])
    )


def _conformal(r: TrialRows) -> tuple[FloatArray, FloatArray]:
    if r.conformal_lo is None or r.conformal_hi is None:
        raise ValueError(f"trial {r.number}: a conformal metric needs conformal_lo and conformal_hi")
    return r.conformal_lo, r.conformal_hi


BlockMetric = Callable[[TrialRows, IntArray], float | None]

# Every study metric (an epoch_metrics field) that the validation rows define; train_* and
# cal_loss are not among them.
BLOCK_METRICS: Mapping[str, BlockMetric] = {
    "val_loss": _val_loss,
    "val_nll": lambda r, i: gaussian_nll(r.y[i], r.mu[i], r.sigma[i]),
    "val_bce": lambda r, i: binary_cross_entropy(_y_up(r, i), r.p_up_raw[i]),
    "val_brier": lambda r, i: brier_score(_y_up(r, i), r.p_up_raw[i]),
    "val_auc": lambda r, i: roc_auc(_y_up(r, i), r.p_up_raw[i]),
    "DirAcc": lambda r, i: directional_accuracy(_y_up(r, i), r.p_up_raw[i]),
    "ECE": lambda r, i: expected_calibration_error(_y_up(r, i), r.p_up_raw[i]),
    "MZ_intercept": lambda r, i: mincer_zarnowitz(r.y[i], r.mu[i]).intercept,
    "MZ_slope": lambda r, i: mincer_zarnowitz(r.y[i], r.mu[i]).slope,
    "MZ_F_p": lambda r, i: mincer_zarnowitz(r.y[i], r.mu[i]).f_pvalue,
    "MZ_F_p_hac": lambda r, i: mincer_zarnowitz(r.y[i], r.mu[i]).hac_pvalue,
    "PIT_KS_p": lambda r, i: pit_ks_pvalue(r.y[i], r.mu[i], r.sigma[i]),
    "conformal_coverage": lambda r, i: interval_coverage(r.y[i], _conformal(r)[0][i], _conformal(r)[1][i]),
    "conformal_width": lambda r, i: mean_width(_conformal(r)[0][i], _conformal(r)[1][i]),
}
