"""Routes beyond runs: Optuna studies (``/hpo``) and the dataset's candles (``/data/candles``).

Thin: each route calls ``orchestrator.hpo.HpoService`` or a ``CandleBook`` and maps the
orchestrator's errors to 4xx JSON bodies.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.bodies import error_response, json_object_body
from orchestrator.errors import ConfigError, DataValidationError

__all__ = ["hpo_router", "data_router"]


_error = error_response


def hpo_router(
    service: Any,
    check_body: Callable[[dict[str, Any]], JSONResponse | None],
    base_config: Any,
) -> APIRouter:
    from orchestrator.hpo import StudyConflictError, UnknownStudyError, spec_from_mapping

    router = APIRouter(prefix="/hpo", tags=["hpo"])

    @router.post("", status_code=202, summary="Start (or resume) an Optuna study over whole CV runs")
    async def start(request: Request) -> JSONResponse:
        values = await json_object_body(request, "HPO and config fields")
        if isinstance(values, JSONResponse):
            return values
        refusal = check_body(values)
        if refusal is not None:
            return refusal
        # Trials start from the server's base config (its --data, --reports-dir, flags).
        values = {**values, "config": {**base_config.model_dump(), **(values.get("config") or {})}}
        try:
            spec = spec_from_mapping(values)
            handle = service.start(spec)
        except ConfigError as err:
            return _error(422, str(err))
        except StudyConflictError as err:
            return _error(409, str(err))
        return JSONResponse(
            {"study": handle.spec.study, "status": handle.state.value, "links": {"self": f"/hpo/{handle.spec.study}"}},
            status_code=202,
        )

    @router.get("", summary="Every study this server has started")
    async def studies() -> dict[str, Any]:
        return {"studies": service.studies()}

    @router.get("/{study}", summary="A study: state, trials table, best trial")
    async def status(study: str) -> JSONResponse:
        try:
            # reads the study's storage: off the event loop
            return JSONResponse(await asyncio.to_thread(service.status, study))
        except UnknownStudyError as err:
            return _error(404, str(err))

    @router.post("/{study}/cancel", status_code=202, summary="Stop a running study")
    async def cancel(study: str) -> JSONResponse:
        try:
            handle = service.cancel(study)
        except UnknownStudyError as err:
            return _error(404, str(err))
        return JSONResponse({"study": study, "status": handle.state.value}, status_code=202)

    return router


def data_router(book: Callable[[], Any]) -> APIRouter:
    """``book()`` returns the ``CandleBook`` of the server's dataset (loaded on first use)."""
    router = APIRouter(prefix="/data", tags=["data"])

    @router.get("/candles", summary="Page the dataset's OHLCV candles")
    async def candles(
        since: str | None = Query(None, description="exclusive ISO timestamp cursor"),
        limit: int = Query(500, ge=1, le=5000),
    ) -> JSONResponse:
        try:
            source = await asyncio.to_thread(book)
            page, cursor = source.page(since, limit)
        except DataValidationError as err:
            return _error(422, str(err))
        return JSONResponse({"candles": [c.model_dump() for c in page], "next_since": cursor})

    return router
