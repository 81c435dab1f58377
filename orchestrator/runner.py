"""One headless training run from the CLI (or a script): pick the executor, wire the events.

On Ray the run executes on a background thread while this thread waits; Ctrl-C cancels the run
(its actors are stopped and it ends with ``training_error``), a second Ctrl-C stops waiting. A
pump thread long-polls the hub and hands the run's events to ``listener`` as they are released.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from orchestrator.config import TrainConfig
from orchestrator.driver import execute_run, new_run
from orchestrator.execution.local import LocalExecutor
from orchestrator.messages import TERMINAL_TYPES
from orchestrator.lifecycle import Run
from orchestrator.sinks import InProcessSink

if TYPE_CHECKING:
    from orchestrator.execution.pool import WorkerPool

__all__ = ["run_training"]

log = logging.getLogger(__name__)

Listener = Callable[[list[dict[str, Any]]], None]

# Long-poll timeout of the event pump: how late it notices that the run thread has returned.
_POLL_S = 0.5
# How long to wait for the run's last events after the run thread returned.
_DRAIN_S = 30.0


def run_training(
    config: TrainConfig,
    listener: Listener | None = None,
    address: str | None = None,
    pool: WorkerPool | None = None,
    interest: frozenset[str] = frozenset(),
) -> Run:
    """Train one run to the end and return it; ``listener`` sees every event as it is released.

    ``interest``: the optional live-detail types the listener needs produced (per-epoch
    ``prediction_delta``, ``batch_progress``); folds skip them otherwise, unless another
    consumer of the hub (a WebSocket client) asks for them.

    On Ray, ``pool`` keeps fold actors warm for the caller's later runs (the caller shuts it
    down); without one, a pool is made for this run and its actors are released at the end.
    """
    run = new_run(config)
    if config.executor == "local":
        execute_run(run, InProcessSink(listener=listener, interest=interest), LocalExecutor())
        return run
    return _run_on_ray(run, listener, address, pool, interest)


def _run_on_ray(
    run: Run,
    listener: Listener | None,
    address: str | None,
    pool: WorkerPool | None,
    interest: frozenset[str],
) -> Run:
    import ray

    from orchestrator.hub import get_or_create_hub
    from orchestrator.execution.cluster import ensure_ray
    from orchestrator.execution.ray import RayExecutor, RaySink

    ensure_ray(address)
    hub = get_or_create_hub()
    executor = RayExecutor(pool)
    # The run's events all come after this seq: the pump never scans older runs' history.
    since: int = cast(Any, ray.get(hub.last_seq.remote()))
    driver_done = threading.Event()
    pump = threading.Thread(
        target=_pump_events,
        args=(hub, run.run_id, since, listener, driver_done, interest),
        name=f"events-{run.run_id}",
        daemon=True,
    )
    worker = threading.Thread(
        target=execute_run,
        args=(run, RaySink(hub), executor),
        name=f"run-{run.run_id}",
        daemon=True,
    )
    pump.start()
    worker.start()
    try:
        _wait_cancelling_on_interrupt(run, worker)
    finally:
        driver_done.set()
        pump.join(timeout=_DRAIN_S)
        if pool is None:
            executor.shutdown()
    return run


def _wait_cancelling_on_interrupt(run: Run, worker: threading.Thread) -> None:
    """Join the run thread; the first Ctrl-C cancels the run, a second one is re-raised."""
    interrupted = False
    while worker.is_alive():
        try:
            worker.join(timeout=0.5)
        except KeyboardInterrupt:
            if interrupted or not run.request_cancel():
                raise
            interrupted = True
            log.warning("cancelling run %s (Ctrl-C again to stop waiting)", run.run_id)


def _pump_events(
    hub: Any,
    run_id: str,
    since: int,
    listener: Listener | None,
    driver_done: threading.Event,
    interest: frozenset[str],
) -> None:
    """Long-poll the hub actor for this run's events until the run's terminal event is seen."""
    import ray

    try:
        while True:
            reply = ray.get(hub.poll.remote(since, _POLL_S, run_id, interest=interest))
            since = max(since, int(reply["last_seq"]))
            events = reply["events"]
            if events and listener is not None:
                listener(events)
            if any(e["type"] in TERMINAL_TYPES for e in events):
                return
            if not events and driver_done.is_set():
                # The driver flushed its terminal event before returning, so an empty answer
                # after it returned means the hub has nothing more of this run.
                return
    except Exception:
        log.exception("run %s: the event pump stopped; events after this are not shown", run_id)
