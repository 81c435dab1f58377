"""uvicorn as this app's server: ``Server`` closes ``/ws`` clients with 4001 before uvicorn's own
shutdown would send them 1012 (a code Qt reports as a protocol error) and runs callbacks once the
socket is listening (``--train-on-start``); access lines carry no token (``RedactTokens``); a
client's invalid UTF-8 is a WARNING line (``api.ws.bad_frames``);
``BackgroundServer`` runs the same server in a thread on a free loopback port (tests, benchmarks,
notebooks).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import unquote_plus

import uvicorn
from fastapi import FastAPI

from api.refusals import DeliberateRefusalFilter
from api.ws.bad_frames import BadFrameFilter
from api.ws.connection import CloseCode

log = logging.getLogger(__name__)

__all__ = ["Server", "BackgroundServer", "RedactTokens", "uvicorn_config", "DEFAULT_WS_MAX_SIZE"]

DEFAULT_WS_MAX_SIZE = 4096


class Server(uvicorn.Server):
    """uvicorn's server; closes ``/ws`` clients with 4001 first and runs ``on_started`` callbacks."""

    def __init__(self, config: uvicorn.Config, on_started: Sequence[Callable[[], None]] = ()) -> None:
        super().__init__(config)
        self._on_started = list(on_started)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        for callback in self._on_started:
            try:
                callback()
            except Exception:
                log.exception("a start-up callback failed")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        stream = getattr(getattr(app, "state", None), "stream", None)
        if stream is not None:
            await stream.close_all(CloseCode.SERVER_SHUTDOWN, "server shutting down")
        await super().shutdown(sockets)


class RedactTokens(logging.Filter):
    """Mask ``token=...`` in log records: uvicorn logs each request path with its query.

    The message and each string argument are masked in place, so a record keeps its shape:
    uvicorn's ``AccessFormatter`` unpacks ``record.args`` as (client, method, path, version,
    status), and a record whose arguments were folded into its message breaks it.
    """

    # a query parameter: its name (maybe percent-encoded, as parse_qs decodes it) and its value
    _PARAM = re.compile(r"(?:^|(?<=[?&\s\"']))([^=&?\s\"']+)=([^&\s\"']*)")

    @classmethod
    def redact(cls, text: str) -> str:
        if "=" not in text:
            return text

        def mask(match: re.Match[str]) -> str:
            name = match.group(1)
            return f"{name}=***" if unquote_plus(name).lower() == "token" else match.group(0)

        return cls._PARAM.sub(mask, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: self.redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def _redact_uvicorn_logs() -> None:
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    refusals = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DeliberateRefusalFilter) for f in refusals.filters):
        refusals.addFilter(DeliberateRefusalFilter())
    if not any(isinstance(f, BadFrameFilter) for f in refusals.filters):
        refusals.addFilter(BadFrameFilter())  # a client's invalid UTF-8: a WARNING, no traceback


def uvicorn_config(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ws_max_size: int = DEFAULT_WS_MAX_SIZE,
    ws_ping_interval: float | None = 20.0,
    ws_ping_timeout: float | None = 20.0,
    ws_compression: bool = False,
    log_level: str = "info",
    access_log: bool = True,
) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",  # its send waits while the socket's buffer is full: backpressure
        ws_max_size=ws_max_size,
        ws_ping_interval=ws_ping_interval,
        ws_ping_timeout=ws_ping_timeout,
        # permessage-deflate costs CPU per client per message (fan-out multiplies it) and the
        # messages are small; on by flag for slow links
        ws_per_message_deflate=ws_compression,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    _redact_uvicorn_logs()  # after Config: it (re)configures uvicorn's loggers
    return config


class BackgroundServer:
    """The app on a free loopback port, served by a thread with its own event loop."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", **config_kwargs: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.app = app
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        config_kwargs.setdefault("log_level", "warning")
        config_kwargs.setdefault("access_log", False)
        self.server = Server(uvicorn_config(app, host, self.port, **config_kwargs))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name="uvicorn", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
