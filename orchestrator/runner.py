"""One headless training run from the CLI (or a script): pick the executor, wire the events."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from orchestrator.config import TrainConfig
from orchestrator.driver import execute_run, new_run
from orchestrator.executors import LocalExecutor
from orchestrator.lifecycle import Run
from orchestrator.sinks import InProcessSink

__all__ = ["run_training"]

Listener = Callable[[list[dict[str, Any]]], None]


def run_training(
    config: TrainConfig, listener: Listener | None = None, address: str | None = None
) -> Run:
    """Train one run to the end and return it; ``listener`` sees every event as it is released."""
    run = new_run(config)
    if config.executor == "local":
        execute_run(run, InProcessSink(listener=listener), LocalExecutor())
        return run
    return _run_on_ray(run, listener, address)


def _run_on_ray(run: Run, listener: Listener | None, address: str | None) -> Run:
    from orchestrator.hub import get_or_create_hub
    from orchestrator.ray_executor import RayExecutor, RaySink, ensure_ray

    ensure_ray(address)
    hub = get_or_create_hub()
    executor = RayExecutor()
    stop = threading.Event()
    pump = threading.Thread(
        target=_pump_events, args=(hub, run.run_id, listener, stop), daemon=True
    )
    pump.start()
    try:
        execute_run(run, RaySink(hub), executor)
    finally:
        stop.set()
        pump.join(timeout=30)
        executor.shutdown()
    return run


def _pump_events(hub: Any, run_id: str, listener: Listener | None, stop: threading.Event) -> None:
    """Long-poll the hub actor for this run's events until the run's terminal event is seen."""
    import ray

    since = 0
    while True:
        reply = ray.get(hub.poll.remote(since, 0.5, run_id))
        events = reply["events"]
        if events:
            since = events[-1]["seq"]
            if listener is not None:
                listener(events)
            if any(e["type"] in ("training_complete", "training_error") for e in events):
                return
        elif stop.is_set():  # the driver has returned and its terminal event was already seen
            return
