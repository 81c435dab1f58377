"""One task polls the EventHub and fans every event out to the WebSocket clients (DESIGN 3, 4).

The pump is the hub's only long-poller in the API process. Each event is encoded to JSON text
once and offered to every subscriber; ``offer`` never awaits (a subscriber puts it in its own
bounded queue or closes itself), so a slow client never delays the pump, the hub or training.
The pump also tells the run registry about each event (``observe``) for REST progress, and
tells the hub which types its clients take (``interest``), so folds skip live detail that no
client asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from api.hub_client import Event, HubClient
from orchestrator.hub import INTEREST_GRACE_S
from orchestrator.messages import HistoryGap, to_wire

__all__ = ["Outgoing", "Subscriber", "EventPump", "encode_event", "encode_control"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message as it goes on the wire, encoded once for all clients."""

    seq: int | None
    type: str
    run_id: str | None
    text: str


def encode_event(event: Event) -> Outgoing:
    """A hub event (already JSON-safe: the hub sanitized it) as a text frame."""
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Outgoing(event.get("seq"), str(event["type"]), event.get("run_id"), text)


def encode_control(message: Any) -> Outgoing:
    """A server-made message (``history_gap``): no ``seq``, envelope fields left out when unset."""
    data = {k: v for k, v in to_wire(message).items() if v is not None or k not in ("run_id", "seq", "ts")}
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Outgoing(None, str(data["type"]), data.get("run_id"), text)


class Subscriber(Protocol):
    def offer(self, item: Outgoing) -> None:
        """Take one message for sending; must not block or await."""
        ...

    @property
    def types(self) -> frozenset[str]:
        """The message types this subscriber passes on (its client's ``?types=``)."""
        ...


class EventPump:
    """Long-polls the hub from ``cursor`` on and offers each event to every subscriber."""

    def __init__(
        self,
        hub: HubClient,
        *,
        observe: Callable[[Event], None] | None = None,
        poll_timeout_s: float = 10.0,
        batch_limit: int = 1000,
        retry_delay_s: float = 1.0,
    ) -> None:
        if poll_timeout_s <= 0:
            raise ValueError(f"poll_timeout_s must be > 0, got poll_timeout_s={poll_timeout_s}")
        if batch_limit < 1:
            raise ValueError(f"batch_limit must be >= 1, got batch_limit={batch_limit}")
        self.hub = hub
        self._observe = observe
        self.poll_timeout_s = poll_timeout_s
        self.batch_limit = batch_limit
        self.retry_delay_s = retry_delay_s
        self.cursor = 0
        self.healthy = False
        self.last_error: str | None = None
        self.events_dispatched = 0
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    # ---- subscribers ----------------------------------------------------------------------

    def add(self, subscriber: Subscriber) -> None:
        new = subscriber.types - self.interest
        self._subscribers.add(subscriber)
        if new and self._task is not None:
            # now, not at the next poll: a run in progress starts producing them at once
            task = asyncio.create_task(
                self.hub.note_interest(new, self.poll_timeout_s + INTEREST_GRACE_S)
            )
            self._pending.add(task)
            task.add_done_callback(self._interest_noted)

    def _interest_noted(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("telling the hub about a new client's types failed: %s", task.exception())

    @property
    def interest(self) -> frozenset[str]:
        """Every type some subscriber passes on: producers skip optional work for the others."""
        return frozenset().union(*(s.types for s in self._subscribers))

    def remove(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        return frozenset(self._subscribers)

    # ---- running --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start polling after the hub's current last event (a fresh server has no clients yet)."""
        if self._task is not None:
            raise RuntimeError("the pump is already running")
        try:
            self.cursor = await self.hub.last_seq()
            self.healthy = True
        except Exception as err:  # the hub may come up later: the loop keeps trying
            self._unhealthy(err)
        self._task = asyncio.create_task(self._run(), name="event-pump")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            try:
                reply = await self.hub.poll(
                    self.cursor, self.poll_timeout_s, limit=self.batch_limit, interest=self.interest
                )
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._unhealthy(err)
                await asyncio.sleep(self.retry_delay_s)
                continue
            if not self.healthy:
                log.info("event hub reachable again; resuming after seq %d", self.cursor)
            self.healthy = True
            self.last_error = None
            if reply.get("gap") is not None:
                self._announce_gap(int(reply["gap"]))
            self.dispatch(reply["events"])
            self.cursor = max(self.cursor, int(reply["last_seq"]))

    def dispatch(self, events: list[Event]) -> None:
        """Observe and fan out events (in seq order); never awaits."""
        for event in events:
            if self._observe is not None:
                try:
                    self._observe(event)
                except Exception:  # progress bookkeeping must not stop the stream
                    log.exception("observing event seq=%s failed", event.get("seq"))
            try:
                item = encode_event(event)
            except (TypeError, ValueError, KeyError):
                log.exception("dropping an event that is not JSON: seq=%s", event.get("seq"))
                continue
            self.events_dispatched += 1
            for subscriber in list(self._subscribers):
                subscriber.offer(item)

    def _announce_gap(self, oldest: int) -> None:
        """The pump itself fell behind the hub's history (it holds the last ``max_events``)."""
        log.warning("the pump lost events after seq %d; the hub holds from %d", self.cursor, oldest)
        item = encode_control(
            HistoryGap(
                seq=None,
                requested_since=self.cursor,
                oldest_available=oldest,
                message=f"the server fell behind: events {self.cursor + 1}..{oldest - 1} are lost",
                ts=time.time(),
            )
        )
        for subscriber in list(self._subscribers):
            subscriber.offer(item)

    def _unhealthy(self, err: BaseException) -> None:
        text = f"{type(err).__name__}: {err}"
        if self.healthy or self.last_error is None:
            log.error("cannot poll the event hub (%s); retrying every %.1f s", text, self.retry_delay_s)
        self.healthy = False
        self.last_error = text
