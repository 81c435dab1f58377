"""Which message types some consumer delivers now: declarations that expire when nobody renews them.

A consumer of the hub (the API's stream for its WebSocket clients, the CLI for an events file)
declares the types it passes on; producers ask ``wanted()`` and skip optional work that nobody
would receive (per-epoch ``prediction_delta``, ``batch_progress``). Pure: the clock is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

__all__ = ["Demand", "INTEREST_GRACE_S"]

# A poller's interest outlives its poll by this much, so the short gap between one poll and the
# next never reads as "nobody wants it" (which would restart prediction deltas from scratch).
INTEREST_GRACE_S = 5.0


class Demand:
    """Message types declared wanted, each until a deadline on ``clock`` (the longest hold wins).

    Not thread-safe: the EventHub calls it under its lock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def note(self, types: Iterable[str], hold_s: float) -> None:
        """Someone delivers these types for the next ``hold_s`` seconds."""
        until = self._clock() + max(hold_s, 0.0)
        for kind in types:
            if self._until.get(kind, 0.0) < until:
                self._until[kind] = until

    def note_poll(self, types: Iterable[str], timeout: float) -> None:
        """A long-poll of up to ``timeout`` seconds by a consumer of ``types``: the interest holds
        until the poller can be expected back (``timeout`` plus ``INTEREST_GRACE_S``)."""
        self.note(types, float(timeout) + INTEREST_GRACE_S)

    def wanted(self) -> frozenset[str]:
        """The types some consumer delivers now; expired declarations are forgotten."""
        now = self._clock()
        for kind in [kind for kind, until in self._until.items() if until < now]:
            del self._until[kind]
        return frozenset(self._until)
