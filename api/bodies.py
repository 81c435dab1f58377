"""JSON request bodies and error responses shared by the routes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from api.limits import MAX_JSON_DEPTH, json_depth
from api.server_owned import owned_field_refusal
from api.trust import Refusal
from orchestrator.config import DuplicateKeysError, parse_json, unique_json_object
from orchestrator.errors import ConfigError

__all__ = ["error_response", "json_object_body", "owned_field_response", "refusal_response"]


def error_response(status: int, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status)


async def json_object_body(request: Request, what: str) -> dict[str, Any] | JSONResponse:
    """The body as a JSON object (empty body: {}), or the 400/422 response that refuses it.

    The size limit is the app's (``api.limits``, 413); here a body nesting deeper than
    ``MAX_JSON_DEPTH`` is refused (422), also one too deep for the parser itself."""
    raw = await request.body()
    too_deep = f"the body nests deeper than {MAX_JSON_DEPTH} levels of objects and arrays"
    repeated = False  # json keeps the last of two equal keys without a word: refuse them (docs/api.md)
    try:
        try:
            values = json.loads(raw, object_pairs_hook=unique_json_object) if raw.strip() else {}
        except DuplicateKeysError:
            values, repeated = json.loads(raw), True  # for the depth check, which comes first
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return error_response(400, f"malformed JSON body: {err}")
    except RecursionError:
        return error_response(422, too_deep)
    if json_depth(values) > MAX_JSON_DEPTH:
        return error_response(422, too_deep)
    if repeated:
        try:  # read again only to name the keys and their lines
            parse_json(raw.decode(), "the JSON body")
        except ConfigError as err:
            return error_response(400, str(err))
    if not isinstance(values, dict):
        return error_response(422, f"the body must be a JSON object of {what}, got {type(values).__name__}")
    return values


def refusal_response(refusal: Refusal) -> JSONResponse:
    """The 422 of a body field the trust model refuses (``api.trust``)."""
    return error_response(422, refusal.message, fields=[refusal.field])


def owned_field_response(values: Mapping[str, object], reports_dir: str) -> JSONResponse | None:
    """The 422 that refuses a body setting a field the server owns (``api.server_owned``), or None."""
    refusal = owned_field_refusal(values, reports_dir)
    return None if refusal is None else refusal_response(refusal)
