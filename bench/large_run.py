"""A large run on Ray: its training stage against the folds' own fit seconds over the cores. Prints JSON.

Issue 16's figure "1M-row run: training stage / (sum of fold fit seconds / cores) <= 1.25" (1.0
would be the cores fully busy with fold fits from the stage's start to its end). The data is a
synthetic CSV of ``--rows`` minute bars (AR(1) log returns, ``tests/synthetic.ar1_ohlcv``, 0.1 %
per bar), written once and then reused from ``--cache-dir``; timestamps are written as
``2000-01-03 00:01:00`` and read with the config's default date handling (format inferred).

The job is the default one (model, lookback, batch size, window, ...) with ``--folds`` folds of
``--epochs`` epochs (5 x 2 by default) and ``patience`` left at its default (above the epochs:
every epoch runs), on ``RayExecutor`` with the default ``max_concurrent_folds`` (what the
cluster holds). Each run goes through the whole driver (``execute_run``: summary, predictions
CSVs, ``events.jsonl``) in this process, with the hub actor and a worker pool as a ``train``
command has them. Before the first run the data is loaded (the driver's cache keeps it for every
run, as a long-lived process or a one-shot ``train``'s prefetch would) and the fold actors are
started and pinged (a one-shot ``train`` has them up by the time a large file is loaded); no
warm-up fit runs, so the first run's folds pay their process's first fit.

Read from each run:

- ``training_stage_s``: the summary's ``timings.training_seconds`` (``training_start`` to the
  executor's return, the last fold's predictions CSV included); ``to_last_result_s`` ends at the
  last fold's result arriving in the driver instead.
- ``sum_fit_s``: the fits summed, a pack's once (its folds train together: the longest of its
  folds' ``fold_train_seconds``, each being the pack's training plus that fold's scoring),
  ``cores``: the CPUs Ray had, and ``ratio`` = stage / (sum_fit / cores).
  ``ratio_limit``: a lower bound no schedule of these fits can beat, max(sum_fit / cores,
  largest fit) / (sum_fit / cores).
- per fold: ``wave`` (the fold's turn on its worker: 1 for the first fold an actor ran in this
  run), ``dispatch_s`` and ``result_s`` (from the training start: the executor's call, which the
  summary's ``fold_round_trip_seconds`` dates back from the result's arrival in the driver),
  ``fit_s``, ``dispatch_to_first_epoch_s`` (to the end of epoch 1 in the worker, from the
  ``epoch_metrics`` events' ``elapsed_seconds``), ``epoch_s`` (mean time between two epoch
  ends), ``before_first_step_s`` (the first minus one epoch: an estimate of the time before the
  first step, when there are two epochs or more), ``last_epoch_to_result_s`` (calibration,
  predictions, result transfer) and ``result_to_fold_complete_s`` (the driver's predictions CSV
  and ``fold_complete``, from the event's hub time).

``--with-local`` also runs the same job in-process (``executor: local``, folds one after the
other) in each repeat, the order of the two rotated, for the absolute reference (its trainer
makes its imports before the first run, as the actors do; its ``ratio`` is against one core).
Medians over ``--repeats``; every run's figures are printed too, and each run's headline on
stderr as it ends.

Scaled from a 50k-row run on 2 cores: at 1M rows a Ray run's training stage should take
30-60 s and a local one 40-50 s; the first invocation writes a ~100 MB CSV (seconds).

Usage: python bench/large_run.py [--rows 1000000] [--folds 5] [--epochs 2] [--repeats 1]
       [--with-local] [--out FILE.json] [--cache-dir DIR]
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
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

GOAL = "training_stage / (sum of fold fit seconds / cores) <= 1.25 on 2 cores"
# A minute bar's close-to-close volatility in the synthetic data, and its seed.
BAR_VOL = 0.001
SEED = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic minute bars")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--with-local",
        action="store_true",
        help="also run the job in-process (executor: local) in each repeat (slow)",
    )
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench_large_run",
        help="where the synthetic CSV is kept between invocations",
    )
    return p.parse_args(argv)


def synthetic_csv(rows: int, cache_dir: Path) -> tuple[Path, float | None]:
    """The CSV of ``rows`` minute bars, and the seconds it took to write (None: it was cached)."""
    path = cache_dir / f"ar1_minute_{rows}_seed{SEED}.csv"
    if path.is_file():
        return path, None
    from tests.synthetic import ar1_ohlcv

    started = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    bars = ar1_ohlcv(rows, seed=SEED, freq="min", vol=BAR_VOL)
    partial = path.with_suffix(f".{os.getpid()}.part")
    bars.to_csv(partial, index=False)  # timestamps as "2000-01-03 00:00:00"
    partial.replace(path)  # a run stopped while writing leaves no half file under the name
    return path, time.perf_counter() - started


class TimedExecutor:
    """An executor that notes when the run's training started and when each result arrived."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.training_started_at = 0.0
        self.arrived: dict[int, float] = {}

    def run_jobs(self, jobs: Any, on_result: Any, on_end: Any = None) -> dict[str, Exception]:
        (job,) = jobs  # one run per call here
        self.training_started_at = job.training_started_at
        self.arrived = {}

        def noted(result: Any) -> None:
            self.arrived[result.fold_id] = time.time()
            on_result(result)

        errors: dict[str, Exception] = self.inner.run_jobs(jobs, noted, on_end)
        return errors

    def shutdown(self) -> None:
        self.inner.shutdown()


