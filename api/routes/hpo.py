"""The study routes: ``/hpo`` starts, lists, reports on and cancels Optuna studies over whole CV runs.

Thin: each route calls an ``orchestrator.hpo.HpoService`` and maps its errors to 4xx JSON bodies.
A body names no storage and no file (``api.trust``); a study name in a path is checked before
anything looks for the study.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from api.bodies import error_response, json_object_body, owned_field_response, refusal_response
from api.trust import BodyTrust, Refusal
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


def hpo_router(
    service: StudyService, base_config: TrainConfig, reports_dir: str, trust: BodyTrust | None = None
) -> APIRouter:
    """Trials start from ``base_config`` (the server's flags), overridden by the body's fields
    (``data`` resolved by ``trust``; default: only ``sp500`` and the server's own data)."""
    from orchestrator.hpo import STUDY_NAME_PATTERN, StudyConflictError, UnknownStudyError, spec_from_mapping

    trust = trust or BodyTrust(base_config.data)
    router = APIRouter(prefix="/hpo", tags=["hpo"])

    def study_name() -> Any:
        return PathParam(
            max_length=64,
            pattern=STUDY_NAME_PATTERN,
            description="a study name: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit",
        )

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
        trusted = trust.study_values(values)
        if isinstance(trusted, Refusal):
            return refusal_response(trusted)
        values = {**trusted, "config": {**base_config.model_dump(), **(trusted.get("config") or {})}}
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
    async def status(study: str = study_name()) -> JSONResponse:
        try:
            # reads the study's storage: off the event loop
            return JSONResponse(await asyncio.to_thread(service.status, study))
        except UnknownStudyError:  # its message may name the storage: not for a client
            return error_response(404, f"no study named {study!r}")

    @router.post("/{study}/cancel", status_code=202, summary="Stop a running study")
    async def cancel(study: str = study_name()) -> JSONResponse:
        try:
            handle = service.cancel(study)
        except UnknownStudyError as err:
            return error_response(404, str(err))
        return JSONResponse({"study": study, "status": handle.state.value}, status_code=202)

    return router
