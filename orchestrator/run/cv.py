"""Walk-forward fold planning over sample indices (pure: no Ray, no I/O). See DESIGN 5.

Samples are time-ordered (one per bar). With ``K`` folds (``folds`` when ``use_cv``, else 1)
and ``n`` samples, fold ``k`` (0-based) lays out, in time order::

    [ train ) gap [ calibration ) gap [ validation )

* validation blocks tile the tail: ``v = floor(n * val_fraction / K)`` samples each, fold ``k``
  covers ``[n - (K-k)*v, n - (K-k-1)*v)``, so the last block ends at ``n``;
* calibration ends ``gap`` samples before its validation and holds
  ``floor(cal_fraction * (val_start - 2*gap))`` samples;
* train ends ``gap`` samples before calibration; it starts at 0 (``expanding``) or keeps fold
  0's length and slides forward (``rolling``).

The purge gap is the feature lookback plus the one-bar label horizon (``TrainConfig.purge_gap``),
so no bar feeds both a train label and a calibration feature, nor a calibration label and a
validation feature. Fold ``k`` only ever touches indices below its validation stop.
"""

from __future__ import annotations

import math
from typing import Literal

from orchestrator.config import FoldSpec, Segment, TrainConfig
from orchestrator.errors import ConfigError

__all__ = [
    "MIN_TRAIN_SAMPLES",
    "MIN_CALIBRATION_SAMPLES",
    "MIN_VALIDATION_SAMPLES",
    "plan_folds",
    "plan_folds_for",
]

MIN_TRAIN_SAMPLES = 64
MIN_CALIBRATION_SAMPLES = 16
MIN_VALIDATION_SAMPLES = 16

# Absorbs float error in n * fraction (0.29 * 100 == 28.999999999999996) before flooring.
_FLOOR_EPS = 1e-9


def plan_folds(
    n_samples: int,
    *,
    folds: int,
    use_cv: bool,
    window: Literal["expanding", "rolling"],
    val_fraction: float,
    cal_fraction: float,
    gap: int,
) -> list[FoldSpec]:
    """The walk-forward folds for ``n_samples`` time-ordered samples (see the module doc).

    Raises ``ConfigError`` naming the numbers when an argument is out of range or a segment
    would be smaller than its minimum (train 64, calibration 16, validation 16 samples).
    """
    _check_arguments(n_samples, folds, use_cv, window, val_fraction, cal_fraction, gap)
    k_folds = folds if use_cv else 1
    setting = (
        f"n_samples={n_samples}, folds={k_folds}, val_fraction={val_fraction}, "
        f"cal_fraction={cal_fraction}, gap={gap}"
    )

    val_size = _floor(n_samples * val_fraction / k_folds)
    if val_size < MIN_VALIDATION_SAMPLES:
        raise ConfigError(
            f"each validation segment would have {val_size} samples, fewer than "
            f"{MIN_VALIDATION_SAMPLES} ({setting}); use more data, fewer folds or a larger "
            f"val_fraction"
        )

    plans: list[FoldSpec] = []
    train_size_fold0 = 0
    for fold_id in range(k_folds):
        val_start = n_samples - (k_folds - fold_id) * val_size
        cal_stop = val_start - gap
        cal_size = _floor(cal_fraction * (val_start - 2 * gap))
        cal_start = cal_stop - cal_size
        train_stop = cal_start - gap
        if cal_size < MIN_CALIBRATION_SAMPLES:
            raise ConfigError(
                f"fold {fold_id} would have {cal_size} calibration samples, fewer than "
                f"{MIN_CALIBRATION_SAMPLES} (validation starts at {val_start}; {setting}); "
                f"use more data, fewer folds, a smaller val_fraction or a larger cal_fraction"
            )
        if train_stop < MIN_TRAIN_SAMPLES:
            raise ConfigError(
                f"fold {fold_id} would have {max(train_stop, 0)} train samples, fewer than "
                f"{MIN_TRAIN_SAMPLES} (validation starts at {val_start}, calibration at "
                f"{cal_start}; {setting}); use more data, fewer folds, a smaller val_fraction "
                f"or cal_fraction, or a shorter lookback"
            )
        if fold_id == 0:
            train_size_fold0 = train_stop
        train_start = 0 if window == "expanding" else train_stop - train_size_fold0
        plans.append(
            FoldSpec(
                fold_id=fold_id,
                train=Segment(train_start, train_stop),
                calibration=Segment(cal_start, cal_stop),
                validation=Segment(val_start, val_start + val_size),
            )
        )
    return plans


def plan_folds_for(config: TrainConfig, n_samples: int) -> list[FoldSpec]:
    """``plan_folds`` with the run's settings and ``config.purge_gap`` as the gap."""
    return plan_folds(
        n_samples,
        folds=config.folds,
        use_cv=config.use_cv,
        window=config.window,
        val_fraction=config.val_fraction,
        cal_fraction=config.cal_fraction,
        gap=config.purge_gap,
    )


def _floor(value: float) -> int:
    return math.floor(value + _FLOOR_EPS)


def _check_arguments(
    n_samples: int,
    folds: int,
    use_cv: bool,
    window: str,
    val_fraction: float,
    cal_fraction: float,
    gap: int,
) -> None:
    if n_samples < 0:
        raise ConfigError(f"n_samples must be >= 0, got n_samples={n_samples}")
    if folds < 1:
        raise ConfigError(f"folds must be >= 1, got folds={folds}")
    if use_cv and folds < 2:
        raise ConfigError(f"folds must be >= 2 when use_cv is true, got folds={folds}")
    if window not in ("expanding", "rolling"):
        raise ConfigError(f"window must be 'expanding' or 'rolling', got window={window!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got val_fraction={val_fraction}")
    if not 0.0 < cal_fraction < 1.0:
        raise ConfigError(f"cal_fraction must be in (0, 1), got cal_fraction={cal_fraction}")
    if gap < 0:
        raise ConfigError(f"gap must be >= 0, got gap={gap}")
