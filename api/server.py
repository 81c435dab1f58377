"""``python -m orchestrator serve``: the API process, which is also the Ray driver.

``main`` joins (or starts) Ray, gets the EventHub actor, builds a ``RunManager`` whose runs train
on Ray with a shared pool of warm fold actors, and serves the app on uvicorn (``api.serving``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.app import ApiSettings, create_app
from api.security import InsecureBindError, check_bind, own_origins
from api.server_owned import owned_field_refusal
from api.serving import DEFAULT_WS_MAX_SIZE, Server, uvicorn_config
from orchestrator.console.flags import TOKEN_ENV, token_or_env
from orchestrator.jobs.queue import DEFAULT_AGING_S

if TYPE_CHECKING:
    from orchestrator.data.watch import CandleBook, DataWatcher
    from orchestrator.store import JobStore

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

# chart_update and data warnings go through the hub under this run id (never registered, so it
# is never "the active run"; clients that subscribe to chart_update get them live).
DATA_FEED_RUN_ID = "data_feed"
CANDLES_PER_MESSAGE = 1000


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.console.run_flags import add_train_flags

    parser = argparse.ArgumentParser(
        prog="orchestrator serve",
        description="Serve the REST API and the /ws event stream; runs train on Ray. "
        "The run flags below set the defaults of every run this server starts "
        "(POST /train bodies override them field by field).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token",
        help=f"require this bearer token on REST and /ws (default: ${TOKEN_ENV}); "
        "required when --host is not a loopback address",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept this browser Origin, e.g. https://dash.example.com (repeatable; '*' any)",
    )
    parser.add_argument(
        "--data-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder whose files a request may train on, named relative to it (POST /train "
        '{"data": "bars.csv"}); repeatable, searched in order. Without it a request\'s data '
        "is 'sp500' or this server's own --data; no request names any other path",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster address (default: RAY_ADDRESS or a local instance); "
        "on a cluster the event hub is detached and outlives this process",
    )
    parser.add_argument(
        "--db",
        help="the job store: a SQLAlchemy URL (default: $ORCHESTRATOR_DB, else "
        "the SQLite file orchestrator.db under --reports-dir)",
    )
    parser.add_argument(
        "--train-on-start",
        action="store_true",
        help="start a run with the run flags once the server is listening",
    )
    parser.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=None,
        metavar="N",
        help="train at most N runs (and HPO trials) at once; the others wait in the "
        "job queue (default: as many as the cluster's resources admit)",
    )
    parser.add_argument(
        "--priority-aging-s",
        type=float,
        default=DEFAULT_AGING_S,
        metavar="S",
        help="a queued run gains one priority point per S seconds it waits, so none "
        f"waits forever behind later higher-priority runs (default {DEFAULT_AGING_S:g}; "
        "0 turns aging off)",
    )
    parser.add_argument("--max-clients", type=int, default=200, help="/ws client cap (default 200)")
    parser.add_argument(
        "--client-queue",
        type=int,
        default=1000,
        help="messages queued per /ws client before it is closed with 4008 (default 1000)",
    )
    parser.add_argument(
        "--ws-max-size",
        type=int,
        default=DEFAULT_WS_MAX_SIZE,
        help="largest message a client may send, bytes (default 4096; larger: close 1009)",
    )
    parser.add_argument(
        "--ws-ping-interval", type=float, default=20.0, help="seconds between protocol pings (default 20)"
    )
    parser.add_argument(
        "--ws-compression",
        action="store_true",
        help="offer permessage-deflate (less bandwidth, more CPU per client)",
    )
    parser.add_argument(
        "--watch-data",
        action="store_true",
        help="watch the --data CSV/Parquet file: appended rows go out as chart_update "
        "and become part of the next run's data",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    add_train_flags(parser)
    return parser


def _data_source(
    args: argparse.Namespace, hub: Any, settings: ApiSettings
) -> tuple[DataWatcher | None, Callable[[], CandleBook] | None]:
    """With ``--watch-data``: a watcher whose appended rows go out as ``chart_update`` (bad rows
    as warning notifications), and its feed as the source of ``GET /data/candles``."""
    from orchestrator.data.watch import DataFeed, DataWatcher, FeedUpdate
    from orchestrator.events.publish import HubPublisher
    from orchestrator.messages import ChartUpdate, Notification

    if not args.watch_data:
        return None, None

    feed = DataFeed(
        settings.base_config.data,
        Path(settings.reports_dir) / "watched",
        settings.base_config.date_format,
    )
    publisher = HubPublisher(hub, DATA_FEED_RUN_ID, "watcher")

    def on_update(update: FeedUpdate) -> None:
        for start in range(0, len(update.candles), CANDLES_PER_MESSAGE):
            publisher.publish(ChartUpdate(candles=update.candles[start : start + CANDLES_PER_MESSAGE]))
        for warning in update.warnings:
            publisher.publish(Notification(level="warning", kind="data_row_skipped", message=warning))

    return DataWatcher(feed, on_update), lambda: feed


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.console.run_flags import config_from_args
    from orchestrator.errors import OrchestratorError

    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.max_concurrent_runs is not None and args.max_concurrent_runs < 1:
        parser.error(f"--max-concurrent-runs must be >= 1, got {args.max_concurrent_runs}")
    if args.priority_aging_s < 0:
        parser.error(f"--priority-aging-s must be >= 0, got {args.priority_aging_s:g}")
    token = token_or_env(args.token)
    try:
        check_bind(args.host, token)
        base = config_from_args(args)
        refusal = owned_field_refusal(base.model_dump(), base.reports_dir)
        if refusal is not None:
            raise OrchestratorError(refusal.message)
        settings = ApiSettings(
            reports_dir=base.reports_dir,
            token=token,
            allow_origins=tuple(args.allow_origin),
            own_origins=tuple(own_origins(args.host, args.port)),
            base_config=base,
            data_roots=tuple(args.data_root),
            max_clients=args.max_clients,
            client_queue_events=args.client_queue,
        )
        store_url, store = _open_store(args.db, base.reports_dir)
    except (InsecureBindError, OrchestratorError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from orchestrator.events.actor import hub_for_store
    from orchestrator.events.publish import RaySink
    from orchestrator.events.stream import RayHubClient
    from orchestrator.execution.cluster import ensure_ray
    from orchestrator.execution.connect import CONNECT_DEADLINE_S
    from orchestrator.execution.pool import WorkerPool
    from orchestrator.hpo import HpoService
    from orchestrator.jobs.admission import default_capacity
    from orchestrator.jobs.manager import RunManager
    from orchestrator.jobs.queue import JobQueue

    on_cluster = bool(args.address or os.environ.get("RAY_ADDRESS"))
    try:
        ensure_ray(args.address, connect_deadline_s=CONNECT_DEADLINE_S)
        _exit_143_on_sigterm()
        hub = hub_for_store(store_url, detached=on_cluster)
    except OrchestratorError as err:
        store.close()
        print(f"error: {err}", file=sys.stderr)
        return 2

    def record(row: dict[str, Any]) -> None:
        import ray

        ray.get(hub.record_run.remote(row))

    def record_admission(run_id: str, config_json: str) -> None:
        import ray

        ray.get(hub.admit_run.remote(run_id, config_json))

    from orchestrator.events.actor import NAMESPACE
    from orchestrator.jobs.reattach import reattach_runs

    # on a cluster each Ray run is driven by a detached coordinator there: it outlives this process
    queue = JobQueue(
        default_capacity, max_running=args.max_concurrent_runs, aging_s=args.priority_aging_s or None
    )
    manager = RunManager(
        RaySink(hub),
        pool=WorkerPool(),
        record=record,
        queue=queue,
        record_admission=record_admission,
        coordinate_in=NAMESPACE if on_cluster else None,
    )
    hpo = HpoService(
        hub, pool=manager.pool, reports_dir=settings.reports_dir, default_storage=store_url, gate=manager
    )
    watcher, book = _data_source(args, hub, settings)
    if watcher is not None:
        # runs started while the file is watched train on its validated snapshot
        base = base.model_copy(update={"data": str(watcher.feed.snapshot)})
        settings = replace(settings, base_config=base)
    app = create_app(RayHubClient(hub), manager, settings, hpo=hpo, candles=book, store=store)

    def reattach() -> None:  # runs an earlier server process started go on: follow them again
        reattach_runs(store, manager, hub, NAMESPACE)

    def requeue() -> None:  # the runs still queued in the store wait again, in their order
        restored = manager.restore_queue(store)
        if restored:
            print(f"queued again from the job store: {', '.join(restored)}", file=sys.stderr)

    def train_on_start() -> None:
        run = manager.submit(base)
        print(
            f"{run.state.value} run {run.run_id} (data={base.data}, folds={base.folds}, epochs={base.epochs})",
            file=sys.stderr,
        )

    server = Server(
        uvicorn_config(
            app,
            args.host,
            args.port,
            ws_max_size=args.ws_max_size,
            ws_ping_interval=args.ws_ping_interval,
            ws_ping_timeout=args.ws_ping_interval,
            ws_compression=args.ws_compression,
            log_level=args.log_level,
        ),
        on_started=[
            *([reattach] if on_cluster else []),
            requeue,
            *([train_on_start] if args.train_on_start else []),
        ],
    )
    data = dict.fromkeys(["sp500", base.data, *(f"names under {root}" for root in settings.data_roots)])
    print(
        f"serving http://{args.host}:{args.port} (events: ws://{args.host}:{args.port}/ws; "
        f"token {'required' if token else 'not required'}; reports from {settings.reports_dir}; "
        f"data: {', '.join(data)})",
        file=sys.stderr,
    )
    try:
        if watcher is not None:
            watcher.start()
        server.run()
    finally:
        if watcher is not None:
            watcher.stop()
        hpo.shutdown()
        manager.shutdown()
        if not on_cluster:  # the hub dies with this process: its last events first, then the lease
            import ray

            ray.get(hub.close_store.remote())
        store.close()
    return 0 if server.started else 1


def _exit_143_on_sigterm() -> None:
    """SIGTERM ends the process with 143 (128 + 15, what a shell and systemd expect of a server
    stopped by it), cleanups run. ``ray.init`` installs ``sys.exit(15)`` instead, which uvicorn
    calls again after its graceful shutdown: the server exited with status 15."""

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)


def _open_store(db: str | None, reports_dir: str) -> tuple[str, JobStore]:
    """The job store's URL (absolute) and the store, opened to check it before Ray starts."""
    from orchestrator.store import JobStore
    from orchestrator.store.engine import resolve_store_url

    url = resolve_store_url(db, reports_dir)
    return url, JobStore.open(url)
