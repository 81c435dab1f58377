"""A fold's calibration pictures as numbers: reliability bins of ``p_up``, the PIT histogram, conformal coverage.

Pure functions of arrays (numpy, and scipy's normal CDF for the PIT). The dashboard's diagnostics
route and the HTML reports draw what ``fold_diagnostics`` returns, so the two show the same thing.

Reliability bins are the equal-width bins of ``workers.metrics.expected_calibration_error``
(``[k/n, (k+1)/n)``, the last one closed), so the ECE in a fold's metrics is the count-weighted
gap of the diagram's points; away from the bin edges they equal scikit-learn's
``calibration_curve(strategy="uniform")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

__all__ = [
    "CoverageTrace",
    "PitHistogram",
    "ReliabilityBins",
    "coverage_trace",
    "fold_diagnostics",
    "pit_histogram",
    "reliability_bins",
    "thin_indices",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ReliabilityBins:
    """The non-empty bins of a reliability diagram: where each lies, how many, predicted vs observed."""

    lower: FloatArray
    upper: FloatArray
    count: IntArray
    mean_predicted: FloatArray
    observed: FloatArray

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean of |observed - mean_predicted|."""
        total = int(self.count.sum())
        if total == 0:
            return 0.0
        return float(np.sum(self.count * np.abs(self.observed - self.mean_predicted)) / total)

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        return {
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "count": self.count.tolist(),
            "mean_predicted": self.mean_predicted.tolist(),
            "observed": self.observed.tolist(),
        }


@dataclass(frozen=True)
class PitHistogram:
    """Counts of the PIT values ``Phi(pit_z)`` in equal bins of [0, 1]; flat when the forecast is calibrated."""

    edges: FloatArray
    counts: IntArray

    @property
    def expected(self) -> float:
        """The count every bin would have under a uniform PIT."""
        return float(self.counts.sum()) / len(self.counts)

    def as_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist(), "expected": self.expected}


@dataclass(frozen=True)
class CoverageTrace:
    """Whether each y fell inside its conformal interval, as overall, cumulative and rolling shares."""

    coverage: float
    cumulative: FloatArray
    rolling: FloatArray  # NaN until ``window`` rows are in
    window: int


