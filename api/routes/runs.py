"""The run routes: ``POST /train``, ``GET /runs...`` (state, summary, events), cancel, and report files.

The routes know the runs only through ``RunService`` (``orchestrator.service.RunManager``
implements it) and the hub only through ``HubClient``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError

from api.bodies import error_response, json_object_body, owned_field_response
from orchestrator.events.hub import Event
from orchestrator.events.stream import HubClient
from orchestrator.config import TrainConfig, config_from_mapping
from orchestrator.errors import ConfigError
from orchestrator.service import RunConflictError, UnknownRunError

if TYPE_CHECKING:
    from orchestrator.lifecycle import Run

__all__ = ["EVENTS_PAGE_MAX", "RunService", "resolve_report_path", "runs_router"]

EVENTS_PAGE_MAX = 10_000


class RunService(Protocol):
    """What the routes (and the pump's ``observe``) need of the run registry."""

    def submit(self, config: TrainConfig) -> Run: ...

    def get(self, run_id: str) -> Run: ...

    def runs(self) -> list[Run]: ...

    def active(self) -> list[Run]: ...

    def cancel(self, run_id: str) -> Run: ...

    def observe(self, event: Event) -> None: ...


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


def runs_router(
    manager: RunService, hub: HubClient, base_config: TrainConfig, reports_dir: str
) -> APIRouter:
    """Runs start from ``base_config`` (the server's flags), overridden field by field by the body."""
    reports_root = Path(reports_dir)
    router = APIRouter()

    @router.post(
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
        refusal = owned_field_response(values, reports_dir)
        if refusal is not None:
            return refusal
        try:
            config = config_from_mapping(values, base=base_config)
        except ConfigError as err:
            cause = err.__cause__
            fields = _fields_of(cause) if isinstance(cause, ValidationError) else []
            return error_response(422, str(err), fields=fields)
        missing = _missing_data_file(config.data)
        if missing is not None:
            return error_response(422, missing, fields=["data"])
        try:
            run = manager.submit(config)
        except RunConflictError as err:
            active = manager.active()
            return error_response(409, str(err), active_run_id=active[0].run_id if active else None)
        return JSONResponse(
            {"run_id": run.run_id, "status": run.state.value, "links": _links(run.run_id)},
            status_code=202,
            headers={"Location": f"/runs/{run.run_id}"},
        )

    @router.get("/runs", summary="Every run this server knows, oldest first")
    async def runs() -> dict[str, Any]:
        return {"runs": [run.snapshot() for run in manager.runs()]}

    @router.get("/runs/{run_id}", summary="A run: state, progress, latest metrics, report files")
    async def get_run(run_id: str) -> JSONResponse:
        try:
            run = manager.get(run_id)
        except UnknownRunError as err:
            return error_response(404, str(err))
        body = run.snapshot()
        body["links"] = _links(run_id)
        body["files"] = _report_files(reports_root, Path(run.run_dir))
        return JSONResponse(body)

    @router.post("/runs/{run_id}/cancel", status_code=202, summary="Ask a run to stop")
    async def cancel(run_id: str) -> JSONResponse:
        try:
            run = manager.get(run_id)
        except UnknownRunError as err:
            return error_response(404, str(err))
        if run.done:
            return error_response(409, f"run {run_id} has already ended ({run.state.value})")
        manager.cancel(run_id)
        return JSONResponse(
            {"run_id": run_id, "status": run.state.value, "cancel_requested": True}, status_code=202
        )

    @router.get("/runs/{run_id}/summary", summary="The run's summary.json")
    async def summary(run_id: str) -> JSONResponse:
        try:
            run = manager.get(run_id)
        except UnknownRunError as err:
            return error_response(404, str(err))
        path = Path(run.summary_path) if run.summary_path else None
        if path is None or not path.is_file():
            detail = f": {run.error}" if run.error else ""
            return error_response(404, f"run {run_id} has no summary (state: {run.state.value}{detail})")
        return JSONResponse(json.loads(path.read_text()))

    @router.get("/runs/{run_id}/events", summary="The run's events after seq `since`, as sent on /ws")
    async def run_events(
        run_id: str,
        since: int = Query(0, ge=0, description="return events with seq > since"),
        limit: int = Query(1000, ge=1, le=EVENTS_PAGE_MAX),
    ) -> JSONResponse:
        try:
            manager.get(run_id)
        except UnknownRunError as err:
            return error_response(404, str(err))
        events, gap = await hub.events_since(since, run_id, None, limit)
        next_since = events[-1]["seq"] if events else since
        return JSONResponse({"run_id": run_id, "events": events, "next_since": next_since, "gap": gap})

    @router.get(
        "/reports/{path:path}", summary="A file under the reports root (CSV, JSON)", response_model=None
    )
    async def report_file(path: str) -> Response:
        resolved = resolve_report_path(reports_root, path)
        if resolved is None:
            return error_response(404, f"no report file {path!r}")
        return FileResponse(resolved)

    return router


def _fields_of(err: ValidationError) -> list[str]:
    return sorted({".".join(str(p) for p in item["loc"]) or "config" for item in err.errors()})


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


def _missing_data_file(data: str) -> str | None:
    if data.strip().lower() == "sp500" or Path(data).is_file():
        return None
    return (
        f"data: no such file {data!r} (paths are read by the server, relative to its working "
        f"directory {os.getcwd()}; or use 'sp500')"
    )
