"""The FastAPI app: REST to start, watch, cancel and fetch runs, and the ``/ws`` stream.

``create_app(hub, manager, settings)`` takes its dependencies, so a test builds it around a real
hub and run manager. The app knows the hub only through ``HubClient`` and the runs only through
``RunService`` (``orchestrator.service.RunManager`` implements it). Every 4xx answer is a JSON
object with an ``error`` string (and ``fields`` when request fields are at fault).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from api.bodies import error_response, json_object_body
from api.extras import data_router, hpo_router
from api.security import LOOPBACK_ORIGIN_REGEX, AccessMiddleware, AccessPolicy
from api.ws import ClientSlots, CloseCode, EventStreamEndpoint
from orchestrator.config import TrainConfig, config_from_mapping
from orchestrator.errors import ConfigError
from orchestrator.events.fanout import EventPump
from orchestrator.events.stream import HubClient
from orchestrator.messages import message_json_schema
from orchestrator.service import RunConflictError, UnknownRunError

__all__ = ["ApiSettings", "RunService", "create_app", "resolve_report_path", "api_version"]

log = logging.getLogger(__name__)

EVENTS_PAGE_MAX = 10_000


class RunService(Protocol):
    """What the routes need of the run registry (``orchestrator.service.RunManager``)."""

    def submit(self, config: TrainConfig) -> Any: ...

    def get(self, run_id: str) -> Any: ...

    def runs(self) -> list[Any]: ...

    def active(self) -> list[Any]: ...

    def cancel(self, run_id: str) -> Any: ...

    def observe(self, event: dict[str, Any]) -> None: ...


def api_version() -> str:
    try:
        return metadata.version("forecast-orchestrator")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class ApiSettings:
    """How the app behaves; ``serve`` builds it from its flags."""

    reports_dir: str = "reports"
    token: str | None = None
    allow_origins: tuple[str, ...] = ()
    own_origins: tuple[str, ...] = ()
    base_config: TrainConfig = field(default_factory=lambda: TrainConfig.model_validate({}))
    max_clients: int = 200
    client_queue_events: int = 1000
    client_queue_bytes: int = 16 * 2**20
    close_timeout_s: float = 5.0
    poll_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_clients", "client_queue_events", "client_queue_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
        for name in ("close_timeout_s", "poll_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {name}={getattr(self, name)!r}")
        if Path(self.base_config.reports_dir).resolve() != Path(self.reports_dir).resolve():
            # runs must write where /reports serves from
            object.__setattr__(
                self, "base_config", self.base_config.model_copy(update={"reports_dir": self.reports_dir})
            )


_error = error_response


def resolve_report_path(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names under ``root``, or None for anything that escapes it.

    Refused: absolute paths, any ``..`` or empty component, backslashes, NUL, and anything whose
    real path (symlinks followed) is not inside the real ``root``, or is not a regular file.
    """
    if not relative or "\x00" in relative or "\\" in relative or relative.startswith("/"):
        return None
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    try:
        real_root = root.resolve(strict=True)
        candidate = (real_root / Path(*parts)).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not candidate.is_relative_to(real_root) or not candidate.is_file():
        return None
    return candidate


def _fields_of(err: ValidationError) -> list[str]:
    return sorted({".".join(str(p) for p in item["loc"]) or "config" for item in err.errors()})


