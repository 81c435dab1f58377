"""The AsyncAPI 3.0 document of ``/ws``, generated from the message models (``docs/asyncapi.yaml``).

The document describes a client of the server: it *receives* every server message (one message
per type of ``orchestrator.messages``, its payload the model's JSON Schema, the same definitions
as ``docs/ws-schema.json``) and *sends* the text ``ping``, answered by ``pong``. The channel's
WebSocket binding lists the query parameters of the handshake. Contract side: imports only
``orchestrator.messages`` (and PyYAML to write the file).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel

from orchestrator.messages import (
    CORE_TYPES,
    ENVELOPE_FIELDS,
    HEAVY_TYPES,
    MESSAGE_MODELS,
    MESSAGE_TYPES,
    RUN_ID_PATTERN,
    TERMINAL_TYPES,
    Pong,
    message_json_schema,
)

__all__ = ["ASYNCAPI_VERSION", "API_VERSION", "asyncapi_document", "asyncapi_yaml"]

ASYNCAPI_VERSION = "3.0.0"
API_VERSION = "0.1.0"  # the package's version (pyproject.toml); a test keeps them equal
CHANNEL = "ws"
PING = "ping"
PONG = "pong"
_SCHEMA_REFS = "#/components/schemas/"
_JSON = "application/json"

_DESCRIPTION = (
    "Live events of walk-forward CV training runs. Every server message is one JSON object in a "
    "text frame, told apart by its `type`; JSON has no NaN or Infinity, so an undefined metric "
    "is `null`. The event hub stamps each event with the envelope fields "
    + ", ".join(f"`{name}`" for name in ENVELOPE_FIELDS)
    + " (`seq` increases with every event of the hub: resume with `?since=<last seq>`). Clients "
    "ignore unknown keys. A client that names no `types` receives the core types (tag `core`), "
    "the heavy ones (tag `heavy`) only when it asks for them by name. This document is written "
    "from the client's side: it receives the server messages and may send the text `ping`."
)


def _rewrite_refs(node: Any) -> Any:
    """Copy of a JSON Schema fragment with ``#/$defs/X`` refs pointing into the components."""
    if isinstance(node, dict):
        return {
            key: value.replace("#/$defs/", _SCHEMA_REFS)
            if key == "$ref" and isinstance(value, str)
            else _rewrite_refs(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def _tags(kind: str) -> list[dict[str, str]]:
    """``core`` (sent unless a client names its types) or ``heavy``; ``terminal``: ends a run."""
    names = ["heavy" if kind in HEAVY_TYPES else "core"]
    if kind in TERMINAL_TYPES:
        names.append("terminal")
    return [{"name": name} for name in names]


def _server_message(kind: str, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "name": kind,
        "title": model.__name__,
        "contentType": _JSON,
        "payload": {"$ref": f"{_SCHEMA_REFS}{model.__name__}"},
        "tags": _tags(kind),
    }


def _messages() -> dict[str, dict[str, Any]]:
    messages = {kind: _server_message(kind, model) for kind, model in MESSAGE_MODELS.items()}
    messages[PING] = {
        "name": PING,
        "title": "Ping",
        "summary": "Text ping from a client, answered at once with a pong (ahead of queued events).",
        "description": "The text `ping` in any case, with any surrounding blanks. Other client "
        "messages are ignored. Protocol-level ping/pong frames work as well.",
        "contentType": "text/plain",
        "payload": {"type": "string", "pattern": r"^\s*[Pp][Ii][Nn][Gg]\s*$"},
        "examples": [{"payload": PING}],
    }
    messages[PONG] = {
        "name": PONG,
        "title": Pong.__name__,
        "summary": "The answer to a text ping (JSON, so clients that parse every frame do not break).",
        "contentType": _JSON,
        "payload": {"$ref": f"{_SCHEMA_REFS}{Pong.__name__}"},
        "examples": [{"payload": Pong().model_dump(mode="json")}],
    }
    return messages


def _query_schema() -> dict[str, Any]:
    core = ",".join(t for t in MESSAGE_TYPES if t in CORE_TYPES)
    return {
        "type": "object",
        "properties": {
            "since": {
                "type": "integer",
                "minimum": 0,
                "description": "Resume after the message with this `seq` (the last one "
                "received), with no gap and no duplicate; where the hub's history no longer "
                "covers it, a `history_gap` message says so first. Without it, a client first "
                "receives the followed run's events so far (or, with `run_id=*`, every event "
                "since the oldest running run began).",
            },
            "run_id": {
                "type": "string",
                "pattern": "^[*]$|" + RUN_ID_PATTERN,
                "description": "Only the events of this run (and server messages without a run); "
                "`*`: every run's, interleaved. Without it, the client follows one run at a "
                "time: the oldest running run, then the next (docs/api.md); other streams "
                "(`chart_update`, `hpo_trial`) reach it as they come.",
            },
            "types": {
                "type": "string",
                "description": "Comma-separated message types to receive, or `all`. "
                f"Default: the core types ({core}). Unknown names close the connection with "
                "an application close code (4000-4999) whose reason names them.",
                "examples": [f"{core},{','.join(sorted(HEAVY_TYPES))}", "all"],
            },
            "token": {
                "type": "string",
                "description": "The API token, for clients that cannot set `Authorization: "
                "Bearer <token>` (browsers). Needed only when the server has a token configured.",
            },
        },
        "additionalProperties": False,
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``/ws`` as a JSON-ready dict."""
    messages = _messages()
    server_kinds = [*MESSAGE_TYPES, PONG]
    channel_ref = {"$ref": f"#/channels/{CHANNEL}"}

    def message_refs(kinds: list[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{CHANNEL}/messages/{kind}"} for kind in kinds]

    schemas = _rewrite_refs(message_json_schema()["$defs"])
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Forecast orchestrator /ws",
            "version": API_VERSION,
            "description": _DESCRIPTION,
        },
        "defaultContentType": _JSON,
        "servers": {
            "local": {
                "host": "127.0.0.1:8000",
                "protocol": "ws",
                "description": "The default `orchestrator serve` address (loopback: no token "
                "needed unless one is configured).",
                "security": [
                    {"$ref": "#/components/securitySchemes/bearer"},
                    {"$ref": "#/components/securitySchemes/queryToken"},
                ],
            },
        },
        "channels": {
            CHANNEL: {
                "address": "/ws",
                "title": "Event stream",
                "description": "One WebSocket connection per client. Application close codes "
                "are in 4000-4999; a client closed for falling behind is told to resume with "
                "`since`.",
                "servers": [{"$ref": "#/servers/local"}],
                "messages": {kind: {"$ref": f"#/components/messages/{kind}"} for kind in messages},
                "bindings": {
                    "ws": {"method": "GET", "query": _query_schema(), "bindingVersion": "0.1.0"},
                },
            },
        },
        "operations": {
            "receiveServerMessages": {
                "action": "receive",
                "channel": channel_ref,
                "title": "Receive server messages",
                "summary": "Every message the server sends: events of runs, control messages and pongs.",
                "messages": message_refs(server_kinds),
            },
            "sendPing": {
                "action": "send",
                "channel": channel_ref,
                "title": "Send a ping",
                "summary": "A text ping; the server answers with a pong.",
                "messages": message_refs([PING]),
                "reply": {"channel": channel_ref, "messages": message_refs([PONG])},
            },
        },
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <token>`, when the server has a token.",
                },
                "queryToken": {
                    "type": "httpApiKey",
                    "in": "query",
                    "name": "token",
                    "description": "`?token=<token>`, for browsers, when the server has a token.",
                },
            },
        },
    }


def asyncapi_yaml() -> str:
    """``asyncapi_document()`` as the YAML text of ``docs/asyncapi.yaml``."""
    # Through JSON first: every node a fresh object, so YAML writes no anchors and aliases.
    document = json.loads(json.dumps(asyncapi_document()))
    text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return text
