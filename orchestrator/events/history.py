"""The events a hub holds for replay: the most recent ``max_events`` stamped events, read after a cursor.

The oldest events leave first, so the history is always one contiguous range of ``seq`` and a
lost stretch can only be at its start: a reader whose cursor falls before it is told the gap.
Pure (no lock, no I/O): the EventHub calls it under its lock.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator

from orchestrator.events.record import EventRecord

__all__ = ["History"]


class History:
    """Released records in seq order, at most ``max_events``."""

    def __init__(self, max_events: int, last_seq: int = 0) -> None:
        """``last_seq``: the seq the events before this history's first had (a store's last)."""
        if not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be an int >= 1, got max_events={max_events!r}")
        self._held: deque[EventRecord] = deque(maxlen=max_events)
        self.last_seq = last_seq  # of the last event appended, whether still held or not
        # the events up to it were never held here: a run's first held seq does not prove that
        # none of its events came before (a run the store had, marked interrupted by a new hub)
        self.start_seq = last_seq

    def __len__(self) -> int:
        return len(self._held)

    @property
    def oldest_seq(self) -> int | None:
        return self._held[0].seq if self._held else None

    def append(self, record: EventRecord) -> None:
        """Hold ``record``, whose ``seq`` must be ``last_seq + 1``; the oldest may leave."""
        if record.seq != self.last_seq + 1:
            raise ValueError(f"seq must be {self.last_seq + 1}, got seq={record.seq!r}")
        self._held.append(record)
        self.last_seq = record.seq

    def collect(
        self,
        since_seq: int,
        run_id: str | None = None,
        types: frozenset[str] | None = None,
        limit: int | None = None,
        *,
        run_first_seq: int | None = None,
    ) -> tuple[list[EventRecord], int, int | None]:
        """(held events after ``since_seq``, the cursor to resume from, the gap or None).

        Filtered by ``run_id`` and ``types``, at most ``limit``. The gap is the oldest held seq
        (``last_seq + 1`` when none is) when events right after ``since_seq`` are not held; with a ``run_id`` whose first
        event (``run_first_seq``) is still held, nothing of that run was lost and there is none
        (and the scan starts there: a run's replay does not walk the whole history).
        The cursor is ``last_seq``, or the last event's seq when ``limit`` cut the answer short.
        """
        if not isinstance(since_seq, int) or since_seq < 0:
            raise ValueError(f"since_seq must be an int >= 0, got since_seq={since_seq!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got limit={limit!r}")
        gap: int | None = None
        oldest: int = self._held[0].seq if self._held else self.last_seq + 1
        if since_seq + 1 < oldest:
            gap = oldest
            if run_id is not None and run_first_seq is not None and run_first_seq >= oldest:
                gap = None
        events: list[EventRecord] = []
        start = since_seq + 1
        if run_id is not None and run_first_seq is not None:
            start = max(start, run_first_seq)  # nothing of the run comes before its first event
        for event in self.iter_from(start):
            if run_id is not None and event.run_id != run_id:
                continue
            if types is not None and event.type not in types:
                continue
            events.append(event)
            if limit is not None and len(events) >= limit:
                return events, event.seq, gap
        return events, max(self.last_seq, since_seq), gap

    def iter_from(self, seq: int) -> Iterator[EventRecord]:
        """Held events with seq >= ``seq``, oldest first, walking in from the nearer end."""
        held = self._held
        if not held:
            return iter(())
        index = max(seq - held[0].seq, 0)  # one contiguous range of seq
        if index >= len(held):
            return iter(())
        if index <= len(held) - index:
            return itertools.islice(held, index, None)
        tail = list(itertools.islice(reversed(held), len(held) - index))
        tail.reverse()
        return iter(tail)

    def of_run(self, run_id: str, first_seq: int = 0) -> Iterator[EventRecord]:
        """The held events of one run, scanning from its ``first_seq`` (default: everything)."""
        return (e for e in self.iter_from(first_seq) if e.run_id == run_id)
