"""Folds in parallel: the same K-fold job in-process, on Ray, and with joblib (loky). Prints JSON.

The "training stage" is the wall time of training every fold of one run (``run_folds`` of the
executor, or one ``joblib.Parallel`` call), with workers already warm: Ray's start, actor start
and the first fit of a fresh process (lazy imports) are measured separately as cold start. Each
repetition runs the ways back to back, so a load change on the machine hits them alike; medians
and minima are reported (on a shared machine the minimum is the least disturbed run). Every way
runs ``workers.fold.FoldTrainer().run`` with torch limited to ``cpus_per_fold`` threads per fold
(1 by default): no oversubscription of the cores.

``ray_no_events`` is a diagnostic: the Ray executor with events dropped in the folds (like joblib's
no-op publisher), which separates the executor's own cost from the cost of live events (the
EventHub actor's work runs on the same cores as the folds).

Also: a second run on warm Ray workers, through the whole driver (``execute_run``: data, features,
events), timed from its submission to its first ``epoch_metrics`` event (target < 1 s).

``--watched`` puts a consumer of every message type on the hub (as a WebSocket client with
``?types=`` everything would), so the folds publish per-epoch ``prediction_delta`` and
``batch_progress``; joblib's folds do the same work and drop the events. Without it nobody
watches, as in a headless run, and the folds skip that optional work in every way.

Usage: python bench/parallel_folds.py [--folds 2] [--epochs 10] [--data sp500] [--watched]
       [--window expanding|rolling] [--repeats 8] [--cpus-per-fold 1] [--set FIELD=VALUE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class NullPublisher:
    """Publishes nowhere: joblib has no hub (the other two ways publish for real).

    ``watched``: answer ``wants`` like a hub with a client on every type, so the fold does the
    same optional work (per-epoch prediction deltas, batch progress) as the watched Ray run.
    """

    def __init__(self, watched: bool = False) -> None:
        self.watched = watched

    def publish(self, event: Any) -> None:
        pass

    def flush(self, timeout: float | None = None) -> None:
        pass

    def wants(self, kind: str) -> bool:
        return self.watched


class NullSink:
    """An event sink that drops everything: Ray without the EventHub's work (a diagnostic)."""

    def __init__(self, watched: bool = False) -> None:
        self.watched = watched

    def register_run(self, run_id: str, run_dir: str | None) -> None:
        pass

    def publisher(self, run_id: str, producer: str, *, batched: bool = False) -> NullPublisher:
        return NullPublisher(self.watched)


def train_fold_in_worker(features: Any, spec: Any, config: Any, started_at: float, watched: bool) -> Any:
    """What a joblib worker runs: the very fold code of the actors and the local executor."""
    from workers.fold import FoldContext, FoldTrainer

    context = FoldContext("bench-joblib", started_at)
    return FoldTrainer().run(features, spec, config, context, NullPublisher(watched))


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="sp500")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--window", choices=["expanding", "rolling"], default="expanding")
    p.add_argument("--repeats", type=int, default=8, help="a multiple of 4 rotates the order evenly")
    p.add_argument("--cpus-per-fold", type=float, default=1.0)
    p.add_argument(
        "--watched",
        action="store_true",
        help="a consumer of every message type on the hub (live prediction deltas)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other TrainConfig field, e.g. --set prediction_deltas=false",
    )
    return p.parse_args(argv)


