"""A study's selection diagnostics: seconds for N trials, CSCV alone and the whole report. Prints JSON.

``orchestrator.hpo.overfitting.cscv`` on a 16-block selection matrix of N trials (C(16, 8) =
12870 splits), and ``orchestrator.hpo.selection.selection_diagnostics`` on N trials of
``--rows`` validation rows each (metric val_nll: the block metrics, CSCV, the Sharpe ratios of
every trial, DSR and the best trial's Diebold-Mariano test), best of ``--repeats``, in one
process (statsmodels imported before timing).

Usage: python bench/selection.py [--trials 100,1000] [--rows 1250] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import statsmodels.api  # noqa: E402, F401  (its import, about 1 s, is not what is measured)

from bench.machine import machine  # noqa: E402
from orchestrator.hpo.overfitting import cscv  # noqa: E402
from orchestrator.hpo.selection import TrialRows, selection_diagnostics, trial_rows  # noqa: E402


def study(n_trials: int, n_rows: int) -> list[TrialRows]:
    rng = np.random.default_rng(0)
    times = np.datetime64("2010-01-01T00:00:00") + np.arange(n_rows) * np.timedelta64(1, "D")
    y = rng.normal(0.0, 0.01, n_rows)
    naive = np.zeros(n_rows)
    scale = np.full(n_rows, 0.01)
    trials = []
    for k in range(n_trials):
        mu = rng.normal(0.0, 0.0005, n_rows)
        p_up = np.clip(0.5 + 20.0 * mu, 0.01, 0.99)
        trials.append(trial_rows(k, times, y, mu, scale, p_up, p_up, naive_mu=naive, naive_sigma=scale))
    return trials


def best(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", default="100,1000")
    parser.add_argument("--rows", type=int, default=1250)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = []
    for n in (int(t) for t in args.trials.split(",")):
        matrix = np.random.default_rng(1).normal(size=(16, n))
        trials = study(n, args.rows)

        def report(trials: list[TrialRows] = trials) -> object:
            return selection_diagnostics(trials, metric="val_nll", direction="minimize", best_trial=0)

        def split_all(matrix: np.ndarray = matrix) -> object:
            return cscv(matrix, "minimize")

        results.append(
            {
                "trials": n,
                "rows": args.rows,
                "cscv_seconds": round(best(split_all, args.repeats), 3),
                "selection_seconds": round(best(report, args.repeats), 3),
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "selection",
                "machine": machine(("numpy", "scipy", "statsmodels")),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
