"""Pure per-run bookkeeping: each producer's numbered order restored, a retried fold's repeats recognised.

Ray may reorder the calls one caller makes to an async actor, so every producer numbers its
events ``pseq = 0, 1, 2, ...`` per ``(run_id, producer)``. ``RunOrdering`` releases them in that
order: early arrivals wait in a bounded buffer, duplicates are dropped, and a closed (dead)
producer's stragglers are refused. ``RetryFilter`` recognises what a retried fold emits again
(``epoch_metrics`` and ``prediction_delta`` per fold and epoch, ``fold_complete`` per fold,
``batch_progress`` per fold, epoch and batch), so a retry never looks like new epochs.

No I/O, no clock, no lock: the EventHub calls these under its own lock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel

from orchestrator.messages import BatchProgress, EpochMetrics, FoldComplete, PredictionDelta

__all__ = ["Accepted", "Refusal", "RetryFilter", "RetryKey", "RunOrdering", "retry_key"]

T = TypeVar("T")
RetryKey = tuple[object, ...]


class Refusal(enum.Enum):
    """Why an arrival was not taken into its producer's order."""

    STALE = "stale"  # its pseq was released, buffered or given up already
    CLOSED = "closed"  # its producer was closed (declared dead)


@dataclass(frozen=True)
class Accepted(Generic[T]):
    """What one arrival did: the items it made ready (in order), or why it was refused.

    ``skipped`` is ``(first missing pseq, pseq resumed from)`` when the buffer overflowed and
    the order gave up waiting for the missing ones.
    """

    ready: list[T]
    refused: Refusal | None = None
    skipped: tuple[int, int] | None = None


@dataclass
class _ProducerOrder(Generic[T]):
    """Where one producer's numbered stream stands: the next pseq due and the early arrivals."""

    next_pseq: int = 0
    pending: dict[int, T] = field(default_factory=dict)
    closed: bool = False


class RunOrdering(Generic[T]):
    """The producers of one run, each released in its own pseq order.

    Each producer buffers at most ``max_pending`` (>= 1) early arrivals; past that it gives up on the
    missing ones and goes on from the oldest buffered one (a given-up pseq arriving later is stale).
    """

    def __init__(self, max_pending: int) -> None:
        self._max_pending = max_pending
        self._producers: dict[str, _ProducerOrder[T]] = {}

    def accept(self, producer: str, pseq: int, item: T) -> Accepted[T]:
        """Take item number ``pseq`` (an int >= 0, checked by the caller) of ``producer``;
        return what is ready to release now."""
        order = self._producers.setdefault(producer, _ProducerOrder())
        if order.closed:
            return Accepted([], Refusal.CLOSED)
        if pseq < order.next_pseq or pseq in order.pending:
            return Accepted([], Refusal.STALE)
        order.pending[pseq] = item
        skipped = None
        if pseq != order.next_pseq and len(order.pending) > self._max_pending:
            skipped = (order.next_pseq, min(order.pending))
            order.next_pseq = skipped[1]
        ready: list[T] = []
        while order.next_pseq in order.pending:
            ready.append(order.pending.pop(order.next_pseq))
            order.next_pseq += 1
        return Accepted(ready, skipped=skipped)

    def close_producer(self, producer: str) -> list[T]:
        """Stop waiting for ``producer``'s missing items: its buffered ones, in pseq order (the
        holes between them given up); anything it sends afterwards is refused as ``CLOSED``."""
        order = self._producers.setdefault(producer, _ProducerOrder())
        ready = [order.pending.pop(pseq) for pseq in sorted(order.pending)]
        order.closed = True
        return ready

    def passed(self, producer: str, pseq: int) -> bool:
        """Whether ``producer``'s order has gone past ``pseq``: released, given up or refused (a
        closed producer), never again waiting in the buffer."""
        order = self._producers.get(producer)
        return order is not None and (order.closed or pseq < order.next_pseq)

    def resume(self, producer: str, next_pseq: int) -> None:
        """Continue ``producer``'s order at ``next_pseq`` (a hub rebuilt from its store): what it
        sends below that again is a stale repeat."""
        order = self._producers.setdefault(producer, _ProducerOrder())
        order.next_pseq = max(order.next_pseq, next_pseq)
        for pseq in [p for p in order.pending if p < order.next_pseq]:
            del order.pending[pseq]

    def buffered(self) -> int:
        """How many early arrivals wait for a missing predecessor."""
        return sum(len(order.pending) for order in self._producers.values())


def retry_key(message: BaseModel) -> RetryKey | None:
    """The identity under which a retried fold's re-emitted event is a repeat, if it has one."""
    if isinstance(message, EpochMetrics):
        return (message.type, message.fold_id, message.epoch)
    if isinstance(message, PredictionDelta):
        return (message.type, message.fold_id, message.epoch, message.chunk, message.final)
    if isinstance(message, FoldComplete):
        return (message.type, message.fold_id)
    if isinstance(message, BatchProgress):
        return (message.type, message.fold_id, message.epoch, message.batch)
    return None


class RetryFilter:
    """The retry keys one run has released: an event with a released key is a retry's repeat."""

    def __init__(self) -> None:
        self._released: set[RetryKey] = set()

    def is_repeat(self, message: BaseModel) -> bool:
        key = retry_key(message)
        return key is not None and key in self._released

    def remember(self, message: BaseModel) -> None:
        """Record a released message (only released ones: a dropped one may still come again)."""
        key = retry_key(message)
        if key is not None:
            self._released.add(key)
