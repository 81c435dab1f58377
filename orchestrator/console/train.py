"""One headless training run from the CLI (or a script): pick the executor, follow the run's events.

The run executes on a background thread while this thread waits; Ctrl-C cancels the run (its
folds are stopped and it ends with ``training_error``), a second Ctrl-C stops waiting. The run's
events reach ``listener`` through the event stream (``orchestrator.events.stream``), the same
follower of the hub that the API uses, on the stream's own thread.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.config import TrainConfig
from orchestrator.data.cache import run_data
from orchestrator.events.hub import EventHub
from orchestrator.events.publish import EventSink, InProcessSink, Listener
from orchestrator.events.stream import Batch, EventStream, HubClient, LocalHubClient, StreamThread
from orchestrator.execution.base import FoldExecutor
from orchestrator.execution.local import LocalExecutor
from orchestrator.lifecycle import Run
from orchestrator.run.driver import execute_run, new_run
from orchestrator.store.runs import store_row

if TYPE_CHECKING:
    from orchestrator.execution.pool import WorkerPool

__all__ = ["run_training", "train_command"]

log = logging.getLogger(__name__)

# Long-poll timeout of the run's event stream.
_POLL_S = 0.5
# How long to wait for the run's last events after the run thread returned.
_DRAIN_S = 30.0


def _nothing() -> None:
    return None


def run_training(
    config: TrainConfig,
    listener: Listener | None = None,
    address: str | None = None,
    pool: WorkerPool | None = None,
    interest: frozenset[str] = frozenset(),
    store_url: str | None = None,
    connect_deadline_s: float | None = None,
) -> Run:
    """Train one run to the end and return it; ``listener`` sees every event as it is released.

    ``interest``: the optional live-detail types the listener needs produced (per-epoch
    ``prediction_delta``, ``batch_progress``); folds skip them otherwise, unless another
    consumer of the hub (a WebSocket client) asks for them.

    On Ray, ``pool`` keeps fold actors warm for the caller's later runs (the caller shuts it
    down); without one, a pool is made for this run and its actors are released at the end.

    ``store_url``: the job store this run is recorded in, whose lease the command's hub takes
    (``LeaseHeldError`` naming the holder while a server or another command writes it).
    ``connect_deadline_s``: joining a cluster at ``address`` (``ensure_ray``) ends the process
    after that long, or on SIGTERM meanwhile (the command's bound).
    """
    run = new_run(config)
    sink: EventSink
    hub: HubClient
    executor: FoldExecutor
    close_store: Callable[[], None] = _nothing
    if config.executor == "local":
        local_hub = EventHub()
        if store_url is not None:
            from orchestrator.events.durable import hub_on_store

            local_hub, recorder = hub_on_store(store_url)
            close_store = recorder.close
            local_hub.record_run(store_row(run))
        sink, hub, executor = InProcessSink(local_hub), LocalHubClient(local_hub), LocalExecutor()
    else:
        from orchestrator.events.actor import get_or_create_hub
        from orchestrator.events.publish import RaySink
        from orchestrator.events.stream import RayHubClient
        from orchestrator.execution.cluster import ensure_ray
        from orchestrator.execution.ray import RayExecutor

        # Ray's start is mostly waiting for its processes: load the data meanwhile (the run's own
        # load then finds it cached; a failure is left for the run to report), and start the
        # fold actors once Ray and the hub are up, so that their imports overlap the rest.
        prefetch = threading.Thread(target=_prefetch_data, args=(config,), daemon=True)
        prefetch.start()
        ensure_ray(address, connect_deadline_s=connect_deadline_s)
        if store_url is None:
            handle = get_or_create_hub()
        else:
            import ray

            from orchestrator.events.actor import hub_for_store

            handle = hub_for_store(store_url, detached=False, reattach=False)
            ray.get(handle.record_run.remote(store_row(run)))
            close_store = lambda: ray.get(handle.close_store.remote())  # noqa: E731
        ray_executor = RayExecutor(pool)
        ray_executor.prestart(config)
        sink, hub, executor = RaySink(handle), RayHubClient(handle), ray_executor
        prefetch.join()
    try:
        _execute_following(run, sink, executor, hub, listener, interest)
    finally:
        if pool is None:
            executor.shutdown()
        close_store()
    return run


def _prefetch_data(config: TrainConfig) -> None:
    try:
        run_data(config.data, config.date_format, config.lookback)
    except Exception:  # the run loads again and reports the error as its training_error
        pass


def _execute_following(
    run: Run,
    sink: EventSink,
    executor: FoldExecutor,
    hub: HubClient,
    listener: Listener | None,
    interest: frozenset[str],
) -> None:
    """Execute the run on a thread while the stream hands its events to ``listener``."""

    def deliver(batch: Batch) -> None:
        if listener is not None:
            listener(batch.events)

    stream = EventStream(hub, run_id=run.run_id, poll_timeout_s=_POLL_S)
    stream.subscribe(deliver, interest)
    follower = StreamThread(stream, name=f"events-{run.run_id}")
    # started first: the stream follows from the hub's last event before the run, and has
    # declared ``interest`` before the first fold asks what is wanted
    follower.start()
    worker = threading.Thread(
        target=execute_run, args=(run, sink, executor), name=f"run-{run.run_id}", daemon=True
    )
    worker.start()
    try:
        _wait_cancelling_on_interrupt(run, worker)
        # the driver flushed its terminal event before returning: the hub has all of the run
        if not follower.drain(_DRAIN_S):
            log.warning("run %s: its last events did not arrive within %.0f s", run.run_id, _DRAIN_S)
    finally:
        follower.stop()


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


def train_command(args: argparse.Namespace) -> int:
    """``orchestrator train``: one run with progress bars; exit 0 completed, 1 failed."""
    from orchestrator.console.progress import EventFileWriter, ProgressView
    from orchestrator.console.run_flags import config_from_args
    from orchestrator.execution.connect import CONNECT_DEADLINE_S
    from orchestrator.messages import MESSAGE_TYPES
    from orchestrator.store.engine import resolve_store_url

    config = config_from_args(args)
    view = ProgressView(enabled=not args.quiet)
    writer = EventFileWriter(args.events_out) if args.events_out else None
    listeners = [view] + ([writer] if writer else [])

    def fanout(events: list[dict[str, Any]]) -> None:
        for listener in listeners:
            listener(events)

    try:
        # the events file is the run's full record: it wants the live detail too
        interest = frozenset(MESSAGE_TYPES) if writer else frozenset()
        store_url = resolve_store_url(args.db, config.reports_dir)
        run = run_training(
            config,
            listener=fanout,
            address=args.address,
            interest=interest,
            store_url=store_url,
            connect_deadline_s=CONNECT_DEADLINE_S,
        )
    finally:
        view.close()
        if writer:
            writer.close()
    if run.error:
        print(f"error: {run.error}", file=sys.stderr)
    else:
        print(f"summary: {run.summary_path}")
    code = 1 if run.error else 0
    if config.executor == "ray":
        from orchestrator.execution.cluster import exit_leaving_own_instance

        exit_leaving_own_instance(code)  # no wait for Ray's shutdown: the watchdog stops it
    return code
