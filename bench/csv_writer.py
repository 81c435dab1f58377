"""The predictions CSV writer against pandas' own: seconds per size, and that both read back the same. Prints JSON.

``orchestrator.run.reports.predictions_csv_text`` (Arrow's C++ CSV writer, shortest round-trip
floats) against ``DataFrame.to_csv`` (the writer it replaced) on a predictions frame of
``--rows`` rows, best of ``--repeats``, in one process. The check reads both texts back and
compares every float bit for bit.

Usage: python bench/csv_writer.py [--rows 100000,400000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine  # noqa: E402
from orchestrator.run.reports import PREDICTION_COLUMNS, predictions_csv_text  # noqa: E402


def frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    data: dict[str, object] = {
        "timestamp": pd.date_range("2000-01-01", periods=n, freq="min").strftime("%Y-%m-%dT%H:%M:%S"),
        "fold_id": np.zeros(n, dtype=np.int64),
        "segment": np.where(np.arange(n) < n // 3, "calibration", "validation"),
    }
    for name in PREDICTION_COLUMNS[3:]:
        data[name] = rng.normal(size=n) * 10.0 ** rng.integers(-8, 3, size=n)
    return pd.DataFrame(data)


def best(action: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,400000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = []
    for n in (int(r) for r in args.rows.split(",")):
        df = frame(n)
        ours, theirs = predictions_csv_text(df), df.to_csv(index=False)
        a, b = pd.read_csv(io.StringIO(ours)), pd.read_csv(io.StringIO(theirs))
        same = a.equals(b)  # every column, floats bit for bit (NaN == NaN)
        results.append(
            {
                "rows": n,
                "arrow_seconds": round(best(lambda: predictions_csv_text(df), args.repeats), 3),  # noqa: B023 (called at once, inside the iteration)
                "pandas_seconds": round(best(lambda: df.to_csv(index=False), args.repeats), 3),  # noqa: B023 (called at once, inside the iteration)
                "read_back_identical": same,
            }
        )
    print(
        json.dumps(
            {"benchmark": "csv_writer", "machine": machine(("pandas", "pyarrow")), "results": results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
