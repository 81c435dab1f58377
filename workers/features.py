"""Causal features and the next-bar target from canonical OHLCV bars (pure: arrays in, arrays out).

Notation: bar ``t`` has open ``o_t``, high ``h_t``, low ``l_t``, close ``c_t``, volume ``v_t``;
``r_t = log(c_t / c_{t-1})`` is the close-to-close log return; ``L`` is ``lookback`` and
``S = min(5, L)`` the short window. Every window ends at ``t`` and looks backwards, so the
features of bar ``t`` read bars ``t-L .. t`` only. The target is ``y_t = log(c_{t+1} / c_t)``.

Features (``FEATURE_NAMES``, in column order):

``ret_1``        ``r_t``, the last log return.
``ret_lag1``     ``r_{t-1}``, the return before it (lag 2 and beyond enter through ``ret_short``).
``ret_short``    ``log(c_t / c_{t-S})``, the cumulative return over ``S`` bars.
``ret_long``     ``log(c_t / c_{t-L})``, the cumulative return over ``L`` bars.
``vol_short``    population std of ``r`` over the last ``S`` returns (realized volatility).
``vol_long``     population std of ``r`` over the last ``L`` returns.
``range_1``      ``log(h_t / l_t)``, the bar's log range (an intraday volatility proxy).
``range_short``  mean of ``log(h / l)`` over the last ``S`` bars.
``gap``          ``log(o_t / c_{t-1})``, the overnight gap.
``close_pos``    ``(c_t - l_t) / (h_t - l_t)`` in [0, 1]; 0.5 for a bar with ``h_t == l_t``.
``volume_z``     z-score of ``log1p(v_t)`` against the last ``L`` bars (``t`` included);
                 0 where that window is constant (index data often has volume 0), so it is
                 bounded by ``sqrt(L - 1)`` and never divides by ~0.

The longest window reads ``L + 1`` bars (``L`` returns), so the first sample is bar ``L``; the
last is bar ``n - 2``, the last with a next close. Rolling statistics use pandas' forward
(online) rolling windows: the value at ``t`` is computed from bars up to ``t`` only, so changing
later bars cannot change it (``tests/test_features.py`` checks this bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from orchestrator.errors import DataValidationError

__all__ = [
    "CLIP_Z",
    "FEATURE_NAMES",
    "FeatureSet",
    "FeatureWarning",
    "Standardizer",
    "build_features",
    "near_constant",
    "scaling_warnings",
]

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",
    "ret_lag1",
    "ret_short",
    "ret_long",
    "vol_short",
    "vol_long",
    "range_1",
    "range_short",
    "gap",
    "close_pos",
    "volume_z",
)

SHORT_WINDOW = 5
# Below this std a log1p(volume) window counts as constant: its z-score is set to 0.
_VOLUME_STD_FLOOR = 1e-6
# Standardized model inputs are clipped to +-CLIP_Z train standard deviations (docs/method.md).
CLIP_Z = 20.0


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Model inputs for ``n`` samples, one per bar ``t`` with a full window and a next bar."""

    timestamps: np.ndarray  # datetime64[ns] [n]: the time of bar t
    X: np.ndarray  # float32 [n, n_features]
    y: np.ndarray  # float64 [n]: log(close[t+1] / close[t])
    bar_index: np.ndarray  # int64 [n]: position of bar t in the source frame
    feature_names: tuple[str, ...] = field(default=FEATURE_NAMES)

    def __post_init__(self) -> None:
        n = len(self.y)
        if self.X.ndim != 2 or self.X.shape != (n, len(self.feature_names)):
            raise ValueError(f"X has shape {self.X.shape}, expected ({n}, {len(self.feature_names)})")
        if len(self.timestamps) != n or len(self.bar_index) != n:
            raise ValueError(
                f"timestamps ({len(self.timestamps)}), bar_index ({len(self.bar_index)}) and "
                f"y ({n}) must have one entry per sample"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def segment(self, start: int, stop: int) -> FeatureSet:
        """Samples ``start .. stop-1`` (views, not copies)."""
        return FeatureSet(
            timestamps=self.timestamps[start:stop],
            X=self.X[start:stop],
            y=self.y[start:stop],
            bar_index=self.bar_index[start:stop],
            feature_names=self.feature_names,
        )


def build_features(df: pd.DataFrame, lookback: int) -> FeatureSet:
    """Features and target for bars ``lookback .. len(df) - 2`` of a validated OHLCV frame.

    With fewer than ``lookback + 2`` bars the result is empty (the driver turns a small size
    into ``InsufficientDataError``). Raises ``DataValidationError`` if a feature is not finite,
    which validated bars (finite, positive prices) cannot produce: it guards against a frame
    that skipped ``validate_ohlcv``.
    """
    if lookback < 2:
        raise ValueError(f"lookback must be >= 2, got lookback={lookback}")
    short = min(SHORT_WINDOW, lookback)

    o, h, lo, c = (df[name].to_numpy(dtype=np.float64) for name in ("open", "high", "low", "close"))
    v = df["volume"].to_numpy(dtype=np.float64)
    n_bars = len(c)

    log_c = np.log(c)
    prev_log_c = _shift(log_c, 1)
    r = log_c - prev_log_c
    returns = pd.Series(r)
    log_range = np.log(h / lo)
    log_volume = pd.Series(np.log1p(v))

    vol_mean = log_volume.rolling(lookback, min_periods=lookback).mean().to_numpy()
    vol_std = log_volume.rolling(lookback, min_periods=lookback).std(ddof=0).to_numpy()
    volume_z = np.divide(
        log_volume.to_numpy() - vol_mean,
        vol_std,
        out=np.zeros(n_bars),
        where=vol_std > _VOLUME_STD_FLOOR,
    )
    span = h - lo
    close_pos = np.divide(c - lo, span, out=np.full(n_bars, 0.5), where=span > 0)

    columns = {
        "ret_1": r,
        "ret_lag1": _shift(r, 1),
        "ret_short": log_c - _shift(log_c, short),
        "ret_long": log_c - _shift(log_c, lookback),
        "vol_short": returns.rolling(short, min_periods=short).std(ddof=0).to_numpy(),
        "vol_long": returns.rolling(lookback, min_periods=lookback).std(ddof=0).to_numpy(),
        "range_1": log_range,
        "range_short": pd.Series(log_range).rolling(short, min_periods=short).mean().to_numpy(),
        "gap": np.log(o) - prev_log_c,
        "close_pos": close_pos,
        "volume_z": volume_z,
    }
    assert tuple(columns) == FEATURE_NAMES

    rows = np.arange(lookback, max(n_bars - 1, lookback), dtype=np.int64)
    X64 = np.column_stack([columns[name][rows] for name in FEATURE_NAMES])
    y = log_c[rows + 1] - log_c[rows]
    _check_finite(X64, y, rows)

    timestamps = df["timestamp"].to_numpy(dtype="datetime64[ns]")[rows]
    return FeatureSet(
        timestamps=timestamps,
        X=X64.astype(np.float32).reshape(len(rows), len(FEATURE_NAMES)),
        y=y.astype(np.float64),
        bar_index=rows,
        feature_names=FEATURE_NAMES,
    )


def _shift(values: np.ndarray, lag: int) -> np.ndarray:
    """``values[t - lag]`` at ``t`` (NaN for ``t < lag``): a backward shift, never forward."""
    out = np.full(values.shape, np.nan)
    out[lag:] = values[:-lag]
    return out


def _check_finite(X: np.ndarray, y: np.ndarray, rows: np.ndarray) -> None:
    bad = ~np.isfinite(X)
    if bad.any():
        sample, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataValidationError(
            f"feature {FEATURE_NAMES[col]!r} is not finite at bar {int(rows[sample])} "
            f"({X[sample, col]}); validate the bars with validate_ohlcv first"
        )
    if (hits := np.flatnonzero(~np.isfinite(y))).size:
        raise DataValidationError(
            f"target is not finite at bar {int(rows[hits[0]])}; validate the bars with validate_ohlcv first"
        )
    # float32 overflow would turn a finite float64 feature into inf after the cast.
    if X.size and np.abs(X).max() > np.finfo(np.float32).max:
        raise DataValidationError("a feature exceeds the float32 range")


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature ``(x - mean) / scale``, bounded; fit on a fold's train segment only (by the
    caller).

    ``mean`` and ``scale`` are scikit-learn's ``StandardScaler`` statistics (population std; 1.0
    for a column that is constant by its rule). ``transform`` then deviates from it in two
    documented ways (docs/method.md, "Scaling"): a column constant in training maps to 0
    everywhere (nothing was learned from it), and every value is clipped to ``+-CLIP_Z``.
    """

    mean: np.ndarray  # float64 [n_features]
    scale: np.ndarray  # float64 [n_features], 1.0 where ``constant``
    constant: np.ndarray  # bool [n_features]: (near) zero spread in the fitted data

    @classmethod
    def fit(cls, X_train: np.ndarray) -> Standardizer:
        """Mean and population std per column; a (near) constant column gets scale 1."""
        X64 = np.asarray(X_train, dtype=np.float64)
        if X64.ndim != 2 or X64.shape[0] == 0:
            raise ValueError(f"Standardizer.fit needs a non-empty 2-D array, got {X64.shape}")
        mean = X64.mean(axis=0)
        var = X64.var(axis=0)
        constant = near_constant(var, mean, X64.shape[0])
        scale = np.where(constant, 1.0, np.sqrt(var))
        return cls(mean=mean, scale=scale, constant=constant)

    def z_scores(self, X: np.ndarray) -> np.ndarray:
        """``(x - mean) / scale`` in float64, before holding and clipping."""
        X64 = np.asarray(X, dtype=np.float64)
        if X64.ndim != 2 or X64.shape[1] != len(self.mean):
            raise ValueError(f"Standardizer fitted on {len(self.mean)} features, got an array of {X64.shape}")
        z: np.ndarray = (X64 - self.mean) / self.scale
        return z

    def transform(self, X: np.ndarray) -> np.ndarray:
        z = np.where(self.constant, 0.0, self.z_scores(X))
        scaled: np.ndarray = np.clip(z, -CLIP_Z, CLIP_Z).astype(np.float32)
        return scaled


def near_constant(var: np.ndarray, mean: np.ndarray, n_samples: int) -> np.ndarray:
    """Columns whose variance is indistinguishable from 0: scikit-learn's rule, verbatim.

    ``var <= n*eps*var + (n*mean*eps)**2`` (eps of float64) bounds the rounding error of the
    two-pass variance (Chan, Golub and LeVeque), as ``sklearn.preprocessing._data.
    _is_constant_feature`` does; ``StandardScaler`` gives those columns scale 1.
    """
    eps = np.finfo(np.float64).eps
    mask: np.ndarray = var <= n_samples * eps * var + (n_samples * mean * eps) ** 2
    return mask


@dataclass(frozen=True)
class FeatureWarning:
    """A feature whose values after the train segment its scaling cannot represent faithfully."""

    feature: str
    reason: Literal["constant_in_train", "beyond_clip"]
    rows: dict[str, int]  # later segment ("calibration", "validation") -> rows concerned
    totals: dict[str, int]  # later segment -> its rows
    max_abs_z: float | None  # largest |z| before clipping ("beyond_clip"), else None
    train_value: float | None  # the train segment's constant value ("constant_in_train")

    @property
    def message(self) -> str:
        where = " and ".join(f"{n} of {self.totals[seg]} {seg}" for seg, n in self.rows.items())
        if self.reason == "constant_in_train":
            return (
                f"feature {self.feature!r} is constant in the train segment "
                f"({self.train_value:.6g}) but differs in {where} rows; the model learned "
                f"nothing from it, so it is held at its train value"
            )
        return (
            f"feature {self.feature!r} lies beyond +-{CLIP_Z:g} train standard deviations in "
            f"{where} rows (max |z| {self.max_abs_z:.4g}); clipped to +-{CLIP_Z:g}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "reason": self.reason,
            "rows": dict(self.rows),
            "totals": dict(self.totals),
            "max_abs_z": self.max_abs_z,
            "train_value": self.train_value,
            "message": self.message,
        }


def scaling_warnings(
    X_train: np.ndarray, later: dict[str, np.ndarray], feature_names: tuple[str, ...]
) -> list[FeatureWarning]:
    """What the scaler fitted on ``X_train`` cannot represent in the ``later`` segments.

    One warning per feature, in column order: a feature constant in training (by
    ``near_constant``) whose later values leave the train range, or a feature with later values
    beyond ``+-CLIP_Z`` train standard deviations.
    """
    scaler = Standardizer.fit(X_train)
    X64 = np.asarray(X_train, dtype=np.float64)
    lo, hi = X64.min(axis=0), X64.max(axis=0)
    segments = {name: np.asarray(X, dtype=np.float64) for name, X in later.items() if len(X)}
    abs_z = {name: np.abs(scaler.z_scores(X)) for name, X in segments.items()}
    found: list[FeatureWarning] = []
    for col, feature in enumerate(feature_names):
        constant = bool(scaler.constant[col])
        rows = {
            name: int(((X[:, col] < lo[col]) | (X[:, col] > hi[col])).sum())
            if constant
            else int((abs_z[name][:, col] > CLIP_Z).sum())
            for name, X in segments.items()
        }
        rows = {name: n for name, n in rows.items() if n}
        if not rows:
            continue
        found.append(
            FeatureWarning(
                feature=feature,
                reason="constant_in_train" if constant else "beyond_clip",
                rows=rows,
                totals={name: len(segments[name]) for name in rows},
                max_abs_z=None if constant else max(float(abs_z[n][:, col].max()) for n in rows),
                train_value=float(scaler.mean[col]) if constant else None,
            )
        )
    return found
