"""Issue 24, kind 9 and its neighbours, against a real ``serve``: a client's invalid UTF-8 is a
WARNING line (not an ERROR with a traceback per bad frame), the first offered subprotocol is
echoed, and SIGTERM ends ``serve`` with 143.

The client side was already right (1007); the server logged ``ERROR: Invalid UTF-8 sequence
received from client.`` with the ``UnicodeDecodeError`` traceback (aiohttp#4963 for the kind),
sent no ``Sec-WebSocket-Protocol`` (browsers refuse such a connection), and exited 15 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from api.ws.bad_frames import INVALID_UTF8, BadFrameFilter

ROOT = Path(__file__).resolve().parents[1]
CASES = Path(__file__).parent / "data" / "cases"
WARNING_LINE = "WARNING:  a /ws client sent a text frame that is not valid UTF-8; closed it with 1007"


def test_the_filter_turns_uvicorns_error_into_one_warning_and_leaves_the_rest() -> None:
    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, INVALID_UTF8, (), exc_info)
    assert BadFrameFilter().filter(record)
    assert (record.levelno, record.exc_info, record.getMessage()) == (
        logging.WARNING,
        None,
        "a /ws client sent a text frame that is not valid UTF-8; closed it with 1007",
    )
    other = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", (), exc_info
    )
    assert BadFrameFilter().filter(other) and other.levelno == logging.ERROR and other.exc_info is exc_info


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _send_text_bytes(port: int, message: bytes | list[bytes]) -> int | None:
    """Send ``message`` as one text message (a list: its fragments) without UTF-8 checks; the close code."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        await ws.send(message, text=True)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


async def _offered(port: int, offered: list[str] | None) -> str | None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", subprotocols=offered) as ws:  # type: ignore[arg-type]
        return ws.subprotocol


def test_serve_warns_once_per_bad_frame_echoes_a_subprotocol_and_exits_143_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("ORCHESTRATOR_DB", None)
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "serve",
                "--port",
                str(port),
                "--data",
                str(CASES / "base.csv"),
            ],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        codes = [
            asyncio.run(_send_text_bytes(port, b"\xff\xfe not utf-8")),  # the case: a bad text frame
            asyncio.run(_send_text_bytes(port, "ping".encode("utf-16"))),  # a client writing UTF-16
            asyncio.run(_send_text_bytes(port, [b"ping \xe2\x82", b"\xac ok", b"\xc3"])),  # a torn fragment
        ]
        subprotocols = [
            asyncio.run(_offered(port, ["orchestrator.v1", "json"])),
            asyncio.run(_offered(port, None)),
        ]
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200  # still serving
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        finally:
            proc.kill()
    output = log.read_text()
    assert codes == [1007, 1007, 1007]
    assert subprotocols == ["orchestrator.v1", None]
    assert output.count(WARNING_LINE) == 3, output
    assert "Traceback" not in output and "ERROR" not in output and "UnicodeDecodeError" not in output
    assert proc.returncode == 143, output[-3000:]


@pytest.mark.parametrize("offered", [["graphql-ws"], ["a", "b", "c"]])
def test_any_first_offer_is_echoed(offered: list[str]) -> None:
    # the rule itself, on the ASGI scope the endpoint reads
    from api.ws.endpoint import _first_offered

    class _Socket:
        scope = {"subprotocols": offered}

    assert _first_offered(_Socket()) == offered[0]  # type: ignore[arg-type]