def create_app(
    hub: HubClient,
    manager: RunService,
    settings: ApiSettings | None = None,
    *,
    hpo: Any | None = None,
    candles: Callable[[], Any] | None = None,
) -> FastAPI:
    """The app. ``hpo`` (an ``HpoService``) adds ``/hpo``; ``candles`` returns the ``CandleBook``
    behind ``/data/candles`` (default: the base config's data, loaded on first request)."""
    settings = settings or ApiSettings()
    reports_root = Path(settings.reports_dir)
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
    app.state.settings = settings
    app.state.pump = pump
    app.state.stream = stream
    app.state.manager = manager
    app.state.hub = hub

    # CORS answers for the origins the access policy lets in (browser dashboards on localhost)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=sorted(policy.allowed_origins),
        allow_origin_regex="(?i)" + LOOPBACK_ORIGIN_REGEX,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
    )
    app.add_middleware(AccessMiddleware, policy=policy)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts, fields = [], []
        for item in exc.errors():
            loc = [str(p) for p in item.get("loc", ()) if p not in ("query", "path", "body")]
            name = ".".join(loc) or "request"
            fields.append(name)
            parts.append(f"{name}: {item.get('msg', 'invalid')} (got {item.get('input')!r})")
        return _error(422, "; ".join(parts), fields=sorted(set(fields)))

    @app.get("/", summary="Health: status, Ray connection, active run, version")
    async def health() -> dict[str, Any]:
        active = manager.active()
        return {
            "status": "ok",
            "version": api_version(),
            "ray_connected": hub.ray_connected(),
            "active_run_id": active[0].run_id if active else None,
            "hub": {"reachable": pump.healthy, "last_seq": pump.cursor, "error": pump.last_error},
            "clients": len(stream.connections),
        }

    @app.post(
        "/train",
        status_code=202,
        summary="Start a run (body: TrainConfig fields, all optional)",
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": TrainConfig.model_json_schema()}},
            }
        },
        responses={400: {"description": "malformed JSON"}, 409: {"description": "a run is active"},
                   422: {"description": "invalid field"}},
    )
    async def train(request: Request) -> JSONResponse:
        values = await json_object_body(request, "config fields")
        if isinstance(values, JSONResponse):
            return values
        refusal = _check_server_owned_fields(values, settings)
        if refusal is not None:
            return refusal
        try:
            config = config_from_mapping(values, base=settings.base_config)
        except ConfigError as err:
            cause = err.__cause__
            fields = _fields_of(cause) if isinstance(cause, ValidationError) else []
            return _error(422, str(err), fields=fields)
        missing = _missing_data_file(config.data)
        if missing is not None:
            return _error(422, missing, fields=["data"])
        try:
            run = manager.submit(config)
        except RunConflictError as err:
            active = manager.active()
            return _error(409, str(err), active_run_id=active[0].run_id if active else None)
        return JSONResponse(
            {"run_id": run.run_id, "status": run.state.value, "links": _links(run.run_id)},
            status_code=202,
            headers={"Location": f"/runs/{run.run_id}"},
        )

    @app.get("/runs", summary="Every run this server knows, oldest first")
    async def runs() -> dict[str, Any]:
        return {"runs": [run.snapshot() for run in manager.runs()]}

    @app.get("/runs/{run_id}", summary="A run: state, progress, latest metrics, report files")
    async def get_run(run_id: str) -> JSONResponse:
        try:
            run = manager.get(run_id)
        except UnknownRunError as err:
            return _error(404, str(err))
        body = run.snapshot()
        body["links"] = _links(run_id)
        body["files"] = _report_files(reports_root, Path(run.run_dir))
        return JSONResponse(body)

    @app.post("/runs/{run_id}/cancel", status_code=202, summary="Ask a run to stop")
    async def cancel(run_id: str) -> JSONResponse:
        try:
            run = manager.get(run_id)
        except UnknownRunError as err:
            return _error(404, str(err))
        if run.done:
            return _error(409, f"run {run_id} has already ended ({run.state.value})")
        manager.cancel(run_id)
        return JSONResponse(
            {"run_id": run_id, "status": run.state.value, "cancel_requested": True}, status_code=202
        )

    @app.get("/runs/{run_id}/summary", summary="The run's summary.json")
    async def summary(run_id: str) -> JSONResponse:
        try:
            run = manager.get(run_id)
        except UnknownRunError as err:
            return _error(404, str(err))
        path = Path(run.summary_path) if run.summary_path else None
        if path is None or not path.is_file():
            detail = f": {run.error}" if getattr(run, "error", None) else ""
            return _error(404, f"run {run_id} has no summary (state: {run.state.value}{detail})")
        return JSONResponse(json.loads(path.read_text()))

    @app.get("/runs/{run_id}/events", summary="The run's events after seq `since`, as sent on /ws")
    async def run_events(
        run_id: str,
        since: int = Query(0, ge=0, description="return events with seq > since"),
        limit: int = Query(1000, ge=1, le=EVENTS_PAGE_MAX),
    ) -> JSONResponse:
        try:
            manager.get(run_id)
        except UnknownRunError as err:
            return _error(404, str(err))
        events, gap = await hub.events_since(since, run_id, None, limit)
        next_since = events[-1]["seq"] if events else since
        return JSONResponse({"run_id": run_id, "events": events, "next_since": next_since, "gap": gap})

    @app.get(
        "/reports/{path:path}", summary="A file under the reports root (CSV, JSON)", response_model=None
    )
    async def report_file(path: str) -> Response:
        resolved = resolve_report_path(reports_root, path)
        if resolved is None:
            return _error(404, f"no report file {path!r}")
        return FileResponse(resolved)

    if hpo is not None:
        app.include_router(
            hpo_router(hpo, lambda values: _check_server_owned_fields(values, settings), settings.base_config)
        )
    app.include_router(data_router(candles or _lazy_candles(settings.base_config.data)))

    @app.get("/ws/schema", summary="JSON Schema of every message sent on /ws")
    async def ws_schema() -> dict[str, Any]:
        return message_json_schema()

    app.add_api_websocket_route("/ws", stream)
    return app


