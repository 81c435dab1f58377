"""The server's own routes: ``GET /`` (health, version, running runs, hub, job store, clients) and the ``/ws`` contract documents."""

from __future__ import annotations

import asyncio
import logging
from importlib import metadata
from typing import Any

from fastapi import APIRouter

from api.routes.runs import RunService
from api.ws.endpoint import EventStreamEndpoint
from api.ws.fanout import EventPump
from orchestrator.asyncapi import asyncapi_document
from orchestrator.events.stream import HubClient
from orchestrator.messages import message_json_schema
from orchestrator.store.health import HealthSnapshot

__all__ = ["api_version", "meta_router"]

log = logging.getLogger(__name__)
RUNNING_TIMEOUT_S = 2.0  # health answers at once even when the hub does not


def api_version() -> str:
    try:
        return metadata.version("forecast-orchestrator")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def meta_router(
    hub: HubClient, manager: RunService, pump: EventPump, stream: EventStreamEndpoint
) -> APIRouter:
    router = APIRouter()

    async def running() -> list[str]:
        """The runs running now, oldest first, by the rule a /ws client follows them by (the
        hub's); while the hub does not answer, this server's unfinished runs, oldest first."""
        if pump.healthy:
            try:
                return await asyncio.wait_for(hub.running_runs(), RUNNING_TIMEOUT_S)
            except Exception as err:  # health must answer: say what we know here
                log.warning("GET /: the hub did not say which runs are running: %r", err)
        return [run.run_id for run in manager.active()]

    async def store() -> HealthSnapshot | None:
        """The job store as the hub's writer sees it now; the last poll's word if it does not answer."""
        try:
            return await asyncio.wait_for(hub.store_health(), RUNNING_TIMEOUT_S)
        except Exception:
            return pump.store_health

    @router.get("/", summary="Health: status, Ray connection, running runs, hub, job store, version")
    async def health() -> dict[str, Any]:
        ids = await running()
        store_health = await store()
        identity = pump.hub_identity
        return {
            "status": "ok" if store_health is None or store_health["ok"] else "degraded",
            "version": api_version(),
            "ray_connected": hub.ray_connected(),
            "active_run_id": ids[0] if ids else None,
            "running": ids,
            "hub": {
                "reachable": pump.healthy,
                "last_seq": pump.cursor,
                "error": pump.last_error,
                "pid": None if identity is None else identity["pid"],
                "restarts": pump.restarts,
            },
            "store": store_health,
            "clients": len(stream.connections),
            "queued": [run.run_id for run in manager.queued()],
        }

    @router.get("/ws/schema", summary="JSON Schema of every message sent on /ws")
    async def ws_schema() -> dict[str, Any]:
        return message_json_schema()

    @router.get("/ws/asyncapi", summary="AsyncAPI 3.0 document of /ws (as docs/asyncapi.yaml)")
    async def ws_asyncapi() -> dict[str, Any]:
        return asyncapi_document()

    return router