def read_events(run_dir: Path, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The run's ``events.jsonl``, once its terminal event is in it (the hub writes it)."""
    path = run_dir / "events.jsonl"
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text().splitlines() if path.is_file() else []
        events = [json.loads(line) for line in lines if line.strip()]
        if any(e["type"] in ("training_complete", "training_error") for e in events):
            return events
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path}: no terminal event after {timeout_s:g} s")
        time.sleep(0.1)


def waves(dispatched: dict[int, float], pids: dict[int, int]) -> dict[int, int]:
    """Each fold's turn on its worker (1: the first fold the worker ran in this run)."""
    turn: dict[int, int] = {}
    ran: dict[int, int] = {}
    for fold in sorted(dispatched, key=dispatched.__getitem__):
        worker = pids.get(fold, 0)  # in-process: one worker
        ran[worker] = ran.get(worker, 0) + 1
        turn[fold] = ran[worker]
    return turn


def analyse(run: Any, executor: TimedExecutor, cores: int) -> dict[str, Any]:
    """The stage, the fits and the per-fold breakdown of one finished run (module doc)."""
    if run.state.value != "completed":
        raise RuntimeError(f"run {run.run_id} ended {run.state.value}: {run.error}")
    summary = json.loads(Path(run.summary_path).read_text())
    timings = summary["timings"]
    events = read_events(Path(run.run_dir))
    start = executor.training_started_at
    epoch_ends: dict[int, list[float]] = {}
    completed: dict[int, float] = {}
    for event in events:
        if event["type"] == "epoch_metrics":
            epoch_ends.setdefault(event["fold_id"], []).append(start + event["elapsed_seconds"])
        elif event["type"] == "fold_complete":
            completed[event["fold_id"]] = event["ts"]
    fits = {int(k): v for k, v in timings["fold_train_seconds"].items()}
    trips = {int(k): v for k, v in timings["fold_round_trip_seconds"].items()}
    arrived = executor.arrived
    dispatched = {k: arrived[k] - trips[k] for k in fits}
    pids: dict[int, int] = dict(getattr(executor.inner, "current_pids", {}))
    turn = waves(dispatched, pids)
    train_sizes = {
        f["fold_id"]: f["segments"]["train"]["stop"] - f["segments"]["train"]["start"]
        for f in summary["folds"]
    }

    folds = []
    for k in sorted(fits):
        ends = sorted(epoch_ends.get(k, []))
        epoch = statistics.mean(b - a for a, b in pairwise(ends)) if len(ends) > 1 else None
        first = ends[0] - dispatched[k] if ends else None
        folds.append(
            {
                "fold": k,
                "train_size": train_sizes[k],
                "wave": turn[k],
                "worker_pid": pids.get(k),
                "dispatch_s": round(dispatched[k] - start, 3),
                "result_s": round(arrived[k] - start, 3),
                "fit_s": round(fits[k], 3),
                "round_trip_s": round(trips[k], 3),
                "dispatch_to_first_epoch_s": None if first is None else round(first, 3),
                "epoch_s": None if epoch is None else round(epoch, 3),
                "before_first_step_s": None if first is None or epoch is None else round(first - epoch, 3),
                "last_epoch_to_result_s": round(arrived[k] - ends[-1], 3) if ends else None,
                "result_to_fold_complete_s": round(completed[k] - arrived[k], 3) if k in completed else None,
            }
        )
    stage = timings["training_seconds"]
    # a pack's models train together: its fit is counted once (the longest of its folds' times,
    # each being the pack's training plus that fold's scoring: docs/method.md, "Packed training")
    packs: dict[str, float] = {}
    for f in summary["folds"]:
        key = f.get("pack_id") or f"fold-{f['fold_id']}"
        packs[key] = max(packs.get(key, 0.0), fits[f["fold_id"]])
    sum_fit = sum(packs.values())
    ideal = max(sum_fit / cores, max(packs.values()))
    return {
        "executor": summary["executor"],
        "training_stage_s": round(stage, 3),
        "to_last_result_s": round(max(arrived.values()) - start, 3),
        "sum_fit_s": round(sum_fit, 3),
        "cores": cores,
        "ratio": round(stage / (sum_fit / cores), 3),
        "ratio_limit": round(ideal / (sum_fit / cores), 3),
        "data_s": round(timings["data_seconds"], 3),
        "fold_overhead_fraction": round(timings["fold_overhead_fraction"], 4),
        "waves": max(turn.values()),
        "packs": len(packs),
        "folds": folds,
    }