def _lazy_candles(source: str) -> Callable[[], Any]:
    from orchestrator.datawatch import CandleBook

    cache: list[CandleBook] = []

    def book() -> CandleBook:
        if not cache:
            cache.append(CandleBook.load(source))
        return cache[0]

    return book


def _links(run_id: str) -> dict[str, str]:
    return {
        "run": f"/runs/{run_id}",
        "events": f"/runs/{run_id}/events",
        "summary": f"/runs/{run_id}/summary",
        "cancel": f"/runs/{run_id}/cancel",
        "ws": f"/ws?run_id={run_id}",
    }


def _report_files(root: Path, run_dir: Path) -> dict[str, Any]:
    """URLs under ``/reports`` of the run's summary and prediction CSVs that exist now."""
    try:
        base = run_dir.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return {}
    prefix = "/reports/" + "/".join(base.parts)
    predictions = sorted(p.name for p in (run_dir / "predictions").glob("*.csv"))
    return {
        "summary": f"{prefix}/summary.json" if (run_dir / "summary.json").is_file() else None,
        "events": f"{prefix}/events.jsonl" if (run_dir / "events.jsonl").is_file() else None,
        "predictions": [f"{prefix}/predictions/{name}" for name in predictions],
    }


def _check_server_owned_fields(values: dict[str, Any], settings: ApiSettings) -> JSONResponse | None:
    """Fields a client cannot set: the reports root is the server's (``--reports-dir``), and runs
    train on Ray (the ``local`` executor would import torch into the API process)."""
    if values.get("executor", "ray") != "ray":
        return _error(
            422,
            f"executor: the server trains on Ray only, got {values['executor']!r} "
            "(use `orchestrator train --executor local` for an in-process run)",
            fields=["executor"],
        )
    if "reports_dir" in values:
        given = values["reports_dir"]
        if not isinstance(given, str) or Path(given).resolve() != Path(settings.reports_dir).resolve():
            return _error(
                422,
                f"reports_dir: set by the server (--reports-dir {settings.reports_dir}), got {given!r}",
                fields=["reports_dir"],
            )
    return None


def _missing_data_file(data: str) -> str | None:
    if data.strip().lower() == "sp500" or Path(data).is_file():
        return None
    return (
        f"data: no such file {data!r} (paths are read by the server, relative to its working "
        f"directory {os.getcwd()}; or use 'sp500')"
    )
