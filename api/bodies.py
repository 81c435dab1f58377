"""JSON request bodies and error responses shared by the routes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from api.server_owned import owned_field_refusal

__all__ = ["error_response", "json_object_body", "owned_field_response"]


def error_response(status: int, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status)


async def json_object_body(request: Request, what: str) -> dict[str, Any] | JSONResponse:
    """The body as a JSON object (empty body: {}), or the 400/422 response that refuses it."""
    raw = await request.body()
    try:
        values = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return error_response(400, f"malformed JSON body: {err}")
    if not isinstance(values, dict):
        return error_response(422, f"the body must be a JSON object of {what}, got {type(values).__name__}")
    return values


def owned_field_response(values: Mapping[str, object], reports_dir: str) -> JSONResponse | None:
    """The 422 that refuses a body setting a field the server owns (``api.server_owned``), or None."""
    refusal = owned_field_refusal(values, reports_dir)
    if refusal is None:
        return None
    return error_response(422, refusal.message, fields=[refusal.field])
