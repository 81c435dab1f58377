"""The API's stream: each hub event encoded once as a JSON text frame and offered to every WebSocket client.

``EventPump`` is an ``EventStream`` (so the hub is still polled in one place) whose one
subscription fans out to the connected clients and passes on the union of their ``?types=``.
``offer`` never awaits (a client queues the frame or closes itself), so a slow client never
delays the stream, the hub or training. ``encode_control`` makes the server's own messages.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from orchestrator.events.stream import Batch, Event, EventStream, HubClient
from orchestrator.messages import ENVELOPE_FIELDS, HistoryGap, to_wire

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


def encode_control(message: BaseModel) -> Outgoing:
    """A server-made message (``history_gap``): no ``seq``, envelope fields left out when unset."""
    data = {k: v for k, v in to_wire(message).items() if v is not None or k not in ENVELOPE_FIELDS}
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


class EventPump(EventStream):
    """The API's follower of the hub: tells ``observe`` about each event (REST progress), then
    offers it, encoded once, to every WebSocket subscriber; ``offer`` never awaits (a subscriber
    queues it or closes itself), so a slow client never delays the stream, the hub or training."""

    def __init__(
        self,
        hub: HubClient,
        *,
        observe: Callable[[Event], None] | None = None,
        poll_timeout_s: float = 10.0,
        batch_limit: int = 1000,
        retry_delay_s: float = 1.0,
    ) -> None:
        super().__init__(
            hub, poll_timeout_s=poll_timeout_s, batch_limit=batch_limit, retry_delay_s=retry_delay_s
        )
        self._observe = observe
        self._clients: set[Subscriber] = set()
        self._fanout = self.subscribe(self._fan_out)

    def add(self, subscriber: Subscriber) -> None:
        self._clients.add(subscriber)
        self.retype(self._fanout, self._fanout.types | subscriber.types)

    def remove(self, subscriber: Subscriber) -> None:
        self._clients.discard(subscriber)
        self.retype(self._fanout, frozenset().union(*(c.types for c in self._clients)))

    def _fan_out(self, batch: Batch) -> None:
        if batch.gap is not None:
            self._announce_gap(batch.since, batch.gap)
        for event in batch.events:
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
            for client in list(self._clients):
                client.offer(item)

    def _announce_gap(self, since: int, oldest: int) -> None:
        """The stream itself fell behind the hub's history (it holds the last ``max_events``)."""
        log.warning("the pump lost events after seq %d; the hub holds from %d", since, oldest)
        item = encode_control(
            HistoryGap(
                seq=None,
                requested_since=since,
                oldest_available=oldest,
                message=f"the server fell behind: events {since + 1}..{oldest - 1} are lost",
                ts=time.time(),
            )
        )
        for client in list(self._clients):
            client.offer(item)
