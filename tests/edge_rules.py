"""The issue's rules for PBO and DSR written out plainly, to recompute a study's files independently.

Not the product's code: a loop over ``itertools.combinations`` with scipy's average ranks for
CSCV (Bailey, Borwein, Lopez de Prado & Zhu 2017), and the deflated Sharpe ratio's formula with
scipy's normal distribution (Bailey & Lopez de Prado 2014), as issue 23 states them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["dsr_by_rule", "pbo_by_rule"]

EULER_GAMMA = 0.5772156649015329


def pbo_by_rule(matrix: pd.DataFrame, direction: str, excluded: list[int] | None = None) -> float:
    """The share of the C(S, S/2) in-sample choices whose chosen trial's out-of-sample logit is <= 0.

    ``matrix``: selection_matrix.csv as read (columns block, first_timestamp, last_timestamp, then
    one per trial number); ``excluded``: trial numbers left out of PBO."""
    keys = {"block", "first_timestamp", "last_timestamp"}
    columns = [c for c in matrix.columns if c not in keys and int(c) not in set(excluded or [])]
    columns.sort(key=int)  # a tie in sample goes to the lowest trial number
    values = matrix[columns].to_numpy(dtype=np.float64)
    performance = values if direction == "maximize" else -values
    blocks, n = performance.shape
    logits = []
    for chosen in itertools.combinations(range(blocks), blocks // 2):
        inside = list(chosen)
        outside = [b for b in range(blocks) if b not in chosen]
        best = int(np.argmax(performance[inside].mean(axis=0)))
        rank = stats.rankdata(performance[outside].mean(axis=0))[best]  # 1 the worst, ties averaged
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
    return float(np.mean(np.asarray(logits) <= 0.0))


def dsr_by_rule(inputs: Mapping[str, Any]) -> float:
    """Phi((sr - sr0) sqrt(t - 1) / sqrt(1 - skew sr + (kurtosis - 1)/4 sr^2)), with
    sr0 = sqrt(sr_variance) ((1 - g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e))), 0 for one trial."""
    sr, t, n = float(inputs["sr"]), int(inputs["t"]), int(inputs["n_trials"])
    skew, kurtosis = float(inputs["skew"]), float(inputs["kurtosis"])
    sr0 = 0.0
    if n > 1:
        expected_max = (1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / n) + EULER_GAMMA * stats.norm.ppf(
            1 - 1 / (n * math.e)
        )
        sr0 = math.sqrt(float(inputs["sr_variance"])) * expected_max
    z = (sr - sr0) * math.sqrt(t - 1) / math.sqrt(1 - skew * sr + (kurtosis - 1) / 4 * sr**2)
    return float(stats.norm.cdf(z))
