"""Event stream benchmark: hub publish -> WebSocket client receive latency, and fan-out with no loss.

The real path: a producer in the Ray driver publishes (fire-and-forget) to the EventHub actor;
the API's pump long-polls the actor, encodes each event once and fans it out to one bounded queue
per client; uvicorn sends it; ``websockets`` clients receive it. The server (and the producer)
run in this process; the clients run in a child process so their parsing does not share this
process's GIL. Both sides read ``time.monotonic()`` (CLOCK_MONOTONIC, one clock per machine).

    .venv/bin/python bench/event_stream.py [--events 300] [--rate 100] [--clients 1,10,100]

Prints one JSON object: machine, latency with 1 client (p50/p99/max, ms) and, per client count,
events lost (must be 0) and latency percentiles, split at the hub (its ``ts`` stamp). The whole
measurement runs twice in one process, with the job store off and on (a hub writing a SQLite
store in a temporary folder), with the ratio of their hub-to-client p99 (target <= 1.3), the
store's sustained write rate (events per second through a hub's recorder, in process), and the
CPU one event costs at each stage (``per_event_cpu``: the producer's encode and pickle, the hub's
unpickle, validation and release, the API's unpickle of a poll reply and what it sends; process
time, best of 5, for an ``epoch_metrics`` and a 1000-row ``prediction_delta``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

NAMESPACE = "bench-event-stream"


# ---- the client side (child process) ---------------------------------------------------------


async def _receive_all(url: str, n_clients: int, expected: int) -> dict[str, Any]:
    import websockets

    async def one(ready: asyncio.Event) -> list[tuple[float, float, str]]:
        received: list[tuple[float, float, str]] = []
        async with websockets.connect(url, proxy=None, max_queue=None) as ws:
            ready.set()
            async for text in ws:
                received.append((time.monotonic(), time.time(), str(text)))
                if '"training_complete"' in text:
                    break
        return received

    readies = [asyncio.Event() for _ in range(n_clients)]
    tasks = [asyncio.create_task(one(r)) for r in readies]
    await asyncio.gather(*(r.wait() for r in readies))
    print("ready", flush=True)
    results = await asyncio.gather(*tasks)
    latencies_ms: list[float] = []
    producer_to_hub_ms: list[float] = []
    hub_to_client_ms: list[float] = []
    counts, gaps = [], 0
    for received in results:
        seqs = []
        for at, wall_at, text in received:
            message = json.loads(text)
            if message["type"] != "notification":
                continue
            seqs.append(message["seq"])
            _, _, published_wall, published_at = message["message"].split()
            latencies_ms.append((at - float(published_at)) * 1000)
            # the hub stamps ts = time.time() when it releases the event
            producer_to_hub_ms.append((message["ts"] - float(published_wall)) * 1000)
            hub_to_client_ms.append((wall_at - message["ts"]) * 1000)
        counts.append(len(seqs))
        gaps += sum(1 for a, b in pairwise(seqs) if b != a + 1)
    return {
        "received_per_client": {"min": min(counts), "max": max(counts)},
        "lost": n_clients * expected - sum(counts),
        "seq_gaps": gaps,
        "latencies_ms": latencies_ms,
        "producer_to_hub_ms": producer_to_hub_ms,
        "hub_to_client_ms": hub_to_client_ms,
    }


def client_main(url: str, n_clients: int, expected: int) -> None:
    summary = asyncio.run(_receive_all(url, n_clients, expected))
    print(json.dumps(summary), flush=True)


# ---- the server side -------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


def produce(publisher: Any, events: int, rate: float) -> bool:
    """A producer in its own process (a Ray task), like a fold actor: paced, fire-and-forget."""
    interval = 1.0 / rate
    started = time.monotonic()
    for i in range(events):
        target = started + i * interval
        while (now := time.monotonic()) < target:
            time.sleep(min(target - now, 0.002))
        publisher.publish(
            {
                "type": "notification",
                "level": "info",
                "kind": "bench",
                "message": f"bench {i} {time.time():.6f} {time.monotonic():.9f}",
            }
        )
    publisher.publish({"type": "training_complete", "folds_completed": 0, "summary_path": "-"})
    return bool(publisher.flush(60))


def scenario(server: Any, hub: Any, n_clients: int, events: int, rate: float) -> dict[str, Any]:
    import ray

    from orchestrator.events.publish import HubPublisher

    run_id = f"bench-{n_clients}-{time.time_ns()}"
    ray.get(hub.register_run.remote(run_id, None))
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--client",
            f"{server.ws_url}?run_id={run_id}",
            str(n_clients),
            str(events),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError("the client process did not connect")
    producer = ray.remote(num_cpus=0)(produce).remote(HubPublisher(hub, run_id, "bench"), events, rate)
    ray.get(producer, timeout=600)
    out, _ = child.communicate(timeout=300)
    summary = json.loads(out.strip().splitlines()[-1])
    latencies = summary.pop("latencies_ms")
    to_hub = summary.pop("producer_to_hub_ms")
    from_hub = summary.pop("hub_to_client_ms")
    return {
        "clients": n_clients,
        "events": events,
        "rate_per_s": rate,
        **summary,
        "latency": percentiles(latencies) if latencies else None,
        "producer_to_hub": percentiles(to_hub) if to_hub else None,
        "hub_to_client": percentiles(from_hub) if from_hub else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300, help="events per scenario (default 300)")
    parser.add_argument("--rate", type=float, default=100.0, help="events published per second")
    parser.add_argument("--clients", default="1,10,100", help="client counts for fan-out")
    parser.add_argument(
        "--latency-events", type=int, default=1000, help="events of the 1-client latency run (default 1000)"
    )
    parser.add_argument("--compression", action="store_true", help="permessage-deflate on")
    parser.add_argument("--store", default="off,on", help="job store modes to measure (default off,on)")
    parser.add_argument(
        "--sustained-events",
        type=int,
        default=50_000,
        help="events of the store's sustained write measurement (default 50000)",
    )
    parser.add_argument("--client", nargs=3, metavar=("URL", "N", "EVENTS"), help=argparse.SUPPRESS)
    parser.add_argument("--cpu-only", action="store_true", help="only per_event_cpu (no Ray, no clients)")
    args = parser.parse_args()
    if args.client:
        client_main(args.client[0], int(args.client[1]), int(args.client[2]))
        return
    if args.cpu_only:
        print(json.dumps({"benchmark": "event_stream", "per_event_cpu": per_event_cpu()}, indent=2))
        return

    import ray

    from api.app import ApiSettings, create_app
    from api.serving import BackgroundServer
    from orchestrator.events.actor import get_or_create_hub
    from orchestrator.events.publish import RaySink
    from orchestrator.events.stream import RayHubClient
    from orchestrator.jobs.manager import RunManager

    load_before = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        store_url = f"sqlite:///{folder}/orchestrator.db"
        try:
            for mode in args.store.split(","):
                options: dict[str, Any] = {"store_url": store_url} if mode == "on" else {}
                hub = get_or_create_hub(namespace=f"{NAMESPACE}-{mode}", **options)
                manager = RunManager(RaySink(hub))
                app = create_app(RayHubClient(hub), manager, ApiSettings(reports_dir=str(ROOT / "reports")))
                try:
                    with BackgroundServer(app, ws_compression=args.compression) as server:
                        latency = scenario(server, hub, 1, args.latency_events, args.rate)
                        fanout = [
                            scenario(server, hub, int(n), args.events, args.rate)
                            for n in args.clients.split(",")
                        ]
                    if mode == "on":
                        ray.get(hub.flush_store.remote(60))
                        latency["stored_events"] = _stored_events(store_url)
                finally:
                    manager.shutdown()
                    ray.kill(hub)
                results[mode] = {"latency_1_client": latency, "fanout": fanout}
        finally:
            ray.shutdown()
        sustained = store_throughput(f"sqlite:///{folder}/sustained.db", args.sustained_events)
    comparison = None
    if "on" in results and "off" in results:
        p99 = {m: results[m]["latency_1_client"]["hub_to_client"]["p99_ms"] for m in ("off", "on")}
        comparison = {"hub_to_client_p99_ms": p99, "ratio_on_to_off": round(p99["on"] / p99["off"], 3)}
    print(
        json.dumps(
            {
                "benchmark": "event_stream",
                "machine": machine(("ray", "uvicorn", "websockets", "fastapi", "sqlalchemy")),
                "load_average_1min": {
                    "before": round(load_before[0], 2),
                    "after": round(os.getloadavg()[0], 2),
                },
                "path": "producer (Ray task) -> EventHub actor -> pump long-poll -> per-client queue "
                "-> uvicorn -> websockets client",
                "permessage_deflate": args.compression,
                "store": {"comparison": comparison, "sustained": sustained},
                "per_event_cpu": per_event_cpu(),
                **{f"store_{mode}": result for mode, result in results.items()},
            },
            indent=2,
        )
    )


def _stored_events(url: str) -> int:
    from orchestrator.store import JobStore

    store = JobStore.open(url)
    try:
        return store.last_seq()
    finally:
        store.close()


def store_throughput(url: str, events: int) -> dict[str, Any]:
    """Events per second a hub's recorder writes to the store when publishing never pauses."""
    from orchestrator.events.hub import EventHub
    from orchestrator.events.record import body_json
    from orchestrator.events.recorder import open_recorder
    from orchestrator.messages import EPOCH_METRIC_FIELDS, EpochMetrics

    recorder = open_recorder(url)
    hub = EventHub(recorder=recorder, max_events=1000)
    metrics = dict.fromkeys(EPOCH_METRIC_FIELDS, 0.25)
    texts = [  # what a fold sends: the message's JSON text
        body_json(EpochMetrics(fold_id=0, epoch=i, elapsed_seconds=1.0, **metrics)) for i in range(events)
    ]
    started = time.perf_counter()
    for i, text in enumerate(texts):
        hub.publish("sustained", "bench", i, text)
    published = time.perf_counter() - started
    assert recorder.flush(600)
    elapsed = time.perf_counter() - started
    stats = recorder.stats()
    recorder.close()
    return {
        "events": events,
        "publish_seconds": round(published, 3),
        "written_seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
        "batches": stats["batches"],
        "mean_batch": round(events / max(stats["batches"], 1), 1),
    }


