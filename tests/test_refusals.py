"""Deliberate WebSocket refusals are not logged as errors; real incomplete handshakes still are."""

from __future__ import annotations

import contextvars
import logging

from api.refusals import INCOMPLETE_HANDSHAKE, DeliberateRefusalFilter, mark_deliberate_refusal


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, (), None)


def test_unmarked_connection_keeps_the_error() -> None:
    keep = contextvars.Context().run(DeliberateRefusalFilter().filter, _record(INCOMPLETE_HANDSHAKE))
    assert keep is True


def test_marked_refusal_drops_only_the_incomplete_handshake_line() -> None:
    def in_connection_task() -> tuple[bool, bool]:
        mark_deliberate_refusal()
        flt = DeliberateRefusalFilter()
        return flt.filter(_record(INCOMPLETE_HANDSHAKE)), flt.filter(_record("Exception in ASGI application"))

    dropped, other = contextvars.Context().run(in_connection_task)
    assert (dropped, other) == (False, True)
