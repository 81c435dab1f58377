"""The dashboard routes: ``GET /ui`` (the page), ``/ui/static/...`` (its scripts), and a fold's diagnostics.

The page and its files are package files under ``orchestrator/web``, served from the package: the
dashboard needs no network beyond this server. They hold no data, so they are public like
``/docs`` (the page asks for the token when the API answers 401). ``GET
/runs/{run_id}/folds/{fold_id}/diagnostics`` computes a finished fold's reliability bins, PIT
histogram and conformal coverage from its predictions CSV (``orchestrator.run.files``).
"""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from api.bodies import error_response
from api.files import file_under
from api.routes.runs import RunId, RunService
from orchestrator.errors import brief
from orchestrator.jobs.manager import UnknownRunError
from orchestrator.run.files import diagnostics_of_fold
from orchestrator.run.report_html import web_asset

__all__ = ["dashboard_router", "WEB_ROOT"]

WEB_ROOT = Path(str(resources.files("orchestrator") / "web"))
_NO_CACHE = {"Cache-Control": "no-cache"}  # a new version of the package shows at the next load


def dashboard_router(manager: RunService, *, studies: bool = False) -> APIRouter:
    """``studies``: the app serves ``/hpo``, so the page lists studies too."""
    router = APIRouter()
    html = web_asset("dashboard.html").replace("{{FEATURES}}", "hpo" if studies else "")

    @router.get(
        "/ui", summary="The dashboard (HTML): runs, live run pages, studies", response_class=HTMLResponse
    )
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=_NO_CACHE)

    @router.get("/ui/static/{path:path}", summary="A script or style of the dashboard", response_model=None)
    async def static_file(path: str) -> Response:
        resolved = file_under(WEB_ROOT, path)
        if resolved is None or resolved.suffix not in (".js", ".css"):
            return error_response(404, f"no dashboard file {brief(path)}")
        return FileResponse(resolved, headers=_NO_CACHE)

    @router.get(
        "/runs/{run_id}/folds/{fold_id}/diagnostics",
        summary="A finished fold's reliability bins (raw and calibrated p_up), PIT histogram and coverage",
        responses={404: {"description": "unknown run, or the fold has no predictions CSV yet"}},
    )
    async def diagnostics(
        run_id: RunId,
        fold_id: int = PathParam(ge=0),
        bins: int = Query(10, ge=2, le=50, description="reliability and PIT bins"),
    ) -> JSONResponse:
        try:
            run = manager.get(run_id)
        except UnknownRunError as err:
            return error_response(404, str(err))
        try:
            # reads a CSV: off the event loop
            found = await asyncio.to_thread(
                diagnostics_of_fold, run.run_dir, fold_id, run.config.alpha, n_bins=bins
            )
        except (ValueError, KeyError) as err:
            return error_response(422, f"fold {fold_id} of run {run_id}: unreadable predictions: {err}")
        if found is None:
            return error_response(
                404, f"fold {fold_id} of run {run_id} has no predictions yet (state: {run.state.value})"
            )
        return JSONResponse(found)

    return router
