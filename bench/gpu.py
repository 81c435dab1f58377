"""GPU benchmark (run it on a CUDA machine; it also runs on CPU as a smoke test). Prints JSON.

1. Train-step time of the default model, eager versus captured in a CUDA graph.
2. K = 1, 2, 4, 8 folds packed on one GPU (K processes, each with a 1/K share of the GPU, like
   fold actors with ``num_gpus=1/K``): wall time of the training stage against one fold.
3. Cold versus warm worker: a fresh process's first fold (process start, imports, CUDA context)
   against a second fold in the same process.

Usage: python bench/gpu.py [--device cuda] [--epochs 20] [--packs 1,2,4,8] [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _NullPublisher:
    def publish(self, event: Any) -> None:
        pass

    def flush(self, timeout: float | None = None) -> None:
        pass

    def wants(self, kind: str) -> bool:
        return False  # nobody watches a benchmark: no per-epoch live detail


def _config(epochs: int, gpus_per_fold: float, cuda_graphs: bool = True) -> Any:
    from orchestrator.config import config_from_mapping

    return config_from_mapping(
        {
            "epochs": epochs,
            "patience": epochs + 1,
            "gpus_per_fold": gpus_per_fold,
            "cuda_graphs": cuda_graphs,
            "folds": 8,
        }
    )


def _fold_inputs(fold_id: int, config: Any) -> tuple[Any, Any]:
    from orchestrator.run.cv import plan_folds_for
    from workers.data import load_ohlcv
    from workers.features import build_features

    features = build_features(load_ohlcv("sp500"), config.lookback)
    spec = plan_folds_for(config, len(features))[fold_id % config.folds]
    return features, spec


def step_times(device_name: str, steps: int) -> dict[str, Any]:
    import torch

    from workers.model import ForecastNet
    from workers.steps import EagerStep, GraphedStep

    device = torch.device(device_name)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4000, 11, generator=g).to(device)
    y = (0.01 * torch.randn(4000, generator=g)).to(device)
    out: dict[str, Any] = {}
    modes = ["eager", "graphed"] if device.type == "cuda" else ["eager"]
    for mode in modes:
        torch.manual_seed(0)
        model = ForecastNet(11, 64, 2, 0.1).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=(mode == "graphed"))
        step = (
            GraphedStep(model, opt, X, y, 0.01, (1.0, 1.0, 1.0), 256)
            if mode == "graphed"
            else EagerStep(model, opt, X, y, 0.01, (1.0, 1.0, 1.0))
        )
        order = torch.randint(0, 4000, (steps + 50, 256), generator=g).to(device)
        for i in range(50):
            step(order[i])
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(50, 50 + steps):
            step(order[i])
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[f"{mode}_step_ms"] = (time.perf_counter() - t0) / steps * 1e3
    if "graphed_step_ms" in out:
        out["graph_speedup"] = out["eager_step_ms"] / out["graphed_step_ms"]
    return out


def _packed_worker(fold_id: int, k: int, epochs: int, device: str, barrier: Any, queue: Any) -> None:
    import torch

    torch.set_num_threads(1)
    from workers.fold import FoldContext, FoldTrainer

    gpus = 1.0 / k if device == "cuda" else 0.0
    config = _config(epochs, gpus)
    features, spec = _fold_inputs(fold_id, config)
    trainer = FoldTrainer()
    if device == "cuda":
        torch.zeros(1, device="cuda")  # CUDA context before the clock starts
    barrier.wait()
    t0 = time.perf_counter()
    result = trainer.run(features, spec, config, FoldContext("bench", time.time()), _NullPublisher())
    queue.put(
        {
            "fold": fold_id,
            "seconds": time.perf_counter() - t0,
            "device": result.device,
            "epochs": result.epochs_run,
        }
    )


def packed(k: int, epochs: int, device: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(k + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_packed_worker, args=(i, k, epochs, device, barrier, queue)) for i in range(k)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    results = [queue.get(timeout=150) for _ in range(k)]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return {
        "k": k,
        "wall_seconds": wall,
        "fold_seconds": sorted(r["seconds"] for r in results),
        "device": results[0]["device"],
        "epochs": results[0]["epochs"],
    }


def _cold_warm_worker(epochs: int, device: str, started_at: float, queue: Any) -> None:
    import torch

    torch.set_num_threads(1)
    from workers.fold import FoldContext, FoldTrainer

    config = _config(epochs, 1.0 if device == "cuda" else 0.0)
    features, spec = _fold_inputs(0, config)
    times = []
    for _ in range(2):
        trainer = FoldTrainer()
        t0 = time.perf_counter()
        trainer.run(features, spec, config, FoldContext("bench", time.time()), _NullPublisher())
        times.append(time.perf_counter() - t0)
    queue.put(
        {
            "cold_total_seconds": time.time() - started_at - times[1],
            "first_fold_seconds": times[0],
            "warm_fold_seconds": times[1],
        }
    )


def cold_warm(epochs: int, device: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_cold_warm_worker, args=(epochs, device, time.time(), queue))
    p.start()
    out = queue.get(timeout=150)
    p.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--packs", default="1,2,4,8")
    args = parser.parse_args()

    import torch

    report: dict[str, Any] = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "model": {"hidden": 64, "depth": 2, "batch_size": 256, "features": 11},
    }
    report["step"] = step_times(args.device, args.steps)
    print(json.dumps({"partial": "step", **report["step"]}), flush=True)
    report["packed"] = [packed(int(k), args.epochs, args.device) for k in args.packs.split(",")]
    base = report["packed"][0]["wall_seconds"]
    for row in report["packed"]:
        row["wall_vs_one_fold"] = row["wall_seconds"] / base
    report["cold_warm"] = cold_warm(args.epochs, args.device)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