def _vector(name: str, values: npt.ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _same_length(**arrays: FloatArray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays must have one length, got {lengths}")
    return next(iter(lengths.values()))


def _check_bins(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")


def _equal_width_bin(values: FloatArray, n_bins: int) -> IntArray:
    """Bin k holds [k/n, (k+1)/n); 1.0 goes in the last bin."""
    return np.minimum(np.floor(values * n_bins).astype(np.int64), n_bins - 1)


def reliability_bins(y_up: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10) -> ReliabilityBins:
    """Observed frequency of ``y_up`` against the mean forecast ``p`` in each non-empty bin."""
    _check_bins("n_bins", n_bins)
    y_, p_ = _vector("y_up", y_up), _vector("p", p)
    _same_length(y_up=y_, p=p_)
    if not np.all(np.isfinite(p_)) or np.any((p_ < 0.0) | (p_ > 1.0)):
        raise ValueError("p must lie in [0, 1] (finite probabilities)")
    bins = _equal_width_bin(p_, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y_, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p_, minlength=n_bins)
    filled = counts > 0
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return ReliabilityBins(
        lower=edges[:-1][filled],
        upper=edges[1:][filled],
        count=counts[filled].astype(np.int64),
        mean_predicted=sum_p[filled] / counts[filled],
        observed=sum_y[filled] / counts[filled],
    )


def pit_histogram(pit_z: npt.ArrayLike, n_bins: int = 10) -> PitHistogram:
    """Histogram of ``Phi(pit_z)``, the forecast CDF at the realized value (``pit_z = (y - mu) / sigma``)."""
    _check_bins("n_bins", n_bins)
    z = _vector("pit_z", pit_z)
    z = z[np.isfinite(z)]
    u = ndtr(z)
    counts = np.bincount(_equal_width_bin(u, n_bins), minlength=n_bins).astype(np.int64)
    return PitHistogram(edges=np.linspace(0.0, 1.0, n_bins + 1), counts=counts)


def coverage_trace(y: npt.ArrayLike, lo: npt.ArrayLike, hi: npt.ArrayLike, window: int) -> CoverageTrace:
    """Share of ``y`` inside ``[lo, hi]``: over all rows, up to each row, and over the last ``window`` rows."""
    _check_bins("window", window)
    y_, lo_, hi_ = _vector("y", y), _vector("lo", lo), _vector("hi", hi)
    n = _same_length(y=y_, lo=lo_, hi=hi_)
    if n == 0:
        empty = np.zeros(0, dtype=np.float64)
        return CoverageTrace(coverage=float("nan"), cumulative=empty, rolling=empty, window=window)
    inside = ((y_ >= lo_) & (y_ <= hi_)).astype(np.float64)
    running = np.cumsum(inside)
    cumulative = running / np.arange(1, n + 1)
    rolling = np.full(n, np.nan)
    if n >= window:
        ahead = np.concatenate(([0.0], running))
        rolling[window - 1 :] = (ahead[window:] - ahead[:-window]) / window
    return CoverageTrace(
        coverage=float(cumulative[-1]), cumulative=cumulative, rolling=rolling, window=window
    )


def thin_indices(n: int, max_points: int) -> IntArray:
    """At most ``max_points`` evenly spaced indices of ``range(n)``, always with the first and last."""
    _check_bins("max_points", max_points)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    if max_points == 1:
        return np.array([n - 1], dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def _json_floats(values: FloatArray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def fold_diagnostics(
    columns: Mapping[str, npt.ArrayLike],
    alpha: float,
    *,
    n_bins: int = 10,
    pit_bins: int = 10,
    max_points: int = 200,
) -> dict[str, Any]:
    """The validation rows' reliability (raw and calibrated ``p_up``), PIT histogram and coverage, JSON-ready.

    ``columns`` are a predictions CSV's (``segment``, ``timestamp``, ``y``, ``p_up_raw``,
    ``p_up_cal``, ``conformal_lo``, ``conformal_hi``, ``pit_z``); rows whose ``segment`` is not
    ``validation`` are left out. The coverage curves are thinned to ``max_points`` points.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got alpha={alpha!r}")
    missing = sorted(
        {"segment", "timestamp", "y", "p_up_raw", "p_up_cal", "conformal_lo", "conformal_hi", "pit_z"}
        - set(columns)
    )
    if missing:
        raise ValueError(f"predictions lack column(s) {', '.join(missing)}")
    validation = np.asarray(columns["segment"]) == "validation"
    y = _vector("y", columns["y"])[validation]
    y_up = (y > 0.0).astype(np.float64)
    n = len(y)
    window = max(1, min(n, max(20, n // 10)))
    trace = coverage_trace(
        y,
        _vector("conformal_lo", columns["conformal_lo"])[validation],
        _vector("conformal_hi", columns["conformal_hi"])[validation],
        window,
    )
    keep = thin_indices(n, max_points) if n else np.zeros(0, dtype=np.int64)
    timestamps = np.asarray(columns["timestamp"])[validation]
    raw = reliability_bins(y_up, _vector("p_up_raw", columns["p_up_raw"])[validation], n_bins)
    calibrated = reliability_bins(y_up, _vector("p_up_cal", columns["p_up_cal"])[validation], n_bins)
    return {
        "rows": n,
        "reliability": {
            "n_bins": n_bins,
            "raw": {**raw.as_dict(), "ece": raw.ece},
            "calibrated": {**calibrated.as_dict(), "ece": calibrated.ece},
        },
        "pit": pit_histogram(_vector("pit_z", columns["pit_z"])[validation], pit_bins).as_dict(),
        "coverage": {
            "target": 1.0 - alpha,
            "coverage": trace.coverage if n else None,
            "window": trace.window,
            "timestamps": [str(t) for t in timestamps[keep]],
            "cumulative": _json_floats(trace.cumulative[keep]),
            "rolling": _json_floats(trace.rolling[keep]),
        },
    }
