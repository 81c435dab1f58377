"""What a fold's events cost a packed trial on Ray: publishers that drop them, against the hub's at
two batch windows. Prints JSON.

One trial of the default job on two warm ``FoldTrainer`` actors, split as ``ray_p1`` splits it
(folds 0, 1, 4 in one stack, 2 and 3 in the other), through ``FoldTrainer.run_pack`` as the
executor calls it, with each member's publisher:

- ``none``: a publisher that drops every event (the floor: training and scoring only);
- ``hub_0.05`` / ``hub_0.25``: ``HubPublisher`` to a real EventHub (job store off) with that
  ``batch_window_s`` (``events.publish.BATCH_WINDOW_S`` was 0.05 until issue 22, 0.25 since).

Per way: the trial's wall (both packs submitted at once, until both return) and the CPU seconds
of the two actors' processes and the hub's (``psutil``, read 0.3 s after the packs return so the
hub's last writes count). Ways alternate in every round, order reversed every other round;
medians over rounds, with every round's figures.

Usage: python bench/publish_window.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine  # noqa: E402
from bench.parallel_folds import NullPublisher  # noqa: E402

WAYS = ("none", "hub_0.05", "hub_0.25")
SPLIT = ((0, 1, 4), (2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import psutil
    import ray

    from orchestrator.config import TrainConfig
    from orchestrator.data.cache import run_data
    from orchestrator.events.actor import get_or_create_hub
    from orchestrator.events.publish import HubPublisher
    from orchestrator.run.cv import plan_folds_for
    from workers.fold import FoldContext, FoldTrainer, PackMember

    ray.init(num_cpus=2, include_dashboard=False, namespace=f"bench-publish-{os.getpid()}")
    config = TrainConfig()
    data = run_data(config.data, config.date_format, config.lookback)
    specs = plan_folds_for(config, len(data.features.y))
    hub = get_or_create_hub(namespace=f"bench-publish-{os.getpid()}")
    trainer = ray.remote(FoldTrainer).options(num_cpus=1, max_concurrency=2)
    actors = [trainer.remote(), trainer.remote()]
    pids = ray.get([actor.ping.remote() for actor in actors])
    me = psutil.Process()
    hub_process = next(p for p in me.children(recursive=True) if "_HubActor" in " ".join(p.cmdline()))
    processes = {"workers": [psutil.Process(pid) for pid in pids], "hub": [hub_process]}
    features = ray.put(data.features)

    def cpu() -> dict[str, float]:
        return {k: sum(p.cpu_times().user + p.cpu_times().system for p in ps) for k, ps in processes.items()}

    def members(folds: tuple[int, ...], run_id: str, way: str) -> list[PackMember]:
        context = FoldContext(run_id, time.time())
        if way == "none":
            return [PackMember(specs[i], config, context, NullPublisher()) for i in folds]
        ray.get(hub.register_run.remote(run_id, None))
        window = float(way.split("_")[1])
        return [
            PackMember(
                specs[i], config, context, HubPublisher(hub, run_id, f"fold-{i}", batch_window_s=window)
            )
            for i in folds
        ]

    rounds: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for r in range(args.rounds + 1):  # round 0 warms the actors up and is not counted
        for way in WAYS if r % 2 == 0 else WAYS[::-1]:
            # the runs registered with the hub before the clock: set-up, not the trial's time
            packs = [members(folds, f"r{r}-{way}-{i}", way) for i, folds in enumerate(SPLIT)]
            before, started = cpu(), time.perf_counter()
            calls = [actor.run_pack.remote(features, pack) for actor, pack in zip(actors, packs, strict=True)]
            ray.get(calls)
            wall = time.perf_counter() - started
            time.sleep(0.3)
            after = cpu()
            if r > 0:
                figures = {"wall_seconds": wall, **{f"{k}_cpu_seconds": after[k] - before[k] for k in after}}
                rounds[way].append({k: round(v, 3) for k, v in figures.items()})
    median = {
        way: {key: round(statistics.median(x[key] for x in rs), 3) for key in rs[0]}
        for way, rs in rounds.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "publish_window",
                "machine": machine(("ray", "torch")),
                "load_average": os.getloadavg(),
                "args": vars(args),
                "median": median,
                "rounds": rounds,
            },
            indent=2,
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
