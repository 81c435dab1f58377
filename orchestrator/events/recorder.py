"""The hub's journal in the job store: released events and new runs, written in batches by one thread.

The hub hands each released event (and its JSON, the text sent on ``/ws``) to ``record`` under
its own lock: a list append, nothing more. A writer thread takes everything queued every
``flush_interval_s`` (or sooner once ``max_batch`` wait) and writes it in one transaction, so the
store never costs a transaction per event and a slow database never slows publishing. A failed
write is retried (the batch stays queued, in order); the thread also renews the hub's lease.
``backfill`` serves the replay the hub no longer holds in memory from the store.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from orchestrator.store import JobStore, Owner
from orchestrator.store.lease import HEARTBEAT_S, Holder

__all__ = ["StoreRecorder", "open_recorder"]

log = logging.getLogger(__name__)

Event = dict[str, Any]
_RETRY_MAX_S = 5.0


class StoreRecorder:
    """Queues a hub's released events and new runs and writes them to ``store`` as ``owner``."""

    def __init__(
        self, store: JobStore, owner: str, *, flush_interval_s: float = 0.05, max_batch: int = 5_000
    ) -> None:
        self.store = store
        self.owner = owner
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._events: list[tuple[Event, str]] = []
        self._runs: list[dict[str, Any]] = []
        self._admitted: list[tuple[str, str]] = []  # (run_id, admitted config) the queue let start
        self._queued = 0  # events ever queued
        self._written = 0  # events ever written
        self._counts = {"batches": 0, "write_errors": 0, "lease_lost": 0}
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> Holder | None:
        """Take the store's lease (``LeaseHeldError`` if a live writer holds it), start writing;
        returns the previous holder when it was gone without giving the lease up."""
        previous = self.store.acquire_lease(self.owner)
        self._thread = threading.Thread(target=self._run, name="store-recorder", daemon=True)
        self._thread.start()
        return previous

    # ---- called by the hub under its lock -------------------------------------------------

    def record(self, event: Event, line: str) -> None:
        with self._cond:
            self._events.append((event, line))
            self._queued += 1
            if len(self._events) >= self._max_batch:
                self._cond.notify()

    def record_run(self, row: dict[str, Any]) -> None:
        with self._cond:
            self._runs.append({**row, "owner": self.owner})
            self._cond.notify()

    def admit_run(self, run_id: str, config_json: str) -> None:
        with self._cond:
            self._admitted.append((run_id, config_json))
            self._cond.notify()

    # ---- reads ----------------------------------------------------------------------------

    def backfill(
        self,
        since: int,
        gap: int,
        run_id: str | None,
        types: frozenset[str] | None,
        limit: int | None,
        held: list[Event],
        cursor: int,
    ) -> tuple[list[Event], int, int | None]:
        """``History.collect``'s answer completed from the store: the events after ``since`` and
        before the oldest held one (``gap``), then the held ones, at most ``limit``; the gap stays
        only when the store cannot be read."""
        try:
            older = self.store.events_since(since, run_id, types, limit, before=gap)
        except Exception as err:
            log.error("cannot read the job store %s for replay: %s", self.store.where, err)
            return held, cursor, gap
        if limit is not None and len(older) >= limit:
            return older, int(older[-1]["seq"]), None
        room = None if limit is None else limit - len(older)
        combined = older + held[:room]
        if room is not None and len(held) > room:
            cursor = int(combined[-1]["seq"])
        return combined, cursor, None

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                **self._counts,
                "queued": self._queued,
                "written": self._written,
                "pending": len(self._events),
            }

    # ---- the writer thread ----------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event queued before this call is written; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._queued
            self._cond.notify()
            while self._written < target or self._runs or self._admitted:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the thread, give the lease up."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if flushed:
            try:
                self.store.release_lease(self.owner)
            except Exception as err:
                log.warning("could not give the job store's lease up: %s", err)
        else:
            log.error(
                "%d events could not be written to the job store %s before closing it",
                self.stats()["pending"],
                self.store.where,
            )
        self.store.close()

    def _run(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_S
        delay = self._interval
        failing: str | None = None  # why the writes of the current streak of failures fail
        while True:
            with self._cond:
                # after a failure the retry waits its delay, closing or not (a full disk made
                # a closing recorder retry, and log, in a tight loop)
                if failing is not None or (not self._closing and len(self._events) < self._max_batch):
                    self._cond.wait(delay)
                if self._closing and not self._events and not self._runs and not self._admitted:
                    return
                runs, batch, admitted = (
                    list(self._runs),
                    self._events[: self._max_batch],
                    list(self._admitted),
                )
            if runs or batch or admitted:
                try:
                    self.store.append(runs, batch, admitted)
                except Exception as err:
                    with self._cond:
                        self._counts["write_errors"] += 1
                    reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
                    if failing is None:  # one line per streak, not one per retry
                        log.error(
                            "cannot write %d events to the job store %s (retrying every %g s at "
                            "most until it answers): %s",
                            len(batch),
                            self.store.where,
                            _RETRY_MAX_S,
                            reason,
                        )
                    failing = reason
                    delay = min(max(delay * 2, 0.2), _RETRY_MAX_S)
                    continue
                if failing is not None:
                    log.warning("the job store %s is written again", self.store.where)
                    failing = None
                delay = self._interval
                with self._cond:
                    del self._runs[: len(runs)]
                    del self._admitted[: len(admitted)]
                    del self._events[: len(batch)]
                    self._written += len(batch)
                    self._counts["batches"] += 1
                    self._cond.notify_all()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_S
                self._beat()

    def _beat(self) -> None:
        try:
            held = self.store.heartbeat(self.owner)
        except Exception as err:
            log.warning("cannot renew the job store's lease: %s", err)
            return
        if not held:
            with self._cond:
                self._counts["lease_lost"] += 1
            log.error(
                "the job store's lease was taken by another writer; this hub keeps writing "
                "its events, but two writers now share %s",
                self.store.where,
            )


def open_recorder(store_url: str, owner: str | None = None) -> StoreRecorder:
    """A started recorder on the store at ``store_url`` holding its lease (``StoreError`` /
    ``LeaseHeldError`` otherwise)."""
    store = JobStore.open(store_url)
    recorder = StoreRecorder(store, owner or str(Owner.this_process()))
    try:
        recorder.start()
    except BaseException:
        store.close()
        raise
    return recorder
