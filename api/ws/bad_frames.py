"""A client's text frame that is not valid UTF-8 is the client's fault: one WARNING line, no traceback.

uvicorn's ``websockets-sansio`` protocol closes such a connection with 1007 (right), but logs
``Invalid UTF-8 sequence received from client.`` on ``uvicorn.error`` as an ERROR with the
``UnicodeDecodeError`` traceback, once per bad frame (aiohttp#4963 is the same in aiohttp), which
pages an operator for what a client did. ``BadFrameFilter`` rewrites exactly that record into one
WARNING line that says what happened and what the client got; every other record passes as is.
"""

from __future__ import annotations

import logging

__all__ = ["INVALID_UTF8", "BadFrameFilter"]

INVALID_UTF8 = "Invalid UTF-8 sequence received from client."


class BadFrameFilter(logging.Filter):
    """On ``uvicorn.error``: the invalid-UTF-8 record becomes a WARNING without its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == INVALID_UTF8 and record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg = "a /ws client sent a text frame that is not valid UTF-8; closed it with 1007"
            record.args = ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True
