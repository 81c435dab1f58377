"""The limits of a request: its body's size (413 before anything parses it) and its JSON's depth.

``BodyLimitMiddleware`` answers **413** with a JSON ``error`` when ``Content-Length`` says more
than ``max_bytes``, and when a body sent without one (chunked) passes ``max_bytes`` while a route
reads it: bytes are counted as they arrive, so no route ever holds more. ``MAX_BODY_BYTES``
(1 MiB) is far above what a run's or a study's JSON needs (a few KB). ``json_depth`` measures how
deeply a parsed body nests, without recursion; the routes refuse more than ``MAX_JSON_DEPTH``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "BodyLimitMiddleware",
    "json_depth",
    "json_error_parts",
    "send_json_error",
]

MAX_BODY_BYTES = 2**20
# a study's body nests 4 deep (search_space -> field -> choices -> value); 32 leaves room
MAX_JSON_DEPTH = 32


class BodyTooLargeError(Exception):
    """A streamed body passed the limit while a route read it."""


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and dicts: 0 for a scalar, 1 for ``{}`` or ``[1]``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def json_error_parts(
    error: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body ``{"error": error}`` and the headers of a JSON error response."""
    body = json.dumps({"error": error}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    return body, headers


async def send_json_error(
    send: Send, status: int, error: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole HTTP response ``{"error": error}`` with ``status``."""
    body, headers = json_error_parts(error, extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for an HTTP request body over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got max_bytes={max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> str:
        return (
            f"the request body is {size}; this server takes at most {self.max_bytes} bytes "
            f"({self.max_bytes / 2**20:g} MiB) per request"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        # the HTTP parser has checked that it is a number: a body that says it is too large is
        # answered before a byte of it is read
        if declared.strip().isdigit() and int(declared) > self.max_bytes:
            await send_json_error(send, 413, self._too_large(f"{int(declared)} bytes"))
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLargeError:
            if started:
                raise
            await send_json_error(send, 413, self._too_large(f"over {self.max_bytes} bytes"))
