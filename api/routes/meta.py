"""The server's own routes: ``GET /`` (health, version, hub, clients) and the ``/ws`` contract documents."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import APIRouter

from api.routes.runs import RunService
from api.ws.endpoint import EventStreamEndpoint
from orchestrator.asyncapi import asyncapi_document
from orchestrator.events.fanout import EventPump
from orchestrator.events.stream import HubClient
from orchestrator.messages import message_json_schema

__all__ = ["api_version", "meta_router"]


def api_version() -> str:
    try:
        return metadata.version("forecast-orchestrator")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def meta_router(
    hub: HubClient, manager: RunService, pump: EventPump, stream: EventStreamEndpoint
) -> APIRouter:
    router = APIRouter()

    @router.get("/", summary="Health: status, Ray connection, active run, version")
    async def health() -> dict[str, Any]:
        active = manager.active()
        return {
            "status": "ok",
            "version": api_version(),
            "ray_connected": hub.ray_connected(),
            "active_run_id": active[0].run_id if active else None,
            "hub": {"reachable": pump.healthy, "last_seq": pump.cursor, "error": pump.last_error},
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
