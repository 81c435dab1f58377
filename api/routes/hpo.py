"""The study routes: ``/hpo`` starts, lists, reports on and cancels Optuna studies over whole CV runs.

Thin: each route calls an ``orchestrator.hpo.HpoService`` and maps its errors to 4xx JSON bodies.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.bodies import error_response, json_object_body, owned_field_response
from orchestrator.config import TrainConfig
from orchestrator.errors import ConfigError

__all__ = ["StudyService", "hpo_router"]


class _Spec(Protocol):
    @property
    def study(self) -> str: ...


class _State(Protocol):
    @property
    def value(self) -> str: ...


class _Study(Protocol):
    @property
    def spec(self) -> _Spec: ...

    @property
    def state(self) -> _State: ...


class StudyService(Protocol):
    """What the routes need of ``orchestrator.hpo.HpoService`` (Optuna is imported only when used)."""

    def start(self, spec: Any) -> _Study: ...

    def studies(self) -> list[dict[str, Any]]: ...

    def status(self, study: str) -> dict[str, Any]: ...

    def cancel(self, study: str) -> _Study: ...


def hpo_router(service: StudyService, base_config: TrainConfig, reports_dir: str) -> APIRouter:
    """Trials start from ``base_config`` (the server's flags), overridden by the body's fields."""
    from orchestrator.hpo import StudyConflictError, UnknownStudyError, spec_from_mapping

    router = APIRouter(prefix="/hpo", tags=["hpo"])

    @router.post("", status_code=202, summary="Start (or resume) an Optuna study over whole CV runs")
    async def start(request: Request) -> JSONResponse:
        values = await json_object_body(request, "HPO and config fields")
        if isinstance(values, JSONResponse):
            return values
        nested = values.get("config") or {}
        if not isinstance(nested, dict):
            return error_response(
                422,
                f"config must be a JSON object of run fields, got {type(nested).__name__}",
                fields=["config"],
            )
        # train fields may come at the top level or nested under "config": the policy holds for both
        refusal = owned_field_response(values, reports_dir) or owned_field_response(nested, reports_dir)
        if refusal is not None:
            return refusal
        values = {**values, "config": {**base_config.model_dump(), **nested}}
        try:
            spec = spec_from_mapping(values)
            handle = service.start(spec)
        except ConfigError as err:
            return error_response(422, str(err))
        except StudyConflictError as err:
            return error_response(409, str(err))
        study = handle.spec.study
        return JSONResponse(
            {"study": study, "status": handle.state.value, "links": {"self": f"/hpo/{study}"}},
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
            return error_response(404, str(err))

    @router.post("/{study}/cancel", status_code=202, summary="Stop a running study")
    async def cancel(study: str) -> JSONResponse:
        try:
            handle = service.cancel(study)
        except UnknownStudyError as err:
            return error_response(404, str(err))
        return JSONResponse({"study": study, "status": handle.state.value}, status_code=202)

    return router
