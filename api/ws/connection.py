"""One ``/ws`` client: its explicit state machine, bounded queue, replay from the hub and sender.

A connection's life (illegal transitions raise ``IllegalClientTransition``)::

    CONNECTING --accept--> REPLAYING --history sent--> LIVE --close decided--> CLOSING --> CLOSED

(CLOSING can be entered from any open state, CLOSED from any state when the client goes away.)

- CONNECTING: checks that need no handshake (client cap: HTTP 503 before the upgrade).
- REPLAYING: accepted and registered with the pump, so live events already queue up; the
  history the client asked for is sent first, straight from the hub.
- LIVE: the sender drains the queue. Anything with ``seq`` at or below what the client already
  has (the replay overlaps the queue) is skipped: no gap, no duplicate. A client that names no
  run follows one at a time (``api.ws.follow``): the sender judges each event as it takes it,
  and when the followed run has ended it replays the next one's history up to that moment
  before it goes on with the queue (which holds only later events: nothing is sent twice).
- CLOSING: a close was decided (queue overflow, server shutdown, client gone); CLOSED at the end.

``send_text`` is passed in, so a test drives a connection with a plain coroutine and no server.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from api.ws.fanout import Outgoing, encode_control
from api.ws.follow import RunFollow, Verdict
from api.ws.subscription import FOLLOW_CONTROL_TYPES, Subscription
from orchestrator.errors import IllegalTransitionError
from orchestrator.events.record import EventRecord
from orchestrator.events.stream import HubClient
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
    HUB_RESTARTED = 4012  # the event hub restarted; reconnect with the ?since= the reason gives
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

    def drop_after(self, seq: int) -> None:
        """Forget the queued events with a seq above ``seq`` (a restarted hub's stale ones)."""
        kept = deque(item for item in self._items if item.seq is None or item.seq <= seq)
        self._items, self._bytes = kept, sum(len(item.text) for item in kept)


@dataclass(frozen=True)
class CloseRequest:
    code: int
    reason: str


class ClientConnection:
    """One subscriber: replays what it asked for, then sends the live events the pump offers.

    ``resume_from`` is the ``since`` to reconnect with: the seq up to which the client has
    everything it subscribed to (for a following client: of the last message sent, or of the
    moment it connected while no run was running).
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
        self._follow = RunFollow() if subscription.follows else None
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

    def hub_restarted(self, restored_at: int) -> None:
        """The hub restarted, rebuilt up to ``restored_at``: events after it may come again under
        other seqs. A live client that got nothing after it goes on (its stale queued events are
        dropped); any other is closed with 4012, to resume from ``restored_at`` at the latest."""
        if self.state not in (ClientState.REPLAYING, ClientState.LIVE):
            return
        if self._floor <= restored_at and self.state is ClientState.LIVE:
            self._queue.drop_after(restored_at)
            return
        since = restored_at if self.resume_from is None else min(restored_at, self.resume_from)
        self.request_close(CloseCode.HUB_RESTARTED, f"the event hub restarted; reconnect with ?since={since}")

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
            if self._follow is None:
                await self._send(item)
            else:
                await self._follow_item(item)

    async def send_pong(self) -> None:
        await self._send_text(PONG_TEXT)

    async def _send(self, item: Outgoing) -> None:
        await self._send_text(item.text)
        if item.seq is not None:
            # the write happened (a cancel can only land before it): the client has this seq
            self._floor = max(self._floor, item.seq)
            self.resume_from = item.seq

    async def _replay(self) -> None:
        sub = self.subscription
        head = await self.hub.last_seq()
        if sub.since is not None and sub.since <= head:
            if self._follow is None:
                await self._send_history(sub.since)
            else:
                await self._resume_following(sub.since, head)
            return
        if sub.since is not None:  # beyond the hub's last seq: the server restarted since
            oldest_events, _ = await self.hub.events_since(0, None, None, 1)
            oldest = oldest_events[0].seq if oldest_events else head + 1
            await self._send_gap(
                sub.since,
                oldest,
                f"since={sub.since} is past the server's last seq {head} "
                "(the server restarted); replaying as for a new client instead",
            )
        if self._follow is not None:
            await self._start_following(head)
        elif sub.one_run is not None:
            await self._send_history(0)
        else:  # every run: everything since the oldest running run began
            running = await self.hub.running_runs(head)
            first, _ = await self.hub.events_since(0, running[0], None, 1) if running else ([], None)
            await self._send_history(min(head, first[0].seq - 1) if first else head)

    async def _send_history(self, since: int) -> None:
        """Send every held event after ``since`` that the client subscribed to, oldest first."""
        head = await self.hub.last_seq()  # the pages cover at least this far
        async for event in self._history(since, self.subscription.one_run, self.types):
            if event.seq > self._floor:
                await self._send(event)
        # everything up to the hub's head is sent or not wanted
        self._floor = max(self._floor, head)
        self.resume_from = self._floor

    async def _history(
        self, since: int, run_id: str | None, types: frozenset[str], until: int | None = None
    ) -> AsyncIterator[EventRecord]:
        """The held events after ``since`` (of ``run_id``, of ``types``, up to seq ``until``), page
        by page, straight from the hub; a ``history_gap`` is sent first when the hub no longer
        holds all of them."""
        cursor = since
        first_page = True
        while True:
            events, gap = await self.hub.events_since(cursor, run_id, types, REPLAY_PAGE)
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
                if until is not None and event.seq > until:
                    return
                yield event
            if len(events) < REPLAY_PAGE:
                return
            cursor = events[-1].seq

    # ---- following one run at a time (no ?run_id=; the rule is api.ws.follow's) ----------

    async def _start_following(self, head: int) -> None:
        """A new client: the oldest run running now, from its start; else wait for the next."""
        assert self._follow is not None
        run_id = self._follow.enter(await self.hub.running_runs(head))
        if run_id is None:
            self.resume_from = head
        else:
            await self._replay_run(run_id, head)
        self._floor = max(self._floor, head)

    async def _resume_following(self, since: int, head: int) -> None:
        """A client back after the message with seq ``since``: where it was, then the events
        after ``since`` in order, as if it had never left."""
        assert self._follow is not None
        last = None
        if since > 0:
            found, _ = await self.hub.events_since(since - 1, None, None, 1)
            last = found[0] if found and found[0].seq == since else None
        if self._follow.resume(await self.hub.running_runs(since), last):
            assert self._follow.following is not None
            await self._replay_run(self._follow.following, since)
        self._floor = max(self._floor, since)
        async for event in self._history(since, None, self.types | FOLLOW_CONTROL_TYPES):
            await self._follow_item(event)
        self._floor = max(self._floor, head)

    async def _follow_item(self, item: Outgoing) -> None:
        """The next message in seq order: sent if the rule says so; after the followed run's
        terminal event, the next run's history up to it."""
        assert self._follow is not None
        if item.seq is None:  # the server's own (history_gap)
            await self._send(item)
            return
        verdict = self._follow.judge(item.type, item.run_id)
        self._floor = max(self._floor, item.seq)
        if verdict is not Verdict.SKIP and item.type in self.types:
            await self._send(item)
        if verdict is Verdict.END:
            run_id = self._follow.enter(await self.hub.running_runs(item.seq))
            if run_id is not None:
                await self._replay_run(run_id, item.seq)

    async def _replay_run(self, run_id: str, until: int) -> None:
        """The followed run's events of the client's types up to seq ``until``, from its start
        (they go out whatever the floor: the client skipped them when they were live)."""
        async for event in self._history(0, run_id, self.types, until):
            await self._send(event)

    async def _send_gap(self, since: int, oldest: int, message: str, run_id: str | None = None) -> None:
        gap = HistoryGap(
            seq=None,
            requested_since=since,
            oldest_available=oldest,
            message=message,
            run_id=run_id,
            ts=time.time(),
        )
        await self._send(encode_control(gap))
