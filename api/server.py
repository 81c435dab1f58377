"""``python -m orchestrator serve``: the API process, which is also the Ray driver.

``main`` joins (or starts) Ray, gets the EventHub actor, builds a ``RunManager`` whose runs train
on Ray with a shared pool of warm fold actors, and serves the app on uvicorn. ``Server`` is
uvicorn's server with two additions: ``/ws`` clients are closed with 4001 before uvicorn's own
shutdown would send them 1012 (a code Qt reports as a protocol error), and callbacks can run once
the socket is listening (``--train-on-start``). ``BackgroundServer`` runs the same server in a
thread on a free loopback port (tests, benchmarks, notebooks).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from api.app import ApiSettings, create_app
from api.refusals import DeliberateRefusalFilter
from api.security import InsecureBindError, check_bind, own_origins
from api.server_owned import owned_field_refusal
from api.ws.connection import CloseCode
from orchestrator.flags import TOKEN_ENV, token_or_env
from orchestrator.queue import DEFAULT_AGING_S

if TYPE_CHECKING:
    from orchestrator.datawatch import CandleBook, DataWatcher
    from orchestrator.store import JobStore

__all__ = ["main", "build_parser", "Server", "BackgroundServer", "RedactTokens", "uvicorn_config"]

log = logging.getLogger(__name__)

DEFAULT_WS_MAX_SIZE = 4096
# chart_update and data warnings go through the hub under this run id (never registered, so it
# is never "the active run"; clients that subscribe to chart_update get them live).
DATA_FEED_RUN_ID = "data_feed"
CANDLES_PER_MESSAGE = 1000


class Server(uvicorn.Server):
    """uvicorn's server; closes ``/ws`` clients with 4001 first and runs ``on_started`` callbacks."""

    def __init__(self, config: uvicorn.Config, on_started: Sequence[Callable[[], None]] = ()) -> None:
        super().__init__(config)
        self._on_started = list(on_started)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        for callback in self._on_started:
            try:
                callback()
            except Exception:
                log.exception("a start-up callback failed")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        stream = getattr(getattr(app, "state", None), "stream", None)
        if stream is not None:
            await stream.close_all(CloseCode.SERVER_SHUTDOWN, "server shutting down")
        await super().shutdown(sockets)


class RedactTokens(logging.Filter):
    """Mask ``token=...`` in log lines: uvicorn logs each WebSocket path with its query."""

    _PATTERN = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        if "token=" in text.lower():
            record.msg = self._PATTERN.sub(r"\1***", text)
            record.args = ()
        return True


def _redact_uvicorn_logs() -> None:
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    refusals = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DeliberateRefusalFilter) for f in refusals.filters):
        refusals.addFilter(DeliberateRefusalFilter())


def uvicorn_config(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ws_max_size: int = DEFAULT_WS_MAX_SIZE,
    ws_ping_interval: float | None = 20.0,
    ws_ping_timeout: float | None = 20.0,
    ws_compression: bool = False,
    log_level: str = "info",
    access_log: bool = True,
) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",  # its send waits while the socket's buffer is full: backpressure
        ws_max_size=ws_max_size,
        ws_ping_interval=ws_ping_interval,
        ws_ping_timeout=ws_ping_timeout,
        # permessage-deflate costs CPU per client per message (fan-out multiplies it) and the
        # messages are small; on by flag for slow links
        ws_per_message_deflate=ws_compression,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    _redact_uvicorn_logs()  # after Config: it (re)configures uvicorn's loggers
    return config


class BackgroundServer:
    """The app on a free loopback port, served by a thread with its own event loop."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", **config_kwargs: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.app = app
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        config_kwargs.setdefault("log_level", "warning")
        config_kwargs.setdefault("access_log", False)
        self.server = Server(uvicorn_config(app, host, self.port, **config_kwargs))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name="uvicorn", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.cli import add_train_flags

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
    from orchestrator.datawatch import DataFeed, DataWatcher, FeedUpdate
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
    from orchestrator.cli import config_from_args
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
    from orchestrator.execution.pool import WorkerPool
    from orchestrator.hpo import HpoService
    from orchestrator.queue import JobQueue, default_capacity
    from orchestrator.service import RunManager

    on_cluster = bool(args.address or os.environ.get("RAY_ADDRESS"))
    ensure_ray(args.address)
    try:
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

    from orchestrator.coordinator import reattach_runs
    from orchestrator.events.actor import NAMESPACE

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
    print(
        f"serving http://{args.host}:{args.port} (events: ws://{args.host}:{args.port}/ws; "
        f"token {'required' if token else 'not required'}; reports from {settings.reports_dir})",
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


def _open_store(db: str | None, reports_dir: str) -> tuple[str, JobStore]:
    """The job store's URL (absolute) and the store, opened to check it before Ray starts."""
    from orchestrator.store import JobStore
    from orchestrator.store.engine import resolve_store_url

    url = resolve_store_url(db, reports_dir)
    return url, JobStore.open(url)