def _producer_side(models: list[Any]) -> list[bytes]:
    import pickle

    from orchestrator.events.record import body_json

    return [pickle.dumps(body_json(m)) for m in models]


def _api_side(reply: bytes) -> list[str]:
    import pickle

    return [record.text for record in pickle.loads(reply)]


def per_event_cpu() -> dict[str, Any]:
    """Microseconds of CPU per event at each stage of the path, without Ray's own call costs:
    what the producer sends (its message's JSON text, pickled), the hub's unpickle and ``publish``
    (validate, stamp, hold), and the API's unpickle of a poll reply of records and the frame text it
    sends (the record's, never encoded again)."""
    import pickle
    import random
    from functools import partial

    from orchestrator.events.hub import EventHub
    from orchestrator.messages import EPOCH_METRIC_FIELDS, EpochMetrics, PredictionDelta, PredictionRow

    def epoch(i: int) -> EpochMetrics:
        rng = random.Random(i)
        metrics = {name: rng.random() for name in EPOCH_METRIC_FIELDS}
        return EpochMetrics(fold_id=i % 5, epoch=i, elapsed_seconds=1.5, **metrics)

    def delta(i: int) -> PredictionDelta:
        rng = random.Random(i)
        rows = [
            PredictionRow(
                timestamp="2020-01-01T00:00:00Z",
                **{k: rng.random() for k in ("mu", "sigma", "p_up_raw", "p_up_cal", "conformal_p", "pit_z")},
            )
            for _ in range(1000)
        ]
        return PredictionDelta(fold_id=0, epoch=i, predictions=rows)

    def cpu_s(work: Any) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            work()
            best = min(best, time.process_time() - started)
        return best

    def publish_all(wire: list[bytes]) -> EventHub:
        hub = EventHub(max_events=len(wire) + 10)
        for pseq, payload in enumerate(wire):
            hub.publish("r", "p", pseq, pickle.loads(payload))
        return hub

    out: dict[str, Any] = {}
    for name, make, n in (("epoch_metrics", epoch, 3000), ("prediction_delta_1000_rows", delta, 20)):
        models = [make(i) for i in range(n)]
        producer = cpu_s(partial(_producer_side, models))
        wire = _producer_side(models)
        hub_s = cpu_s(partial(publish_all, wire))
        reply = pickle.dumps(publish_all(wire).run_events("r"))
        api_s = cpu_s(partial(_api_side, reply))
        out[name] = {
            "producer_us": round(producer / n * 1e6, 1),
            "hub_us": round(hub_s / n * 1e6, 1),
            "api_us": round(api_s / n * 1e6, 1),
            "poll_reply_bytes_per_event": round(len(reply) / n),
        }
    return out


if __name__ == "__main__":
    main()
