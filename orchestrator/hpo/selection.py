"""A study's selection diagnostics (DESIGN 12): is its best trial's edge real, and did the search choose?

Pure: the completed trials' out-of-sample validation rows in (``TrialRows``), the selection
matrix and a JSON-ready report out (``selection_diagnostics``); the statistics themselves are in
``orchestrator.hpo.overfitting``. The rules, with their sources, are in docs/edge.md:

- rows: the timestamps every completed trial has (another ``lookback`` drops other rows), in
  time order, split into S contiguous blocks whose sizes differ by at most one row (the first
  ``rows % S`` blocks one row longer); S = min(``max_blocks``, the largest even number with at
  least ``min_block_rows`` rows a block); fewer than 2 blocks: no PBO;
- the selection matrix: per block, each trial's study metric on that block's rows, by the
  functions of ``workers.metrics`` with the uncalibrated ``p_up_raw``, as the trials' objective
  values are (DESIGN 6); a trial whose metric is undefined on some block is left out of PBO;
- ``pbo``: CSCV over that matrix (``overfitting.cscv``);
- ``dsr``: the deflated Sharpe ratio of the best trial's sign strategy over its own validation
  rows, against the dispersion of every completed trial's Sharpe ratio;
- ``best_dm_p``: the best trial's one-sided Diebold-Mariano p against the naive forecast over its
  own validation rows (``workers.baselines``), from its per-row naive ``mu``/``sigma``;
- ``verdict``: ``skill`` when best_dm_p < 0.05 and dsr >= 0.95, else ``no evidence of skill``;
  ``selection``: ``informative`` when pbo < 0.5, ``luck`` when pbo >= 0.5 (``None`` without PBO).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from orchestrator.hpo.overfitting import (
    MATRIX_KEY_COLUMNS,
    Direction,
    cscv,
    deflated_sharpe,
    sharpe_ratio,
    sharpe_stats,
    sign_strategy,
)
from orchestrator.hpo.trial_rows import (
    BLOCK_METRICS,
    BlockMetric,
    TrialRows,
    trial_rows,
    trial_rows_from_frame,
)
from workers.baselines import diebold_mariano, gaussian_nll_rows
from workers.metrics import finite_or_none

__all__ = [
    "MAX_BLOCKS",
    "MIN_BLOCK_ROWS",
    "SKILL_DM_P",
    "SKILL_DSR",
    "Selection",
    "TrialRows",
    "block_bounds",
    "block_count",
    "selection_diagnostics",
    "trial_rows",
    "trial_rows_from_frame",
]

IntArray = npt.NDArray[np.intp]

MAX_BLOCKS = 16  # C(16, 8) = 12870 splits
MIN_BLOCK_ROWS = 20
SKILL_DM_P = 0.05  # verdict 'skill' needs best_dm_p below this ...
SKILL_DSR = 0.95  # ... and dsr at least this


def block_count(n_rows: int, max_blocks: int = MAX_BLOCKS, min_block_rows: int = MIN_BLOCK_ROWS) -> int:
    """S = min(max_blocks, the largest even S with n_rows // S >= min_block_rows); 0 when not even
    2 blocks of ``min_block_rows`` rows fit."""
    if max_blocks < 2 or max_blocks % 2:
        raise ValueError(f"max_blocks must be even and >= 2, got max_blocks={max_blocks}")
    if min_block_rows < 1:
        raise ValueError(f"min_block_rows must be >= 1, got min_block_rows={min_block_rows}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got n_rows={n_rows}")
    return min(max_blocks, 2 * (n_rows // (2 * min_block_rows)))


def block_bounds(n_rows: int, n_blocks: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of S contiguous blocks over ``n_rows`` rows, sizes within one row of
    each other, the first ``n_rows % S`` blocks one row longer (``numpy.array_split``)."""
    if n_blocks < 1 or n_blocks > n_rows:
        raise ValueError(f"n_blocks must be in [1, n_rows={n_rows}], got n_blocks={n_blocks}")
    size, extra = divmod(n_rows, n_blocks)
    edges = [b * size + min(b, extra) for b in range(n_blocks + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


@dataclass(frozen=True)
class Selection:
    """A study's selection diagnostics: ``matrix`` for selection_matrix.csv (columns block,
    first_timestamp, last_timestamp, then one per trial named by its number; an undefined value
    is NaN, an empty CSV field) and ``report`` for selection.json (JSON-ready: every number
    finite or ``None``)."""

    matrix: pd.DataFrame
    report: dict[str, Any]


def _shared_rows(trials: Sequence[TrialRows]) -> tuple[npt.NDArray[np.datetime64], list[IntArray]]:
    """The timestamps every trial has (sorted) and each trial's positions of them; raises
    ValueError when two trials disagree on ``y`` at a shared timestamp (not one data set)."""
    shared = trials[0].timestamp
    for t in trials[1:]:  # most trials have the same rows: intersect only where they differ
        if not np.array_equal(t.timestamp, shared):
            shared = np.intersect1d(shared, t.timestamp)
    positions = [np.searchsorted(t.timestamp, shared).astype(np.intp) for t in trials]
    first_y = trials[0].y[positions[0]]
    for t, pos in zip(trials[1:], positions[1:], strict=True):
        differ = ~np.isclose(t.y[pos], first_y, rtol=1e-9, atol=1e-15)
        if np.any(differ):
            when = shared[np.argmax(differ)]
            raise ValueError(f"trials {trials[0].number} and {t.number} have different y at {when}")
    return shared, positions


def _matrix(
    trials: Sequence[TrialRows],
    metric: BlockMetric | None,
    shared: npt.NDArray[np.datetime64],
    positions: Sequence[IntArray],
    n_blocks: int,
) -> pd.DataFrame:
    """One row per block; no rows without a block metric or with fewer than 2 blocks."""
    evaluate = metric if n_blocks >= 2 else None
    bounds = block_bounds(shared.shape[0], n_blocks) if evaluate is not None else []
    columns: dict[str, Any] = {
        "block": list(range(len(bounds))),
        "first_timestamp": [np.datetime_as_string(shared[a], unit="s") for a, _ in bounds],
        "last_timestamp": [np.datetime_as_string(shared[b - 1], unit="s") for _, b in bounds],
    }
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for t, pos in zip(trials, positions, strict=True):
            values = [finite_or_none(evaluate(t, pos[a:b])) for a, b in bounds] if evaluate else []
            columns[str(t.number)] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.DataFrame(columns)


def _best_dm_p(best: TrialRows) -> float | None:
    if best.naive_mu is None or best.naive_sigma is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = gaussian_nll_rows(best.y, best.mu, best.sigma) - gaussian_nll_rows(
            best.y, best.naive_mu, best.naive_sigma
        )
    if not np.all(np.isfinite(d)):
        return None
    return diebold_mariano(d).p_value


def selection_diagnostics(
    trials: Sequence[TrialRows],
    *,
    metric: str,
    direction: Direction,
    best_trial: int,
    max_blocks: int = MAX_BLOCKS,
    min_block_rows: int = MIN_BLOCK_ROWS,
) -> Selection:
    """The selection matrix and report of a study's completed ``trials`` (the module docstring).

    ``metric``/``direction``: the study's (``HpoSpec``); ``best_trial``: the number of the
    study's best trial by its objective value, one of ``trials``. Report keys: metric, direction,
    n_trials (completed trials), trials, rows (shared), blocks, pbo, pbo_trials (those in PBO),
    excluded_trials, logits, is_performance, oos_performance, best_trial, best_dm_p, sr0, dsr,
    dsr_inputs, verdict, selection, notes (why a value is null). Raises ValueError for no trials,
    repeated trial numbers, an unknown ``best_trial`` or ``direction``, trials over different data.
    """
    if not trials:
        raise ValueError("selection diagnostics need at least one completed trial, got none")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got direction={direction!r}")
    trials = sorted(trials, key=lambda t: t.number)
    numbers = [t.number for t in trials]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"trial numbers must be unique, got {numbers}")
    if best_trial not in numbers:
        raise ValueError(f"best_trial={best_trial} is not among the trials {numbers}")
    notes: list[str] = []
    shared, positions = _shared_rows(trials)
    n_blocks = block_count(shared.shape[0], max_blocks, min_block_rows)
    block_metric = BLOCK_METRICS.get(metric)
    if block_metric is None:
        notes.append(f"pbo: the metric {metric} is not defined on validation rows")
    elif n_blocks < 2:
        notes.append(f"pbo: {shared.shape[0]} shared rows make fewer than 2 blocks of {min_block_rows}")
    matrix = _matrix(trials, block_metric, shared, positions, n_blocks)
    pbo_fields = _pbo_fields(matrix, direction, notes)

    best = trials[numbers.index(best_trial)]
    best_dm_p = _best_dm_p(best)
    if best_dm_p is None:
        notes.append(
            f"best_dm_p: undefined for trial {best_trial} (no naive rows, too few rows or no variance)"
        )
    srs = [sharpe_ratio(sign_strategy(t.p_up_cal, t.y)) for t in trials]
    defined = [s for s in srs if s is not None]
    sr_variance = float(np.var(defined, ddof=1)) if len(defined) >= 2 else None
    best_stats = sharpe_stats(sign_strategy(best.p_up_cal, best.y))
    dsr_inputs = {
        "sr": best_stats.sr,
        "t": best_stats.t,
        "skew": best_stats.skew,
        "kurtosis": best_stats.kurtosis,
        "n_trials": len(trials),
        "sr_variance": sr_variance,
    }
    sr0, dsr = deflated_sharpe(
        best_stats.sr, best_stats.t, best_stats.skew, best_stats.kurtosis, len(trials), sr_variance
    )
    if dsr is None:
        notes.append("dsr: undefined (a flat or too short strategy, or no Sharpe dispersion)")
    pbo = pbo_fields["pbo"]
    skill = best_dm_p is not None and best_dm_p < SKILL_DM_P and dsr is not None and dsr >= SKILL_DSR
    fields: dict[str, Any] = {
        "metric": metric,
        "direction": direction,
        "n_trials": len(trials),
        "trials": numbers,
        "rows": int(shared.shape[0]),
        "blocks": int(matrix.shape[0]),
        **pbo_fields,
        "best_trial": best_trial,
        "best_dm_p": best_dm_p,
        "sr0": sr0,
        "dsr": dsr,
        "dsr_inputs": dsr_inputs,
        "verdict": "skill" if skill else "no evidence of skill",
        "selection": None if pbo is None else ("informative" if pbo < 0.5 else "luck"),
        "notes": notes,
    }
    return Selection(matrix=matrix, report=fields)


def _pbo_fields(matrix: pd.DataFrame, direction: Direction, notes: list[str]) -> dict[str, Any]:
    """pbo and its plot data from the matrix, leaving out trials with an undefined block value."""
    trial_columns = [c for c in matrix.columns if c not in MATRIX_KEY_COLUMNS]
    values = matrix[trial_columns].to_numpy(dtype=np.float64)
    fields: dict[str, Any] = {
        "pbo": None,
        "pbo_trials": [],
        "excluded_trials": [],
        "logits": [],
        "is_performance": [],
        "oos_performance": [],
    }
    if values.shape[0] == 0:  # no blocks: the reason is in the notes already
        return fields
    kept = np.all(np.isfinite(values), axis=0)
    fields["pbo_trials"] = [int(c) for c, k in zip(trial_columns, kept, strict=True) if k]
    fields["excluded_trials"] = [int(c) for c, k in zip(trial_columns, kept, strict=True) if not k]
    if fields["excluded_trials"]:
        notes.append(
            f"pbo: trials {fields['excluded_trials']} left out, their metric is undefined on some block"
        )
    if int(kept.sum()) < 2:
        notes.append("pbo: fewer than 2 trials to choose between")
        return fields
    result = cscv(values[:, kept], direction)
    fields.update(
        pbo=result.pbo,
        logits=result.logits.tolist(),
        is_performance=result.is_performance.tolist(),
        oos_performance=result.oos_performance.tolist(),
    )
    return fields
