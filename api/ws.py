"""``/ws``: one WebSocket client's subscription, replay, bounded queue and sender (DESIGN 4).

A connection's life is an explicit state machine (illegal transitions raise)::

    CONNECTING --accept--> REPLAYING --history sent--> LIVE --close decided--> CLOSING --> CLOSED

(CLOSING can be entered from any open state, CLOSED from any state when the client goes away.)

- CONNECTING: checks that need no handshake (client cap: HTTP 503 before the upgrade).
- REPLAYING: accepted and registered with the pump, so live events already queue up; the
  history the client asked for is sent first, straight from the hub.
- LIVE: the sender drains the queue. Anything with ``seq`` at or below what the client already
  has (the replay overlaps the queue) is skipped: no gap, no duplicate.
- CLOSING: a close was decided (queue overflow, server shutdown, client gone); CLOSED at the end.

Text ``ping`` (any case, surrounding blanks) is answered at once with ``{"type":"pong"}``,
ahead of queued events; other client messages are ignored. Close codes are in ``CloseCode``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from orchestrator.events.fanout import EventPump, Outgoing, encode_control, encode_event
from orchestrator.events.stream import HubClient
from orchestrator.messages import CORE_TYPES, MESSAGE_TYPES, HistoryGap

__all__ = [
    "CloseCode",
    "ClientState",
    "IllegalClientTransition",
    "Subscription",
    "SubscriptionError",
    "ClientConnection",
    "ClientSlots",
    "EventStreamEndpoint",
    "PONG_TEXT",
    "close_reason",
]

log = logging.getLogger(__name__)

PONG_TEXT = '{"type":"pong"}'
REPLAY_PAGE = 1000
_RUN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_QUERY_PARAMS = ("since", "run_id", "types", "token")
_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes with the code


class CloseCode(enum.IntEnum):
    """Application close codes (4000-4999: Qt reports 1012-2999 as protocol errors)."""

    SERVER_SHUTDOWN = 4001  # the server is stopping; reconnect later with ?since=<last seq>
    SLOW_CONSUMER = 4008  # the client's queue overflowed; reconnect with ?since=<last seq>
    BAD_REQUEST = 4400  # an invalid query parameter (since, run_id, types, unknown name)
    INTERNAL_ERROR = 4500  # the event hub failed during replay; reconnect with ?since=<last seq>


def close_reason(text: str) -> str:
    """``text`` cut to the 123 UTF-8 bytes a close frame can carry."""
    data = text.encode()
    if len(data) <= _MAX_REASON_BYTES:
        return text
    return data[: _MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


class SubscriptionError(ValueError):
    """A query parameter of ``/ws`` is invalid; the message names it (it becomes the reason)."""


@dataclass(frozen=True)
class Subscription:
    """What one client asked for: resume point, one run, message types."""

    since: int | None = None
    run_id: str | None = None
    types: frozenset[str] = CORE_TYPES

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> Subscription:
        unknown = sorted(set(params) - set(_QUERY_PARAMS))
        if unknown:
            raise SubscriptionError(
                f"unknown query parameter(s) {', '.join(unknown)}; known: {', '.join(_QUERY_PARAMS)}"
            )
        since = None
        if "since" in params:
            raw = params["since"].strip()
            if not raw.isdigit():
                raise SubscriptionError(f"since must be an integer >= 0, got since={raw!r}")
            since = int(raw)
        run_id = None
        if "run_id" in params:
            run_id = params["run_id"].strip()
            if not _RUN_ID.match(run_id):
                raise SubscriptionError(f"run_id must be 1-128 of [A-Za-z0-9_.:-], got {run_id!r}")
        types = CORE_TYPES
        if "types" in params:
            types = parse_types(params["types"])
        return cls(since=since, run_id=run_id, types=types)

    def wants(self, item: Outgoing) -> bool:
        if item.seq is None:  # server-made control messages (history_gap) go to everyone
            return self.run_id is None or item.run_id in (None, self.run_id)
        if self.run_id is not None and item.run_id != self.run_id:
            return False
        return item.type in self.types


def parse_types(raw: str) -> frozenset[str]:
    """``a,b,c`` (or ``all``) as a set of message types; unknown names are an error naming them."""
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if not names:
        raise SubscriptionError("types is empty; give message types, e.g. types=epoch_metrics,notification")
    if names == ["all"]:
        return frozenset(MESSAGE_TYPES)
    unknown = [name for name in names if name not in MESSAGE_TYPES]
    if unknown:
        raise SubscriptionError(f"unknown message type(s) in types: {', '.join(unknown)} (see /ws/schema)")
    return frozenset(names)


class ClientState(str, enum.Enum):
    CONNECTING = "connecting"
    REPLAYING = "replaying"
    LIVE = "live"
    CLOSING = "closing"
    CLOSED = "closed"


_LEGAL: dict[ClientState, frozenset[ClientState]] = {
    ClientState.CONNECTING: frozenset({ClientState.REPLAYING, ClientState.CLOSING, ClientState.CLOSED}),
    ClientState.REPLAYING: frozenset({ClientState.LIVE, ClientState.CLOSING, ClientState.CLOSED}),
    ClientState.LIVE: frozenset({ClientState.CLOSING, ClientState.CLOSED}),
    ClientState.CLOSING: frozenset({ClientState.CLOSED}),
    ClientState.CLOSED: frozenset(),
}


class IllegalClientTransition(RuntimeError):
    """An illegal state transition of a client connection."""


class _BoundedQueue:
    """FIFO of outgoing messages bounded by count and by bytes; ``put`` never waits."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[Outgoing] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Outgoing) -> bool:
        size = len(item.text)
        if len(self._items) >= self.max_items or (self._items and self._bytes + size > self.max_bytes):
            return False
        self._items.append(item)
        self._bytes += size
        self._ready.set()
        return True

    async def get(self) -> Outgoing:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        self._bytes -= len(item.text)
        return item


