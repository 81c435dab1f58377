"""Refuse, before any fold trains, config values the data cannot support (pure: no I/O).

Each check pairs a config field with a segment size of the fold plan and raises ``ConfigError``
naming the field, both numbers and a value that would work (docs/method.md, "Refused
configurations"):

* ``alpha`` against the calibration size: split conformal takes the ``k``-th smallest of
  ``n_cal`` scores, ``k = ceil((n_cal + 1)(1 - alpha))``; ``k <= n_cal`` holds exactly when
  ``(n_cal + 1)(1 - alpha) <= n_cal``, i.e. ``n_cal >= 1/alpha - 1``, i.e.
  ``alpha >= 1/(n_cal + 1)``. Below that every interval is ``(-inf, inf)``.
* ``batch_size`` against the train size: a batch larger than the train segment makes each epoch
  one partial batch.
* ``lookback`` against the train size: a train segment shorter than one feature window sees its
  long-window features barely move, so later values fall outside their train range.
* ``calibration_splits`` against the calibration size: the ``p_up`` calibration is chosen by
  cross-fitting over ``calibration_splits`` blocks of at least 2 samples; with fewer it stays raw.
* ``lookback`` against the span before validation: the purge gaps (``lookback + 1`` samples, two
  per fold) can leave too little for train and calibration (``plan_feasible_folds``).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config import FoldSpec, TrainConfig
from orchestrator.errors import ConfigError
from orchestrator.run.cv import plan_folds_for
from workers.conformal import conformal_rank

__all__ = ["check_folds", "min_calibration_size", "plan_feasible_folds"]

_MIN_LOOKBACK = 2


@dataclass(frozen=True)
class _Smallest:
    """The fold whose segment is smallest, and that size."""

    fold_id: int
    size: int


def min_calibration_size(alpha: float) -> int:
    """The fewest calibration scores that give a finite conformal quantile at ``alpha``.

    The smallest ``n`` with ``conformal_rank(n, alpha) <= n`` (the rank the folds use, with its
    float tolerance): ``ceil(1/alpha - 1)`` in exact arithmetic, 499 for ``alpha = 0.002``.
    """
    n = max(1, int(1.0 / alpha) - 2)  # just below the exact bound; the loop settles float error
    while conformal_rank(n, alpha) > n:
        n += 1
    return n


def check_folds(config: TrainConfig, specs: list[FoldSpec]) -> None:
    """Raise ``ConfigError`` listing every value the fold plan cannot support (see module doc)."""
    if not specs:
        return
    cal = _smallest(specs, "calibration")
    train = _smallest(specs, "train")
    problems: list[str] = []
    need = min_calibration_size(config.alpha)
    if cal.size < need:
        problems.append(
            f"alpha={config.alpha} needs at least {need} calibration samples for a finite "
            f"conformal interval (the rank ceil((n_cal+1)*(1-alpha)) must be <= n_cal), but "
            f"fold {cal.fold_id} has n_cal={cal.size}: its intervals would be (-inf, inf); use "
            f"alpha >= 1/(n_cal+1) = 1/{cal.size + 1}, a larger cal_fraction or more data"
        )
    if config.batch_size > train.size:
        problems.append(
            f"batch_size={config.batch_size} is larger than fold {train.fold_id}'s train "
            f"segment of {train.size} samples: every epoch would be one partial batch; use "
            f"batch_size <= {train.size} or more data"
        )
    if config.lookback > train.size:
        problems.append(
            f"lookback={config.lookback} is longer than fold {train.fold_id}'s train segment "
            f"of {train.size} samples: its {config.lookback}-bar features would barely move "
            f"within training; use lookback <= {train.size} or more data"
        )
    if cal.size < 2 * config.calibration_splits:
        problems.append(
            f"calibration_splits={config.calibration_splits} needs at least "
            f"{2 * config.calibration_splits} calibration samples (2 per block), but fold "
            f"{cal.fold_id} has n_cal={cal.size}: p_up would stay uncalibrated; use "
            f"calibration_splits <= {max(cal.size // 2, 2)}"
        )
    if problems:
        raise ConfigError("the data cannot support this config: " + "; ".join(problems))


def plan_feasible_folds(config: TrainConfig, n_samples: int) -> list[FoldSpec]:
    """``plan_folds_for``; when only the purge gaps make a segment too small, the error says so.

    The gap is ``lookback + 1`` samples on both sides of each calibration segment. If the plan
    fails with this lookback but works with the shortest one, the ``ConfigError`` names
    ``lookback``, the gap and the longest lookback these samples allow.
    """
    try:
        return plan_folds_for(config, n_samples)
    except ConfigError as err:
        shorter = range(config.lookback - 1, _MIN_LOOKBACK - 1, -1)
        longest = next((lb for lb in shorter if _plans(config, lb, n_samples)), None)
        if longest is None:
            raise
        raise ConfigError(
            f"lookback={config.lookback} puts purge gaps of lookback+1={config.purge_gap} "
            f"samples on both sides of each calibration segment, which leaves too few of the "
            f"{n_samples} samples for train and calibration ({err}); use lookback <= {longest} "
            f"or more data"
        ) from err


def _plans(config: TrainConfig, lookback: int, n_samples: int) -> bool:
    try:
        plan_folds_for(config.model_copy(update={"lookback": lookback}), n_samples)
    except ConfigError:
        return False
    return True


def _smallest(specs: list[FoldSpec], segment: str) -> _Smallest:
    sizes = [(len(getattr(spec, segment)), spec.fold_id) for spec in specs]
    size, fold_id = min(sizes)
    return _Smallest(fold_id=fold_id, size=size)
