"""The run routes: ``POST /train``, ``GET /runs...`` (state, summary, events), cancel, and report files.

The routes know the runs only through ``RunService`` (``orchestrator.jobs.manager.RunManager``
implements it), the hub only through ``HubClient``, and the job store (``JobStore``), when the
server has one, as the source of every run it ever recorded: runs this process started are
answered from their live state, the others (earlier processes, reattached runs) from the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError

from api.bodies import error_response, json_object_body, owned_field_response, refusal_response
from api.files import ReportFiles
from api.trust import BodyTrust, Refusal
from orchestrator.config import TrainConfig, config_from_mapping
from orchestrator.data.names import is_bundled
from orchestrator.errors import ConfigError, brief
from orchestrator.events.hub import Event
from orchestrator.events.stream import HubClient
from orchestrator.jobs.admission import check_priority
from orchestrator.jobs.manager import UnknownRunError
from orchestrator.jobs.queue import ResourceError
from orchestrator.lifecycle import TERMINAL_STATES
from orchestrator.store.jobstore import RUNS_PAGE_DEFAULT, RUNS_PAGE_MAX

if TYPE_CHECKING:
    from orchestrator.lifecycle import Run
    from orchestrator.store import JobStore

__all__ = ["EVENTS_PAGE_MAX", "RUN_ID_MAX", "RunId", "RunService", "runs_router"]

EVENTS_PAGE_MAX = 10_000
# run ids are run_<date>_<time>_<hex> or hpo_<study>_t<n>_<hex> (a study name has <= 64 characters)
RUN_ID_MAX = 128
RUN_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{RUN_ID_MAX - 1}}}$"
RunId = Annotated[
    str,
    PathParam(
        max_length=RUN_ID_MAX,
        pattern=RUN_ID_PATTERN,
        description=f"a run id: letters, digits, '_', '.', '-', at most {RUN_ID_MAX} characters",
    ),
]


class RunService(Protocol):
    """What the routes (and the pump's ``observe``) need of the run registry."""

    def submit(self, config: TrainConfig, *, priority: int = 0) -> Run: ...

    def queued(self) -> list[Run]: ...

    def queue_position(self, run_id: str) -> int | None: ...

    def describe_queue(self) -> dict[str, Any]: ...

    def get(self, run_id: str) -> Run: ...

    def runs(self) -> list[Run]: ...

    def active(self) -> list[Run]: ...

    def cancel(self, run_id: str) -> Run: ...

    def observe(self, event: Event) -> None: ...


def runs_router(
    manager: RunService,
    hub: HubClient,
    base_config: TrainConfig,
    reports: ReportFiles,
    trust: BodyTrust,
    store: JobStore | None = None,
) -> APIRouter:
    """Runs start from ``base_config`` (the server's flags), overridden field by field by the body
    (its ``data`` resolved by ``trust``); ``reports`` is what ``/reports/...`` serves."""
    reports_root = reports.root
    reports_dir = str(reports.root)
    router = APIRouter()

    def live_snapshot(run: Run) -> dict[str, Any]:
        body = run.snapshot()
        body["queue_position"] = manager.queue_position(run.run_id)
        return body

    async def snapshot(run_id: str) -> dict[str, Any] | None:
        """The run's snapshot: live if this process runs it, else the store's, else None."""
        try:
            return live_snapshot(manager.get(run_id))
        except UnknownRunError:
            if store is None:
                return None
            return await run_in_threadpool(store.get_run, run_id)

    @router.post(
        "/train",
        status_code=202,
        summary="Queue a run (body: TrainConfig fields, all optional, and its priority)",
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": TrainConfig.model_json_schema()}},
            }
        },
        responses={
            400: {"description": "malformed JSON"},
            422: {"description": "invalid field, or resources no node can ever hold"},
        },
    )
    async def train(request: Request) -> JSONResponse:
        values = await json_object_body(request, "config fields")
        if isinstance(values, JSONResponse):
            return values
        refusal = owned_field_response(values, reports_dir)
        if refusal is not None:
            return refusal
        try:
            priority = check_priority(values.pop("priority", 0))
        except ConfigError as err:
            return error_response(422, str(err), fields=["priority"])
        trusted = trust.run_values(values)
        if isinstance(trusted, Refusal):
            return refusal_response(trusted)
        try:
            config = config_from_mapping(trusted, base=base_config)
        except ConfigError as err:
            cause = err.__cause__
            fields = _fields_of(cause) if isinstance(cause, ValidationError) else []
            return error_response(422, str(err), fields=fields)
        if not is_bundled(config.data) and not Path(config.data).is_file():  # the server's own --data
            return error_response(
                422, f"data: the server's own data file {brief(config.data)} is missing", fields=["data"]
            )
        try:
            run = await run_in_threadpool(manager.submit, config, priority=priority)
        except ResourceError as err:  # its folds' resources fit no node, live or to come
            return error_response(422, str(err), fields=[err.field])
        return JSONResponse(
            {
                "run_id": run.run_id,
                "status": run.state.value,
                "priority": run.priority,
                "queue_position": manager.queue_position(run.run_id),
                "links": _links(run.run_id),
            },
            status_code=202,
            headers={"Location": f"/runs/{run.run_id}"},
        )

    @router.get("/queue", summary="The queued runs in order: position, priority, resources, why each waits")
    async def queue() -> JSONResponse:
        return JSONResponse(manager.describe_queue())

    @router.get("/runs", summary="Runs, newest first, a page at a time (every run of the job store)")
    async def runs(
        limit: int = Query(RUNS_PAGE_DEFAULT, ge=1, le=RUNS_PAGE_MAX),
        before: str | None = Query(
            None,
            max_length=RUN_ID_MAX,
            pattern=RUN_ID_PATTERN,
            description="the next page: runs created before this run",
        ),
    ) -> JSONResponse:
        live = {run.run_id: live_snapshot(run) for run in manager.runs()}
        if store is None:
            page = sorted(live.values(), key=_created, reverse=True)
            if before is not None:
                if before not in live:
                    return error_response(404, f"no run with run_id={before!r} (before)")
                page = page[[r["run_id"] for r in page].index(before) + 1 :]
        else:
            try:
                page = await run_in_threadpool(store.list_runs, limit, before)
            except KeyError:
                return error_response(404, f"no run with run_id={before!r} (before)")
            page = [live.pop(r["run_id"], r) for r in page]
            if before is None:  # runs started here that the store has not written yet
                page = sorted(
                    page + [r for r in live.values() if r["state"] not in _ENDED], key=_created, reverse=True
                )
        page = page[:limit]
        return JSONResponse(
            {
                "runs": page,
                "next_before": page[-1]["run_id"] if len(page) == limit else None,
            }
        )

    @router.get("/runs/{run_id}", summary="A run: state, progress, latest metrics, report files")
    async def get_run(run_id: RunId) -> JSONResponse:
        body = await snapshot(run_id)
        if body is None:
            return error_response(404, f"no run with run_id={run_id!r}")
        body["links"] = _links(run_id)
        body["files"] = _report_files(reports_root, Path(body["run_dir"] or ""))
        return JSONResponse(body)

    @router.post("/runs/{run_id}/cancel", status_code=202, summary="Ask a run to stop")
    async def cancel(run_id: RunId) -> JSONResponse:
        try:
            run = manager.get(run_id)
        except UnknownRunError as err:
            stored = await snapshot(run_id)
            if stored is None:
                return error_response(404, str(err))
            if stored["state"] in _ENDED:
                return error_response(409, f"run {run_id} has already ended ({stored['state']})")
            return error_response(409, f"run {run_id} is not run by this server process")
        if run.done:
            return error_response(409, f"run {run_id} has already ended ({run.state.value})")
        await run_in_threadpool(manager.cancel, run_id)
        return JSONResponse(
            {"run_id": run_id, "status": run.state.value, "cancel_requested": True}, status_code=202
        )

    @router.get("/runs/{run_id}/summary", summary="The run's summary.json")
    async def summary(run_id: RunId) -> JSONResponse:
        body = await snapshot(run_id)
        if body is None:
            return error_response(404, f"no run with run_id={run_id!r}")
        path = Path(body["summary_path"]) if body["summary_path"] else None
        if path is None or not path.is_file():
            detail = f": {body['error']}" if body["error"] else ""
            return error_response(404, f"run {run_id} has no summary (state: {body['state']}{detail})")
        return JSONResponse(json.loads(path.read_text()))

    @router.get("/runs/{run_id}/events", summary="The run's events after seq `since`, as sent on /ws")
    async def run_events(
        run_id: RunId,
        since: int = Query(0, ge=0, description="return events with seq > since"),
        limit: int = Query(1000, ge=1, le=EVENTS_PAGE_MAX),
    ) -> JSONResponse:
        if await snapshot(run_id) is None:
            return error_response(404, f"no run with run_id={run_id!r}")
        events, gap = await hub.events_since(since, run_id, None, limit)
        next_since = events[-1]["seq"] if events else since
        return JSONResponse({"run_id": run_id, "events": events, "next_since": next_since, "gap": gap})

    @router.get(
        "/reports/{path:path}", summary="A file under the reports root (CSV, JSON)", response_model=None
    )
    async def report_file(path: str) -> Response:
        resolved = reports.resolve(path)
        if resolved is None:
            return error_response(404, f"no report file {brief(path)}")
        return FileResponse(resolved)

    return router


_ENDED = frozenset(state.value for state in TERMINAL_STATES)


def _created(snapshot: dict[str, Any]) -> tuple[float, str]:
    return (float(snapshot["created_at"]), str(snapshot["run_id"]))


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