@dataclass(frozen=True)
class CloseRequest:
    code: int
    reason: str


class ClientConnection:
    """One subscriber: replays what it asked for, then sends the live events the pump offers.

    ``send_text`` is passed in (a WebSocket's, or a test's coroutine). ``resume_from`` is the
    seq up to which the client has everything it subscribed to: the ``since`` to reconnect with.
    """

    def __init__(
        self,
        subscription: Subscription,
        hub: HubClient,
        send_text: Callable[[str], Awaitable[None]],
        *,
        max_queue: int = 1000,
        max_queue_bytes: int = 16 * 2**20,
        name: str = "client",
    ) -> None:
        self.subscription = subscription
        self.hub = hub
        self._send_text = send_text
        self._queue = _BoundedQueue(max_queue, max_queue_bytes)
        self.name = name
        self.state = ClientState.CONNECTING
        self.resume_from: int | None = subscription.since
        self._floor = 0  # events with seq <= floor are already sent or not wanted
        self.sent = 0
        self.close_request: CloseRequest | None = None
        self.closing = asyncio.Event()

    # ---- state ----------------------------------------------------------------------------

    def transition(self, new: ClientState) -> None:
        if new not in _LEGAL[self.state]:
            expected = sorted(s.value for s in _LEGAL[self.state]) or ["none (closed)"]
            raise IllegalClientTransition(
                f"{self.name}: cannot go from {self.state.value} to {new.value}; "
                f"expected one of {', '.join(expected)}"
            )
        self.state = new

    def request_close(self, code: int, reason: str) -> None:
        """Decide to close (first decision wins); the endpoint sends the close frame."""
        if self.close_request is not None or self.state is ClientState.CLOSED:
            return
        self.close_request = CloseRequest(code, close_reason(reason))
        self.transition(ClientState.CLOSING)
        self.closing.set()

    def resume_hint(self) -> str:
        return "reconnect" if self.resume_from is None else f"reconnect with ?since={self.resume_from}"

    # ---- the pump's side ------------------------------------------------------------------

    @property
    def types(self) -> frozenset[str]:
        return self.subscription.types

    def offer(self, item: Outgoing) -> None:
        if self.state not in (ClientState.REPLAYING, ClientState.LIVE):
            return
        if not self.subscription.wants(item):
            return
        if not self._queue.put(item):
            # Never drop silently: close, telling the client where to resume.
            self.request_close(
                CloseCode.SLOW_CONSUMER,
                f"too slow: {len(self._queue)} messages queued; {self.resume_hint()}",
            )

    # ---- the sender's side ----------------------------------------------------------------

    async def stream(self) -> None:
        """Replay, then send queued live events until cancelled, closing or the client is gone."""
        if self.state is ClientState.CONNECTING:
            self.transition(ClientState.REPLAYING)
        if self.close_request is None:
            await self._replay()
        if self.close_request is not None:
            return
        self.transition(ClientState.LIVE)
        while True:
            item = await self._queue.get()
            if item.seq is not None and item.seq <= self._floor:
                continue
            await self._send(item)

    async def send_pong(self) -> None:
        await self._send_text(PONG_TEXT)

    async def _send(self, item: Outgoing) -> None:
        await self._send_text(item.text)
        self.sent += 1
        if item.seq is not None:
            # the write happened (a cancel can only land before it): the client has this seq
            self._floor = item.seq
            self.resume_from = item.seq

    async def _replay(self) -> None:
        sub = self.subscription
        head = await self.hub.last_seq()
        if sub.since is not None and sub.since <= head:
            await self._send_history(sub.since, sub.run_id, report_gap=True)
            return
        if sub.since is not None:  # beyond the hub's last seq: the server restarted since
            oldest_events, _ = await self.hub.events_since(0, None, None, 1)
            oldest = oldest_events[0]["seq"] if oldest_events else head + 1
            await self._send(
                encode_control(
                    HistoryGap(
                        seq=None,
                        requested_since=sub.since,
                        oldest_available=oldest,
                        message=f"since={sub.since} is past the server's last seq {head} "
                        "(the server restarted); replaying the active run instead",
                        run_id=sub.run_id,
                        ts=time.time(),
                    )
                )
            )
        run_id = sub.run_id or await self.hub.active_run()
        if run_id is None:  # nothing running: live events only, from what follows ``head``
            self._floor = head
            self.resume_from = head
            return
        await self._send_history(0, run_id, report_gap=True)

    async def _send_history(self, since: int, run_id: str | None, *, report_gap: bool) -> None:
        """Send the held events after ``since`` (of ``run_id``), page by page, straight from the hub."""
        cursor = since
        first_page = True
        while True:
            reply = await self.hub.poll(
                cursor, 0, run_id, types=self.subscription.types, limit=REPLAY_PAGE
            )
            gap = reply.get("gap")
            if first_page and gap is not None and report_gap:
                await self._send(
                    encode_control(
                        HistoryGap(
                            seq=None,
                            requested_since=since,
                            oldest_available=int(gap),
                            message=f"events after seq {since} up to {int(gap) - 1} are no longer "
                            f"held; continuing from seq {int(gap)}",
                            run_id=run_id,
                            ts=time.time(),
                        )
                    )
                )
            first_page = False
            events = reply["events"]
            for event in events:
                if event["seq"] > self._floor:
                    await self._send(encode_event(event))
            cursor = int(reply["last_seq"])
            if len(events) < REPLAY_PAGE:
                break
        # everything up to the hub's head at the last page is sent or not wanted
        self._floor = max(self._floor, cursor)
        self.resume_from = self._floor


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
            await websocket.send_denial_response(
                JSONResponse(
                    {"error": f"too many clients: the limit is {self.slots.limit}"}, status_code=503
                )
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
            await websocket.accept()
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
        await websocket.accept()
        conn.transition(ClientState.REPLAYING)
        self.connections.add(conn)
        self.pump.add(conn)  # before the replay: live events queue up while history is sent
        sender = asyncio.create_task(conn.stream(), name=f"{conn.name} sender")
        reader = asyncio.create_task(self._read(websocket, conn), name=f"{conn.name} reader")
        closing = asyncio.create_task(conn.closing.wait())
        done: set[asyncio.Task[object]] = set()
        try:
            done, _ = await asyncio.wait(
                {sender, reader, closing}, return_when=asyncio.FIRST_COMPLETED
            )
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


