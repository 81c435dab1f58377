"""One ``/ws`` client: its explicit state machine, bounded queue, replay from the hub and sender.

A connection's life (illegal transitions raise ``IllegalClientTransition``)::

    CONNECTING --accept--> REPLAYING --history sent--> LIVE --close decided--> CLOSING --> CLOSED

(CLOSING can be entered from any open state, CLOSED from any state when the client goes away.)

- CONNECTING: checks that need no handshake (client cap: HTTP 503 before the upgrade).
- REPLAYING: accepted and registered with the pump, so live events already queue up; the
  history the client asked for is sent first, straight from the hub.
- LIVE: the sender drains the queue. Anything with ``seq`` at or below what the client already
  has (the replay overlaps the queue) is skipped: no gap, no duplicate.
- CLOSING: a close was decided (queue overflow, server shutdown, client gone); CLOSED at the end.

``send_text`` is passed in, so a test drives a connection with a plain coroutine and no server.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from orchestrator.events.stream import HubClient
from orchestrator.events.fanout import Outgoing, encode_control, encode_event
from api.ws.subscription import Subscription
from orchestrator.errors import IllegalTransitionError
from orchestrator.messages import HistoryGap
from orchestrator.states import StateTable

__all__ = [
    "PONG_TEXT",
    "ClientConnection",
    "ClientState",
    "CloseCode",
    "CloseRequest",
    "IllegalClientTransition",
    "close_reason",
]

PONG_TEXT = '{"type":"pong"}'
REPLAY_PAGE = 1000
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


class ClientState(str, enum.Enum):
    CONNECTING = "connecting"
    REPLAYING = "replaying"
    LIVE = "live"
    CLOSING = "closing"
    CLOSED = "closed"


CLIENT_STATES = StateTable(
    "client",
    {
        ClientState.CONNECTING: {ClientState.REPLAYING, ClientState.CLOSING, ClientState.CLOSED},
        ClientState.REPLAYING: {ClientState.LIVE, ClientState.CLOSING, ClientState.CLOSED},
        ClientState.LIVE: {ClientState.CLOSING, ClientState.CLOSED},
        ClientState.CLOSING: {ClientState.CLOSED},
        ClientState.CLOSED: (),
    },
)


class IllegalClientTransition(IllegalTransitionError):
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

    ``resume_from`` is the seq up to which the client has everything it subscribed to: the
    ``since`` to reconnect with.
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
        self.close_request: CloseRequest | None = None
        self.closing = asyncio.Event()

    # ---- state ----------------------------------------------------------------------------

    def transition(self, new: ClientState) -> None:
        """The one way the state changes; an illegal change names the states expected instead."""
        try:
            self.state = CLIENT_STATES.check(self.state, new, self.name)
        except IllegalTransitionError as err:
            raise IllegalClientTransition(str(err)) from None

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
        """Replay, then send queued live events until cancelled, closing or the client is gone.

        Starts in REPLAYING (the endpoint moves an accepted connection there)."""
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
        if item.seq is not None:
            # the write happened (a cancel can only land before it): the client has this seq
            self._floor = item.seq
            self.resume_from = item.seq

    async def _replay(self) -> None:
        sub = self.subscription
        head = await self.hub.last_seq()
        if sub.since is not None and sub.since <= head:
            await self._send_history(sub.since, sub.run_id)
            return
        if sub.since is not None:  # beyond the hub's last seq: the server restarted since
            oldest_events, _ = await self.hub.events_since(0, None, None, 1)
            oldest = oldest_events[0]["seq"] if oldest_events else head + 1
            await self._send_gap(
                sub.since,
                oldest,
                f"since={sub.since} is past the server's last seq {head} "
                "(the server restarted); replaying the active run instead",
                sub.run_id,
            )
        run_id = sub.run_id or await self.hub.active_run()
        if run_id is None:  # nothing running: live events only, from what follows ``head``
            self._floor = head
            self.resume_from = head
            return
        await self._send_history(0, run_id)

    async def _send_history(self, since: int, run_id: str | None) -> None:
        """Send the held events after ``since`` (of ``run_id``), page by page, straight from the
        hub; a ``history_gap`` first when the hub no longer holds all of them."""
        cursor = since
        head = await self.hub.last_seq()  # the pages cover at least this far
        first_page = True
        while True:
            events, gap = await self.hub.events_since(
                cursor, run_id, self.subscription.types, REPLAY_PAGE
            )
            if first_page and gap is not None:
                oldest = int(gap)
                await self._send_gap(
                    since,
                    oldest,
                    f"events after seq {since} up to {oldest - 1} are no longer held; "
                    f"continuing from seq {oldest}",
                    run_id,
                )
            first_page = False
            for event in events:
                if event["seq"] > self._floor:
                    await self._send(encode_event(event))
            if len(events) < REPLAY_PAGE:
                break
            cursor = int(events[-1]["seq"])
        # everything up to the hub's head is sent or not wanted
        self._floor = max(self._floor, cursor, head)
        self.resume_from = self._floor

    async def _send_gap(self, since: int, oldest: int, message: str, run_id: str | None) -> None:
        gap = HistoryGap(
            seq=None,
            requested_since=since,
            oldest_available=oldest,
            message=message,
            run_id=run_id,
            ts=time.time(),
        )
        await self._send(encode_control(gap))
