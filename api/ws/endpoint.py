"""The ``/ws`` route: the client cap, then per client a checked subscription, a sender and a reader.

- Before the upgrade: past the client cap, HTTP 503 with a JSON ``error`` (Origin and token are
  checked earlier, by ``api.security.AccessMiddleware``).
- An invalid query is accepted and closed at once with 4400 and a reason naming the parameter.
- Text ``ping`` (any case, surrounding blanks) is answered at once with ``{"type":"pong"}``,
  ahead of queued events; other client messages are ignored.
- Close codes are ``api.ws.connection.CloseCode``; a close frame that the client does not take
  within ``close_timeout_s`` is given up on.
- The first subprotocol a client offers is accepted (there is one protocol, whatever its name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from api.refusals import mark_deliberate_refusal
from api.ws.connection import ClientConnection, ClientState, CloseCode, close_reason
from api.ws.fanout import EventPump
from api.ws.subscription import Subscription, SubscriptionError
from orchestrator.events.stream import HubClient

__all__ = ["ClientSlots", "EventStreamEndpoint"]

log = logging.getLogger(__name__)


class ClientSlots:
    """The client cap: a slot is taken before the upgrade and given back at the end."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_clients must be >= 1, got max_clients={limit}")
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give_back(self) -> None:
        self.used = max(0, self.used - 1)


class EventStreamEndpoint:
    """The ``/ws`` route: checks, accept, then a sender and a reader per client."""

    def __init__(
        self,
        hub: HubClient,
        pump: EventPump,
        slots: ClientSlots,
        *,
        max_queue: int,
        max_queue_bytes: int,
        close_timeout_s: float,
    ) -> None:
        self.hub = hub
        self.pump = pump
        self.slots = slots
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.close_timeout_s = close_timeout_s
        self.connections: set[ClientConnection] = set()
        self._counter = 0

    async def __call__(self, websocket: WebSocket) -> None:
        if not self.slots.take():
            mark_deliberate_refusal()
            await websocket.send_denial_response(
                JSONResponse({"error": f"too many clients: the limit is {self.slots.limit}"}, status_code=503)
            )
            return
        try:
            await self._serve(websocket)
        finally:
            self.slots.give_back()

    async def close_all(self, code: int, reason: str) -> None:
        """Ask every client to close (server shutdown) and wait briefly for them to go."""
        for conn in list(self.connections):
            conn.request_close(code, f"{reason}; {conn.resume_hint()}")
        deadline = time.monotonic() + self.close_timeout_s + 1.0
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _serve(self, websocket: WebSocket) -> None:
        params = {k: v for k, v in websocket.query_params.items()}
        try:
            subscription = Subscription.from_query(params)
        except SubscriptionError as err:
            await websocket.accept(subprotocol=_first_offered(websocket))
            await self._close(websocket, CloseCode.BAD_REQUEST, close_reason(str(err)))
            return
        self._counter += 1
        client = websocket.client
        conn = ClientConnection(
            subscription,
            self.hub,
            websocket.send_text,
            max_queue=self.max_queue,
            max_queue_bytes=self.max_queue_bytes,
            name=f"ws#{self._counter} {client.host}:{client.port}" if client else f"ws#{self._counter}",
        )
        await websocket.accept(subprotocol=_first_offered(websocket))
        conn.transition(ClientState.REPLAYING)
        self.connections.add(conn)
        self.pump.add(conn)  # before the replay: live events queue up while history is sent
        sender = asyncio.create_task(conn.stream(), name=f"{conn.name} sender")
        reader = asyncio.create_task(self._read(websocket, conn), name=f"{conn.name} reader")
        closing = asyncio.create_task(conn.closing.wait())
        done: set[asyncio.Task[object]] = set()
        try:
            done, _ = await asyncio.wait({sender, reader, closing}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done and not sender.cancelled():
                failure = sender.exception()
                if failure is not None and not isinstance(failure, (WebSocketDisconnect, OSError)):
                    log.error("%s: stream failed: %s: %s", conn.name, type(failure).__name__, failure)
                    conn.request_close(
                        CloseCode.INTERNAL_ERROR,
                        f"server error ({type(failure).__name__}); {conn.resume_hint()}",
                    )
        finally:
            self.pump.remove(conn)
            for task in (sender, reader, closing):
                task.cancel()
            await asyncio.gather(sender, reader, closing, return_exceptions=True)
            if conn.close_request is not None and reader not in done:
                await self._close(websocket, conn.close_request.code, conn.close_request.reason)
            self.connections.discard(conn)  # after the close frame: close_all waits for it
            if conn.state is not ClientState.CLOSED:
                conn.transition(ClientState.CLOSED)

    async def _read(self, websocket: WebSocket, conn: ClientConnection) -> None:
        """Answer text pings; return when the client disconnects."""
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is not None and text.strip().lower() == "ping":
                await conn.send_pong()

    async def _close(self, websocket: WebSocket, code: int, reason: str) -> None:
        """Send a close frame; give up after ``close_timeout_s`` (a client that never reads)."""
        if websocket.application_state is not WebSocketState.CONNECTED:
            return
        with contextlib.suppress(asyncio.TimeoutError, WebSocketDisconnect, OSError, RuntimeError):
            await asyncio.wait_for(websocket.close(code, reason), self.close_timeout_s)


def _first_offered(websocket: WebSocket) -> str | None:
    """The first subprotocol the client offered (``Sec-WebSocket-Protocol``), echoed back: a
    browser refuses a connection whose answer names none of those it offered. The messages are
    the same whatever it is called (docs/api.md)."""
    offered = websocket.scope.get("subprotocols") or []
    return str(offered[0]) if offered else None
