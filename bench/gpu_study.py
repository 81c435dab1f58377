"""A whole HPO study on one GPU, packed: 100 trials x 5 folds x 25 epochs of the default job's
architecture (issue 22's goal: under 60 s on an H100/H200). Prints JSON.

Ray's start (``ray.init``, the hub actor) is timed apart from the study. The study is the
in-process API a server or the CLI uses (``run_study``): ``--parallel`` trials per batch, every
fold of a batch in one stacked model on the one GPU worker (``gpus_per_fold=1``: one worker,
``pack=auto``: one stack), its step captured in a CUDA graph (``cuda_graphs``). The search space
varies what does not change the architecture (learning rate, dropout, weight decay, loss
weights), so every trial of a batch shares the stack. Live detail is off (``prediction_deltas``,
``batch_progress``): nobody watches. On a machine without CUDA it runs on the CPU (a smoke test:
use small numbers).

Usage: python bench/gpu_study.py [--trials 100] [--parallel 100] [--folds 5] [--epochs 25]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.machine import machine  # noqa: E402

SPACE = {
    "lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "w_bce": {"type": "float", "low": 0.0, "high": 2.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--data", default="sp500")
    args = parser.parse_args()

    import ray
    import torch

    from orchestrator.config import config_from_mapping
    from orchestrator.events.actor import get_or_create_hub
    from orchestrator.hpo import HpoSpec, run_study

    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    ray.init(
        address="local",  # a fresh instance, never a cluster left running on the machine
        num_cpus=os.cpu_count(),
        num_gpus=1 if cuda else 0,
        include_dashboard=False,
        log_to_driver=False,
    )
    hub = get_or_create_hub()
    ray_start_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="gpu_study_") as tmp:
        config = config_from_mapping(
            {
                "data": args.data,
                "folds": args.folds,
                "epochs": args.epochs,
                "reports_dir": tmp,
                "executor": "ray",
                "cpus_per_fold": 1,
                "gpus_per_fold": 1 if cuda else 0,
                "max_concurrent_folds": 1,  # one worker: the whole batch in one stack
                "pack": "auto",
                "cuda_graphs": True,
                "prediction_deltas": False,
                "batch_progress_interval_s": 0,
            }
        )
        spec = HpoSpec.model_validate(
            {
                "study": "gpu",
                "trials": args.trials,
                "parallel": args.parallel,
                "config": config,
                "search_space": SPACE,
                "sampler": "random",
                "sampler_seed": 1,
                "pruner": "none",
            }
        )
        study_started = time.perf_counter()
        result = run_study(spec, hub=hub)
        study_s = time.perf_counter() - study_started
        summaries = [json.loads(p.read_text()) for p in Path(tmp).glob("hpo/gpu/runs/*/summary.json")]
    packs = sorted({f["pack_size"] for s in summaries for f in s["folds"]})
    devices = sorted({f["device"] for s in summaries for f in s["folds"]})
    report: dict[str, Any] = {
        "benchmark": "gpu_study",
        "machine": machine(("ray", "torch", "optuna")),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "args": vars(args),
        "goal": "study_seconds < 60 on an H100/H200 (100 trials x 5 folds x 25 epochs)",
        "ray_start_seconds": round(ray_start_s, 2),
        "study_seconds": round(study_s, 2),
        "trials_completed": result.trials_done,
        "runs_with_summary": len(summaries),
        "pack_sizes": packs,
        "fold_devices": devices,
        "best_value": result.best_value,
    }
    print(json.dumps(report, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
