"""Every error answer is a JSON object with ``error``: HTTP and validation errors, and the catch-all 500.

``JsonErrorMiddleware`` is the app's outermost layer: an exception nothing else handled becomes
**500** ``{"error": "internal server error (TypeName); ..."}`` (the message never carries the
exception's text, which may quote a file or a path) and is logged once, with its traceback, on
this module's logger (it does not reach uvicorn, which would log it a second time). Validation
errors name each field and show its value cut short (``orchestrator.errors.brief``).
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.bodies import error_response
from api.limits import send_json_error
from orchestrator.errors import brief

__all__ = ["JsonErrorMiddleware", "http_error", "validation_error"]

log = logging.getLogger(__name__)


async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    parts, fields = [], []
    for item in exc.errors():
        loc = [str(p) for p in item.get("loc", ()) if p not in ("query", "path", "body")]
        name = ".".join(loc) or "request"
        fields.append(name)
        parts.append(f"{name}: {item.get('msg', 'invalid')} (got {brief(item.get('input'))})")
    return error_response(422, "; ".join(parts), fields=sorted(set(fields)))


class JsonErrorMiddleware:
    """Any exception of an HTTP request that reached no handler: a JSON 500, logged once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except ClientDisconnect:
            return  # the client left while its body was read: no one to answer
        except Exception as exc:
            if started:  # too late for an answer: uvicorn logs it and drops the connection
                raise
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            await send_json_error(
                send,
                500,
                f"internal server error ({type(exc).__name__}); the server's log has the details",
            )
