"""The API's stream: each hub record's one text offered, as its frame, to every WebSocket client.

``EventPump`` is an ``EventStream`` (so the hub is still polled in one place) whose one
subscription fans out to the connected clients and passes on the union of their ``?types=``.
A hub record is its own frame: its ``text`` is what ``events.jsonl`` and the store hold, sent as
is, never encoded again. ``offer`` never awaits (a client queues the frame or closes itself), so
a slow client never delays the stream, the hub or training. ``encode_control`` makes the server's
own messages (``history_gap``), which have no ``seq``. When the hub restarted (``Batch.restart``),
each client is told (``hub_restarted``: served on, or closed with 4012 and where to resume);
the job store's health, as each answer of the hub reports it, goes to the log once per change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from orchestrator.events.record import EventRecord
from orchestrator.events.stream import Batch, EventStream, HubClient
from orchestrator.messages import ENVELOPE_FIELDS, HistoryGap
from orchestrator.store.health import HealthSnapshot

__all__ = ["Outgoing", "ControlFrame", "Subscriber", "EventPump", "encode_control"]

log = logging.getLogger(__name__)


class Outgoing(Protocol):
    """One message as it goes on the wire: a hub ``EventRecord``, or a ``ControlFrame``."""

    @property
    def seq(self) -> int | None: ...

    @property
    def type(self) -> str: ...

    @property
    def run_id(self) -> str | None: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """A message the server makes itself (``history_gap``): no ``seq``."""

    type: str
    run_id: str | None
    text: str
    seq: None = None


def encode_control(message: HistoryGap) -> ControlFrame:
    """A server-made message as a frame; its envelope fields are left out where unset."""
    unset = {name for name in ENVELOPE_FIELDS if getattr(message, name) is None}
    return ControlFrame(message.type, message.run_id, message.model_dump_json(exclude=unset))


class Subscriber(Protocol):
    def offer(self, item: Outgoing) -> None:
        """Take one message for sending; must not block or await."""
        ...

    @property
    def types(self) -> frozenset[str]:
        """The message types this subscriber passes on (its client's ``?types=``)."""
        ...

    def hub_restarted(self, restored_at: int) -> None:
        """The hub restarted and continues from ``restored_at``: what was offered after it may
        have been released again under other seqs."""
        ...


class EventPump(EventStream):
    """The API's follower of the hub: tells ``observe`` about each record (REST progress), then
    offers it to every WebSocket subscriber; ``offer`` never awaits (a subscriber queues it or
    closes itself), so a slow client never delays the stream, the hub or training."""

    def __init__(
        self,
        hub: HubClient,
        *,
        observe: Callable[[EventRecord], None] | None = None,
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
        if batch.restart is not None:
            for client in list(self._clients):
                client.hub_restarted(batch.restart)
            return
        if batch.gap is not None:
            self._announce_gap(batch.since, batch.gap)
        for record in batch.events:
            if self._observe is not None:
                try:
                    self._observe(record)
                except Exception:  # progress bookkeeping must not stop the stream
                    log.exception("observing event seq=%s failed", record.seq)
            for client in list(self._clients):
                client.offer(record)

    def store_reported(self, was: HealthSnapshot | None) -> None:
        """The serve log says when the job store starts failing and when it recovers, once each."""
        now = self.store_health
        if now is None or (was is not None and (was["ok"], was["retrying"]) == (now["ok"], now["retrying"])):
            return
        if not now["ok"]:
            since = time.strftime("%H:%M:%S", time.localtime(now["since"] or time.time()))
            then = "events are kept in memory and retried" if now["retrying"] else "nothing more is recorded"
            log.error(
                "the job store %s is failing since %s: %s (%s)", now["where"], since, now["error"], then
            )
        elif was is not None:
            log.warning("the job store %s is healthy again (%d events written)", now["where"], now["written"])

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
