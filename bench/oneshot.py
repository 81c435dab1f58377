"""One-shot ``train`` of the default job, Ray against in-process, as a user runs it. Prints JSON.

Each way is a fresh ``python -m orchestrator train --quiet`` process (sp500, 5 folds, 25 epochs
by default), timed from launch to exit; Ray's own start is part of the Ray figure, and read
apart from the run's summary (``total_seconds`` is the run inside the process). The two ways
alternate, ``--repeats`` times each; the best of each is compared (the least disturbed run), and
every run is printed. Goal (issue 16): Ray wall minus in-process wall <= 4 s on 2 cores.

Usage: python bench/oneshot.py [--repeats 2] [--folds 5] [--epochs 25] [--data sp500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_run(executor: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = work / f"{executor}_{int(time.time() * 1000)}"
    folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "train",
            "--executor",
            executor,
            "--quiet",
            "--data",
            args.data,
            "--folds",
            str(args.folds),
            "--epochs",
            str(args.epochs),
            "--reports-dir",
            str(folder / "r"),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{executor} run failed: {proc.stderr[-2000:]}")
    summary = json.loads(next((folder / "r").glob("*/summary.json")).read_text())
    timings = summary["timings"]
    return {
        "executor": executor,
        "wall_seconds": round(wall, 2),
        "run_seconds": round(timings["total_seconds"], 2),
        "training_seconds": round(timings["training_seconds"], 2),
        "outside_run_seconds": round(wall - timings["total_seconds"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--data", default="sp500")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench_oneshot_") as tmp:
        for repeat in range(args.repeats):
            for executor in ("local", "ray") if repeat % 2 == 0 else ("ray", "local"):
                runs[executor].append(one_run(executor, args, Path(tmp)))
                print(json.dumps(runs[executor][-1]), file=sys.stderr, flush=True)
    best = {k: min(rs, key=lambda r: r["wall_seconds"]) for k, rs in runs.items()}
    print(
        json.dumps(
            {
                "benchmark": "oneshot",
                "machine": machine(),
                "load_average": os.getloadavg(),
                "args": vars(args),
                "goal": "ray wall - local wall <= 4 s",
                "ray_minus_local_wall_seconds": round(
                    best["ray"]["wall_seconds"] - best["local"]["wall_seconds"], 2
                ),
                "best": best,
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
