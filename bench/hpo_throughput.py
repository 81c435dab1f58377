"""HPO throughput: trials per minute with warm fold workers versus cold ones. Prints JSON.

Both modes run the same study through ``orchestrator.hpo.run_study``: the same trial parameters
(drawn once from the default search space and enqueued in both), the same data, ``parallel``
trials at once, no pruning. *Warm*: all trials share one ``WorkerPool``, so fold actors (a process
each, with torch imported) are started once and reused. *Cold*: every trial gets a fresh pool,
so each trial pays actor start and the first fit of a fresh process. Ray itself is started once
before either mode and is not counted. ``trials_per_minute`` is over the whole session (the warm
figure includes starting the pool for the first wave of trials); ``steady_trials_per_minute`` is
``parallel`` / the median duration of the trials after the first wave, what a long study sees.
Each repeat runs cold then warm, and the medians over ``--repeats`` are reported. Load from
other processes on the machine changes both figures: compare them from one invocation.

Usage: python bench/hpo_throughput.py [--trials 6] [--parallel 2] [--folds 2] [--epochs 3]
       [--data sp500] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def trial_params(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` parameter sets drawn from the default search space (fixed for both modes)."""
    import optuna

    from orchestrator.hpo.space import DEFAULT_SEARCH_SPACE, parse_search_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = parse_search_space(DEFAULT_SEARCH_SPACE)
    params = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=space)
        params.append(dict(trial.params))
        study.tell(trial, 0.0)
    return params


def run_mode(
    args: argparse.Namespace, params: list[dict[str, Any]], warm: bool, root: Path
) -> dict[str, Any]:
    from orchestrator.config import config_from_mapping
    from orchestrator.hpo import HpoSpec, run_study

    name = f"bench_{'warm' if warm else 'cold'}_{int(time.time() * 1000)}"
    config = config_from_mapping(
        {
            "data": args.data,
            "folds": args.folds,
            "epochs": args.epochs,
            "seed": 0,
            "reports_dir": str(root),
            "cpus_per_fold": args.cpus_per_fold,
            "placement_timeout_s": args.placement_timeout,
        }
    )
    spec = HpoSpec.model_validate(
        {
            "study": name,
            "trials": len(params),
            "parallel": args.parallel,
            "pruner": "none",
            "enqueue": params,
            "config": config,
        }
    )
    started = time.perf_counter()
    result = run_study(spec, reuse_workers=warm)
    seconds = time.perf_counter() - started
    import pandas as pd

    table = pd.read_csv(result.trials_csv).sort_values("number")
    durations = [float(d) for d in table["duration_seconds"].dropna()]
    # Past the first wave (which starts the warm pool too): what a long study sees per trial.
    later = durations[args.parallel :]
    steady = 60.0 * args.parallel / statistics.median(later) if later else None
    return {
        "seconds": seconds,
        "trials": result.trials_done,
        "states": result.counts,
        "trials_per_minute": 60.0 * result.trials_done / seconds,
        "steady_trials_per_minute": steady,
        "trial_seconds_median": statistics.median(durations) if durations else None,
        "trial_seconds_min": min(durations) if durations else None,
        "trial_seconds_max": max(durations) if durations else None,
        "errors": sorted({str(e) for e in table["error"].dropna()}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="sp500")
    parser.add_argument("--cpus-per-fold", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--placement-timeout",
        type=float,
        default=300.0,
        help="placement_timeout_s of the runs: cold actors start slowly on a busy host",
    )
    args = parser.parse_args()

    import ray

    from orchestrator.execution.cluster import ensure_ray

    t0 = time.perf_counter()
    ensure_ray(num_cpus=os.cpu_count(), log_to_driver=False)
    ray_start = time.perf_counter() - t0
    params = trial_params(args.trials, args.seed)
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="hpo_bench_") as tmp:
        for _ in range(args.repeats):
            for mode in ("cold", "warm"):
                runs[mode].append(run_mode(args, params, mode == "warm", Path(tmp)))

    def summary(mode: str) -> dict[str, Any]:
        rates = [r["trials_per_minute"] for r in runs[mode]]
        steady = [r["steady_trials_per_minute"] for r in runs[mode] if r["steady_trials_per_minute"]]
        return {
            "trials_per_minute": statistics.median(rates),
            "steady_trials_per_minute": statistics.median(steady) if steady else None,
            "trial_seconds_median": statistics.median(
                r["trial_seconds_median"] for r in runs[mode] if r["trial_seconds_median"] is not None
            ),
            "runs": runs[mode],
        }

    warm, cold = summary("warm"), summary("cold")
    out = {
        "benchmark": "hpo_throughput",
        "machine": {
            **machine(("ray", "torch", "optuna")),
            "ray_cpus": ray.cluster_resources().get("CPU"),
            "gpus": ray.cluster_resources().get("GPU", 0),
        },
        "settings": {
            "trials": args.trials,
            "parallel": args.parallel,
            "folds": args.folds,
            "epochs": args.epochs,
            "data": args.data,
            "cpus_per_fold": args.cpus_per_fold,
            "repeats": args.repeats,
            "pruner": "none",
            "placement_timeout_s": args.placement_timeout,
        },
        "ray_start_seconds": ray_start,
        "warm": warm,
        "cold": cold,
        "warm_over_cold": warm["trials_per_minute"] / cold["trials_per_minute"],
        "warm_over_cold_steady": (
            warm["steady_trials_per_minute"] / cold["steady_trials_per_minute"]
            if warm["steady_trials_per_minute"] and cold["steady_trials_per_minute"]
            else None
        ),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
