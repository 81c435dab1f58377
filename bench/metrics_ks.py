"""The PIT KS p-value: ``workers.metrics.pit_ks_pvalue`` (kstest's exact branch, written out)
against ``scipy.stats.kstest`` itself, per call, side by side in one process. Prints JSON.

Usage: python bench/metrics_ks.py [--n 400] [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine  # noqa: E402
from workers.metrics import pit_ks_pvalue  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y, mu, sigma = rng.standard_t(4, args.n), np.zeros(args.n), np.ones(args.n)

    def ours() -> float:
        return pit_ks_pvalue(y, mu, sigma)

    def scipy_kstest() -> float:
        return float(stats.kstest((y - mu) / sigma, "norm").pvalue)

    ways = {"pit_ks_pvalue": ours, "scipy_kstest": scipy_kstest}
    best: dict[str, float] = {}
    for _ in range(5):  # alternate, best of five: load hits both alike
        for name, way in ways.items():
            started = time.perf_counter()
            for _ in range(args.calls):
                way()
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - started) / args.calls)
    report = {
        "benchmark": "metrics_ks",
        "machine": machine(("scipy", "numpy")),
        "args": vars(args),
        "ms_per_call": {name: round(s * 1e3, 4) for name, s in best.items()},
        "speedup": round(best["scipy_kstest"] / best["pit_ks_pvalue"], 2),
        "same_value": ours() == scipy_kstest(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
