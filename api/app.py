"""The FastAPI app factory: ``create_app`` wires the hub, the runs, the routes, ``/ws`` and access checks.

``create_app(hub, manager, settings)`` takes its dependencies, so a test builds it around a real
hub and run manager. The routes are in ``api.routes``, the WebSocket endpoint in ``api.ws``,
the token and Origin checks in ``api.security``, what a body may name on the server in
``api.trust``, the body limits in ``api.limits``. Every 4xx/5xx answer is a JSON object with an
``error`` string (and ``fields`` when request fields are at fault): ``api.errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from api.errors import JsonErrorMiddleware, http_error, validation_error
from api.files import ReportFiles
from api.limits import MAX_BODY_BYTES, BodyLimitMiddleware
from api.routes.dashboard import dashboard_router
from api.routes.data import CandleSource, data_router, lazy_candles
from api.routes.hpo import StudyService, hpo_router
from api.routes.meta import api_version, meta_router
from api.routes.runs import RunService, runs_router
from api.security import LOOPBACK_ORIGIN_REGEX, AccessMiddleware, AccessPolicy
from api.trust import BodyTrust
from api.ws.connection import CloseCode
from api.ws.endpoint import ClientSlots, EventStreamEndpoint
from api.ws.fanout import EventPump
from orchestrator.config import TrainConfig
from orchestrator.events.stream import HubClient

if TYPE_CHECKING:
    from orchestrator.store import JobStore

__all__ = ["ApiSettings", "create_app"]


@dataclass(frozen=True)
class ApiSettings:
    """How the app behaves; ``serve`` builds it from its flags."""

    reports_dir: str = "reports"
    token: str | None = None
    allow_origins: tuple[str, ...] = ()
    own_origins: tuple[str, ...] = ()
    base_config: TrainConfig = field(default_factory=lambda: TrainConfig.model_validate({}))
    # folders whose files a body may name as its data, relative to one of them (serve --data-root)
    data_roots: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    max_clients: int = 200
    client_queue_events: int = 1000
    client_queue_bytes: int = 16 * 2**20
    close_timeout_s: float = 5.0
    poll_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_clients", "client_queue_events", "client_queue_bytes", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
        for name in ("close_timeout_s", "poll_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {name}={getattr(self, name)!r}")
        for root in self.data_roots:
            if not Path(root).is_dir():
                raise ValueError(f"data root {root!r} is not a folder (serve --data-root DIR)")
        if Path(self.base_config.reports_dir).resolve() != Path(self.reports_dir).resolve():
            # runs must write where /reports serves from
            object.__setattr__(
                self, "base_config", self.base_config.model_copy(update={"reports_dir": self.reports_dir})
            )


def create_app(
    hub: HubClient,
    manager: RunService,
    settings: ApiSettings | None = None,
    *,
    hpo: StudyService | None = None,
    candles: Callable[[], CandleSource] | None = None,
    store: JobStore | None = None,
) -> FastAPI:
    """The app. ``hpo`` (an ``HpoService``) adds ``/hpo``; ``candles`` returns the ``CandleBook`` behind
    ``/data/candles`` (default: the base config's data, loaded on first request); ``store``, the
    job store, makes ``GET /runs...`` answer for every run it holds, not only this process's."""
    settings = settings or ApiSettings()
    policy = AccessPolicy.build(settings.token, settings.allow_origins, settings.own_origins)
    pump = EventPump(hub, observe=manager.observe, poll_timeout_s=settings.poll_timeout_s)
    stream = EventStreamEndpoint(
        hub,
        pump,
        ClientSlots(settings.max_clients),
        max_queue=settings.client_queue_events,
        max_queue_bytes=settings.client_queue_bytes,
        close_timeout_s=settings.close_timeout_s,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pump.start()
        try:
            yield
        finally:
            await stream.close_all(CloseCode.SERVER_SHUTDOWN, "server shutting down")
            await pump.stop()

    app = FastAPI(
        title="forecast-orchestrator",
        version=api_version(),
        description="Walk-forward CV training on Ray: start, watch, cancel and fetch runs. "
        "Live events on the WebSocket /ws (schema: GET /ws/schema).",
        lifespan=lifespan,
    )
    app.state.stream = stream  # the server closes its clients with 4001 before uvicorn's 1012

    # outermost last: JSON 500 catch-all -> access -> CORS -> body limit -> routes, so a request
    # without the token is refused before its body is read, and a 413 still carries CORS headers
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # CORS answers for the origins the access policy lets in (browser dashboards on localhost)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=sorted(policy.allowed_origins),
        allow_origin_regex="(?i)" + LOOPBACK_ORIGIN_REGEX,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
    )
    app.add_middleware(AccessMiddleware, policy=policy)
    app.add_middleware(JsonErrorMiddleware)
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]

    trust = BodyTrust.of(settings.base_config.data, settings.data_roots)
    reports = ReportFiles.of(settings.reports_dir, [store.url if store is not None else None])
    app.include_router(meta_router(hub, manager, pump, stream))
    app.include_router(runs_router(manager, hub, settings.base_config, reports, trust, store))
    if hpo is not None:
        app.include_router(hpo_router(hpo, settings.base_config, settings.reports_dir, trust))
    app.include_router(
        data_router(candles or lazy_candles(settings.base_config.data, settings.base_config.date_format))
    )
    app.include_router(dashboard_router(manager, studies=hpo is not None))
    app.add_api_websocket_route("/ws", stream)
    return app
