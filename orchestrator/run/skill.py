"""A run's skill against the naive forecast (DESIGN 12): per fold, and over its whole out-of-sample path.

Computed on the head side from what the driver already holds (the fold's train returns and its
predictions), so the fold workers do nothing more. The maths are ``workers.baselines`` (formulas
and sources there and in docs/edge.md):

- per fold (``fold_edge``): the ``naive`` forecast of the fold's train segment (mean, sample
  standard deviation and up-share of its returns), its ``baseline`` scores (``val_nll``,
  ``val_brier``, ``DirAcc``) on the fold's validation rows, and the model's ``skill`` there
  (``nll_diff``, ``brier_skill``, ``dm_stat``, ``dm_p``: the one-sided Diebold-Mariano test of the
  per-row log-score differences with Newey-West variance);
- per run (``run_skill``): the same ``skill`` over every fold's validation rows in time order,
  each row against the naive forecast of its own fold (``workers.baselines.naive_rows``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.baselines import NaiveForecast, fold_baseline, naive_rows, skill

__all__ = ["fold_edge", "run_skill"]

_COLUMNS = ("timestamp", "y", "mu", "sigma", "p_up_cal")


def _validation_rows(predictions: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
    """The validation rows of a fold's predictions (the columns of its CSV, DESIGN 7)."""
    rows = np.asarray(predictions["segment"]) == "validation"
    return {name: np.asarray(predictions[name])[rows] for name in _COLUMNS}


def fold_edge(y_train: npt.ArrayLike, predictions: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One fold's ``naive``, ``baseline`` and ``skill`` (JSON-ready; ``None`` where undefined).

    ``y_train``: the returns of the fold's train segment (``features.y[spec.train.as_slice()]``);
    ``predictions``: the fold's predictions, of which the ``segment == "validation"`` rows are
    scored. Raises ValueError for fewer than 2 train rows or no validation row.
    """
    val = _validation_rows(predictions)
    return fold_baseline(y_train, val["y"], val["mu"], val["sigma"], val["p_up_cal"])


def run_skill(
    predictions: Mapping[int, Mapping[str, Any]], naive: Mapping[int, Mapping[str, Any]]
) -> dict[str, float | None]:
    """The model's ``skill`` over all the run's validation rows in time order (the walk-forward
    out-of-sample path), each row against its fold's naive forecast.

    ``predictions``: each fold's predictions by fold id; ``naive``: each fold's ``naive`` entry
    (``fold_edge``'s, with ``mu``, ``sigma``, ``p_up``, ``n_train``) by fold id.
    """
    if not predictions:
        raise ValueError("run_skill needs at least one fold's predictions, got none")
    folds = sorted(predictions)
    parts = [_validation_rows(predictions[k]) for k in folds]
    columns = {name: np.concatenate([p[name] for p in parts]) for name in _COLUMNS}
    fold_id = np.concatenate([np.full(len(p["y"]), k) for k, p in zip(folds, parts, strict=True)])
    order = np.argsort(np.asarray(columns["timestamp"], dtype="datetime64[ns]"), kind="stable")
    forecasts = {
        k: NaiveForecast(
            mu=float(naive[k]["mu"]),
            sigma=float(naive[k]["sigma"]),
            p_up=float(naive[k]["p_up"]),
            n_train=int(naive[k]["n_train"]),
        )
        for k in folds
    }
    naive_mu, naive_sigma, naive_p_up = naive_rows(fold_id[order], forecasts)
    return skill(
        columns["y"][order],
        columns["mu"][order],
        columns["sigma"][order],
        columns["p_up_cal"][order],
        naive_mu,
        naive_sigma,
        naive_p_up,
    )