HEADLINE = ("training_stage_s", "to_last_result_s", "sum_fit_s", "ratio", "ratio_limit")


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in HEADLINE}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    from orchestrator.config import config_from_mapping
    from orchestrator.data.cache import run_data
    from orchestrator.events.actor import get_or_create_hub
    from orchestrator.events.hub import EventHub
    from orchestrator.events.publish import InProcessSink, RaySink
    from orchestrator.execution.base import FoldJob
    from orchestrator.execution.cluster import ensure_ray
    from orchestrator.execution.local import LocalExecutor
    from orchestrator.execution.pool import WorkerPool
    from orchestrator.execution.ray import RayExecutor
    from orchestrator.run.driver import execute_run, new_run

    load_before = os.getloadavg()
    csv, written_s = synthetic_csv(args.rows, args.cache_dir)
    reports = tempfile.TemporaryDirectory(prefix="bench_large_run_")
    config = config_from_mapping(
        {
            "data": str(csv),
            "folds": args.folds,
            "epochs": args.epochs,
            "executor": "ray",
            "reports_dir": reports.name,
        }
    )
    started = time.perf_counter()
    data = run_data(config.data, config.date_format, config.lookback)
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    ensure_ray()
    hub = get_or_create_hub()
    pool = WorkerPool()
    ray_executor = TimedExecutor(RayExecutor(pool))
    ray_executor.inner.prestart(config)
    ray.get([ray.get_actor(name).ping.remote() for name in pool.idle_actor_names()])
    ray_up_s = time.perf_counter() - started
    cores = int(ray.cluster_resources().get("CPU", 0))

    local_config = config.model_copy(update={"executor": "local"})
    local_executor = TimedExecutor(LocalExecutor())
    if args.with_local:
        # A job without folds: the in-process trainer makes its imports (torch._dynamo) now, as
        # the actors did when they started, not inside the first run's training stage.
        local_executor.inner.run_folds(
            FoldJob(
                "warm-up", data.features, [], local_config, time.time(), InProcessSink(), threading.Event()
            ),
            lambda result: None,
        )
    ways: dict[str, tuple[Any, Any, Any]] = {
        "ray": (ray_executor, lambda: RaySink(hub), config),
        "local": (local_executor, lambda: InProcessSink(EventHub()), local_config),
    }
    names = ["ray", "local"] if args.with_local else ["ray"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for rep in range(args.repeats):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                executor, sink, cfg = ways[name]
                run = execute_run(new_run(cfg), sink(), executor)
                # the in-process folds run one at a time: its stage is measured against one core
                runs[name].append(analyse(run, executor, cores if name == "ray" else 1))
                print(
                    json.dumps({name: {k: runs[name][-1][k] for k in HEADLINE}}), file=sys.stderr, flush=True
                )
    finally:
        pool.shutdown()
        ray.shutdown()
        reports.cleanup()

    median = {name: medians(rs) for name, rs in runs.items()}
    report = {
        "benchmark": "large_run",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/large_run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            **machine(),
            "load_avg_1m_before": round(load_before[0], 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
        "goal": GOAL,
        "job": {
            "rows": args.rows,
            "samples": len(data.features),
            "folds": config.folds,
            "epochs": config.epochs,
            "patience": config.patience,
            "lookback": config.lookback,
            "batch_size": config.batch_size,
            "window": config.window,
            "max_concurrent_folds": config.max_concurrent_folds,
            "repeats": args.repeats,
            "csv": str(csv),
            "csv_bytes": csv.stat().st_size,
        },
        "setup_s": {
            "csv_written": None if written_s is None else round(written_s, 2),
            "data_load_and_features": round(load_s, 2),
            "ray_start_and_actors_up": round(ray_up_s, 2),
        },
        "ratio": median["ray"]["ratio"],
        "median": median,
        "local_over_ray": (
            round(median["local"]["training_stage_s"] / median["ray"]["training_stage_s"], 3)
            if "local" in median
            else None
        ),
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
