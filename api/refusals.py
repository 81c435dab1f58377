"""A WebSocket refusal the server means to make (client cap, Origin, token) is not an error in its log.

uvicorn's ``websockets-sansio`` protocol does not mark the handshake complete after a denial
response (the ``websocket.http.response`` extension), so every deliberate refusal is followed by
``ERROR: ASGI callable returned without completing handshake.`` (uvicorn PR #3138, open; its
wsproto protocol already behaves). The app marks a deliberate refusal in a context variable of
the connection's task; uvicorn logs that line in the same task right after the app returns, so
``DeliberateRefusalFilter`` on ``uvicorn.error`` drops exactly those lines. A handler that really
returns without a handshake is still logged as an error.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

__all__ = ["INCOMPLETE_HANDSHAKE", "DeliberateRefusalFilter", "mark_deliberate_refusal"]

INCOMPLETE_HANDSHAKE = "ASGI callable returned without completing handshake."

_refused: ContextVar[bool] = ContextVar("deliberate_ws_refusal", default=False)


def mark_deliberate_refusal() -> None:
    """Call in the connection's task when the app answers an upgrade with an HTTP error on purpose."""
    _refused.set(True)


class DeliberateRefusalFilter(logging.Filter):
    """Drops uvicorn's incomplete-handshake error for connections the app refused on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_refused.get() and record.getMessage() == INCOMPLETE_HANDSHAKE)