def overrides(items: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import joblib
    import ray
    import torch

    from orchestrator.config import config_from_mapping
    from orchestrator.events.actor import get_or_create_hub
    from orchestrator.events.publish import InProcessSink, RaySink
    from orchestrator.execution.base import FoldJob
    from orchestrator.execution.cluster import ensure_ray
    from orchestrator.execution.local import LocalExecutor
    from orchestrator.execution.pool import WorkerPool
    from orchestrator.execution.ray import RayExecutor
    from orchestrator.messages import MESSAGE_TYPES
    from orchestrator.run.cv import plan_folds_for
    from orchestrator.run.driver import execute_run, new_run
    from workers.data import load_ohlcv
    from workers.features import build_features

    load_before = os.getloadavg()
    reports = tempfile.mkdtemp(prefix="bench-parallel-folds-")
    config = config_from_mapping(
        {
            "data": args.data,
            "folds": args.folds,
            "epochs": args.epochs,
            "patience": args.epochs + 1,  # every epoch runs, in every way: the same work
            "window": args.window,
            "cpus_per_fold": args.cpus_per_fold,
            "executor": "ray",
            "reports_dir": reports,
            **overrides(args.set),
        }
    )
    warmup_config = config.model_copy(update={"epochs": 1, "patience": 2})
    features = build_features(load_ohlcv(config.data), config.lookback)
    specs = plan_folds_for(config, len(features))
    threads = max(1, int(config.cpus_per_fold))
    torch.set_num_threads(threads)  # the in-process executor: one fold at a time, same threads

    def job(sink: Any, run_id: str, cfg: Any = config) -> FoldJob:
        return FoldJob(run_id, features, specs, cfg, time.time(), sink, threading.Event())

    def fold_seconds(results: list[Any]) -> dict[str, float]:
        return {str(r.fold_id): round(r.train_seconds, 3) for r in sorted(results, key=lambda r: r.fold_id)}

    # ---- cold starts (not part of the training stage) ---------------------------------------
    local = LocalExecutor()
    audience = frozenset(MESSAGE_TYPES) if args.watched else frozenset()
    local_cold = timed(
        lambda: local.run_folds(
            job(InProcessSink(interest=audience), "local-warmup", warmup_config), lambda r: None
        )
    )

    started = time.perf_counter()
    ensure_ray()
    hub = get_or_create_hub()
    ray.get(hub.last_seq.remote())
    ray_start = time.perf_counter() - started
    if args.watched:  # as a pump with a subscribed client would, for the whole benchmark
        ray.get(hub.note_interest.remote(audience, 24 * 3600.0))
    pool = WorkerPool()
    executor = RayExecutor(pool)
    sink = RaySink(hub)
    # Actors start, import torch and run a first (1-epoch) fit: a cold run.
    ray_cold = timed(lambda: executor.run_folds(job(sink, "ray-warmup", warmup_config), lambda r: None))

    parallel = joblib.Parallel(n_jobs=len(specs), backend="loky")

    def joblib_run(cfg: Any) -> list[Any]:
        now = time.time()
        return list(
            parallel(
                joblib.delayed(train_fold_in_worker)(features, spec, cfg, now, args.watched) for spec in specs
            )
        )

    joblib_cold = timed(lambda: joblib_run(warmup_config))

    # ---- the training stage, interleaved repetitions ----------------------------------------
    ways: dict[str, Callable[[str, list[Any]], Any]] = {
        "local": lambda run_id, out: local.run_folds(
            job(InProcessSink(interest=audience), run_id), out.append
        ),
        "ray": lambda run_id, out: executor.run_folds(job(sink, run_id), out.append),
        "joblib": lambda run_id, out: out.extend(joblib_run(config)),
        "ray_no_events": lambda run_id, out: executor.run_folds(
            job(NullSink(args.watched), run_id), out.append
        ),
    }
    names = list(ways)
    runs: dict[str, list[float]] = {way: [] for way in names}
    folds: dict[str, list[dict[str, float]]] = {way: [] for way in names}
    for rep in range(args.repeats):
        # Rotate the order: whatever a way leaves behind (loky workers settling, the hub still
        # writing) falls on each of the others in turn.
        for way in names[rep % len(names) :] + names[: rep % len(names)]:
            results: list[Any] = []
            run_id = f"bench-{way}-{rep}-{time.time_ns()}"
            runs[way].append(timed(lambda: ways[way](run_id, results)))  # noqa: B023 (called at once, inside the iteration)
            folds[way].append(fold_seconds(results))
    median = {way: statistics.median(times) for way, times in runs.items()}

    # ---- a second run on warm workers, through the whole driver -----------------------------
    run = new_run(config)
    created_before_second = pool.created
    submitted = time.time()
    thread = threading.Thread(target=execute_run, args=(run, sink, executor), daemon=True)
    thread.start()
    first_epoch = None
    while first_epoch is None:
        reply = ray.get(
            hub.poll.remote(0, 5.0, run.run_id, types=frozenset({"epoch_metrics", "training_start"}))
        )
        kinds = {e.type: e.ts for e in reply["events"]}
        if "epoch_metrics" in kinds:
            first_epoch = kinds
        elif run.done:
            break
    thread.join()
    warm_start = None
    if first_epoch is not None:
        warm_start = {
            "submit_to_first_epoch_s": round(first_epoch["epoch_metrics"] - submitted, 3),
            "training_start_to_first_epoch_s": round(
                first_epoch["epoch_metrics"] - first_epoch["training_start"], 3
            ),
            "actors_created_by_the_second_run": pool.created - created_before_second,
            "run_state": run.state.value,
        }
    actors_created = pool.created
    pool.shutdown()
    ray.shutdown()

    local_folds = {fold: statistics.median(rep[fold] for rep in folds["local"]) for fold in folds["local"][0]}
    ideal = sum(local_folds.values()) / max(local_folds.values())
    report = {
        "benchmark": "parallel_folds",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/parallel_folds.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            **machine(("ray", "torch", "joblib")),
            "load_avg_1m_before": round(load_before[0], 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
        "job": {
            "data": config.data,
            "samples": len(features),
            "folds": len(specs),
            "epochs": config.epochs,
            "window": config.window,
            "cpus_per_fold": config.cpus_per_fold,
            "torch_threads_per_fold": threads,
            "train_sizes": [len(s.train) for s in specs],
            "repeats": args.repeats,
            "prediction_deltas": config.prediction_deltas,
            "watched": args.watched,
            "batch_progress_interval_s": config.batch_progress_interval_s,
        },
        "training_stage_s": {way: round(t, 3) for way, t in median.items()},
        "training_stage_min_s": {way: round(min(ts), 3) for way, ts in runs.items()},
        "training_stage_runs_s": {way: [round(t, 3) for t in ts] for way, ts in runs.items()},
        "speedup": {
            "local_over_ray": round(median["local"] / median["ray"], 3),
            "local_over_joblib": round(median["local"] / median["joblib"], 3),
            "ray_over_joblib_time_ratio": round(median["ray"] / median["joblib"], 3),
            "ray_no_events_over_joblib_time_ratio": round(median["ray_no_events"] / median["joblib"], 3),
            "ideal_from_fold_balance": round(ideal, 3),
        },
        "speedup_from_min": {
            "local_over_ray": round(min(runs["local"]) / min(runs["ray"]), 3),
            "local_over_joblib": round(min(runs["local"]) / min(runs["joblib"]), 3),
            "ray_over_joblib_time_ratio": round(min(runs["ray"]) / min(runs["joblib"]), 3),
            "ray_no_events_over_joblib_time_ratio": round(
                min(runs["ray_no_events"]) / min(runs["joblib"]), 3
            ),
        },
        # each fold's own train time (inside its worker), median over the repetitions: a way
        # whose folds train slower when run side by side loses to contention, not to overhead
        "fold_train_seconds_median": {
            way: {fold: round(statistics.median(rep[fold] for rep in reps), 3) for fold in reps[0]}
            for way, reps in folds.items()
        },
        "stage_minus_slowest_fold_s_median": {
            way: round(
                statistics.median(
                    t - max(rep.values()) for t, rep in zip(runs[way], folds[way], strict=True)
                ),
                3,
            )
            for way in names
        },
        "cold_start_s": {
            "local_first_fit_1_epoch": round(local_cold, 3),
            "ray_init_and_hub": round(ray_start, 3),
            "ray_actors_start_and_first_fit_1_epoch": round(ray_cold, 3),
            "joblib_workers_start_and_first_fit_1_epoch": round(joblib_cold, 3),
        },
        "warm_start": warm_start,
        "ray_actors_created": actors_created,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
