"""The hub's journal in the job store: released events and new runs, written in batches by one thread.

The hub hands each released record (its text is the one sent on ``/ws``) and the producer
position it came from to ``record`` under its own lock: a list append, nothing more. A writer
thread takes everything queued every ``flush_interval_s`` (or sooner once ``max_batch`` wait) and
writes it in one transaction, so the store never costs a transaction per event and a slow
database never slows publishing. A failed write is retried (the batch stays queued, in order);
the thread also renews the hub's lease. ``durable`` lets a publish call wait until its events
are written (the hub acknowledges a producer only then, so a hub killed before the write is
retried by the producer's call, not lost). ``health`` is the store as the writer sees it
(``store.health``): a failure and the recovery are each logged once, a SQLite file removed while
open stops the writer. ``backfill`` serves the replay the hub no longer holds from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from orchestrator.events.record import EventRecord
from orchestrator.store import JobStore, Owner
from orchestrator.store.health import FileIdentity, HealthSnapshot, StoreHealth, describe_failure, sqlite_file
from orchestrator.store.lease import HEARTBEAT_S, Holder

__all__ = ["Origin", "StoreRecorder", "open_recorder"]

log = logging.getLogger(__name__)

_RETRY_MAX_S = 5.0
# (producer, pseq) a released event came as; None for the hub's own (notifications)
Origin = tuple[str, int] | None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
        self._events: list[tuple[EventRecord, Origin]] = []
        self._runs: list[dict[str, Any]] = []
        self._admitted: list[tuple[str, str]] = []  # (run_id, admitted config) the queue let start
        self._queued = 0  # events ever queued
        self._written = 0  # events ever written
        self._counts = {"batches": 0, "write_errors": 0, "lease_lost": 0}
        self._closing = False
        self._urgent = False  # flush() waits for what is queued: write it now
        self._thread: threading.Thread | None = None
        self._health = StoreHealth(store.where)
        path = sqlite_file(store.url)
        self._file = FileIdentity(path) if path is not None else None
        self._durable: list[tuple[int, asyncio.Future[None]]] = []  # (events written, waiter)

    def start(self) -> Holder | None:
        """Take the store's lease (``LeaseHeldError`` if a live writer holds it), start writing;
        returns the previous holder when it was gone without giving the lease up."""
        previous = self.store.acquire_lease(self.owner)
        self._thread = threading.Thread(target=self._run, name="store-recorder", daemon=True)
        self._thread.start()
        return previous

    # ---- called by the hub under its lock -------------------------------------------------

    def record(self, record: EventRecord, origin: Origin = None) -> None:
        with self._cond:
            self._events.append((record, origin))
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

    @property
    def queued(self) -> int:
        """Events ever queued: a publish's events are written once ``written`` reaches it."""
        with self._cond:
            return self._queued

    async def durable(self, target: int, timeout: float) -> bool:
        """Wait until ``target`` events are written; True if they are. Returns at once while the
        store is failing (a producer is not held up by a database that does not answer: the hub
        keeps the events in memory and writes them once it does)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._written >= target or not self._health.ok:
                return self._written >= target
            self._durable.append((target, waiter))  # the next batch, within flush_interval_s
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(waiter, timeout)
        with self._cond:
            return self._written >= target

    # ---- reads ----------------------------------------------------------------------------

    def backfill(
        self,
        since: int,
        gap: int,
        run_id: str | None,
        types: frozenset[str] | None,
        limit: int | None,
        held: list[EventRecord],
        cursor: int,
    ) -> tuple[list[EventRecord], int, int | None]:
        """``History.collect``'s answer completed from the store: the events after ``since`` and
        before the oldest held one (``gap``), then the held ones, at most ``limit``; the gap stays
        only when the store cannot be read."""
        try:
            older = self.store.events_since(since, run_id, types, limit, before=gap)
        except Exception as err:
            log.error("cannot read the job store %s for replay: %s", self.store.where, err)
            return held, cursor, gap
        if limit is not None and len(older) >= limit:
            return older, older[-1].seq, None
        room = None if limit is None else limit - len(older)
        combined = older + held[:room]
        if room is not None and len(held) > room:
            cursor = combined[-1].seq
        return combined, cursor, None

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                **self._counts,
                "queued": self._queued,
                "written": self._written,
                "pending": len(self._events),
            }

    def health(self) -> HealthSnapshot:
        """The store as this writer sees it (``GET /``'s ``store``)."""
        with self._cond:
            return self._health.snapshot(len(self._events), self._written)

    # ---- the writer thread ----------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event queued before this call is written; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._queued
            self._urgent = True
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
        while True:
            with self._cond:
                # after a failure the retry waits its delay, closing or not (a full batch, or a
                # closing recorder, must not retry and log in a tight loop); else until a batch is
                # full, the interval is over or flush() waits
                failed = delay > self._interval
                ready = self._urgent or len(self._events) >= self._max_batch
                if failed or not (self._closing or ready):
                    self._cond.wait(delay)
                self._urgent = False
                idle = not (self._events or self._runs or self._admitted)
                if self._closing and (idle or not self._health.retrying):
                    return
                runs, batch, admitted = (
                    list(self._runs),
                    self._events[: self._max_batch],
                    list(self._admitted),
                )
            if runs or batch or admitted:
                delay = self._write(runs, batch, admitted, delay)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_S
                self._beat()

    def _write(
        self,
        runs: list[dict[str, Any]],
        batch: list[tuple[EventRecord, Origin]],
        admitted: list[tuple[str, str]],
        delay: float,
    ) -> float:
        """One transaction; the delay before the next try."""
        vanished = self._file.check() if self._file is not None else None
        if vanished is not None:  # never write into a deleted file, nor start a new one
            self._failed(vanished, len(batch), retrying=False)
            return _RETRY_MAX_S
        try:
            self.store.append(runs, [record for record, _ in batch], admitted, _positions(batch))
        except Exception as err:
            self._failed(describe_failure(err), len(batch))
            return min(max(delay * 2, 0.2), _RETRY_MAX_S)
        with self._cond:
            del self._runs[: len(runs)]
            del self._admitted[: len(admitted)]
            del self._events[: len(batch)]
            self._written += len(batch)
            self._counts["batches"] += 1
            failing_for = self._health.recovered()
            self._wake_durable()
            self._cond.notify_all()
        if failing_for is not None:
            log.warning(
                "the job store %s is writable again after %.1f s of errors; the events kept in "
                "memory meanwhile are written",
                self.store.where,
                failing_for,
            )
        return self._interval

    def _failed(self, error: str, events: int, *, retrying: bool = True) -> None:
        with self._cond:
            self._counts["write_errors"] += 1
            news = self._health.failed(error, retrying=retrying)
            self._wake_durable(every=True)
        if news:
            then = "retrying" if retrying else "no longer writing"
            log.error(
                "cannot write %d events to the job store %s (%s; they stay in memory): %s",
                events,
                self.store.where,
                then,
                error,
            )

    def _wake_durable(self, *, every: bool = False) -> None:
        """Resolve the ``durable`` waiters whose events are written (all of them, ``every``);
        called under ``_cond``."""
        waiting, self._durable = self._durable, []
        for target, waiter in waiting:
            if every or self._written >= target:
                with contextlib.suppress(RuntimeError):  # its loop closed
                    waiter.get_loop().call_soon_threadsafe(_resolve, waiter)
            else:
                self._durable.append((target, waiter))

    def _beat(self) -> None:
        if not self._health.retrying:
            return  # the file is gone: nothing to renew
        try:
            held = self.store.heartbeat(self.owner)
        except Exception as err:
            if self._health.ok:
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


def _positions(batch: Sequence[tuple[EventRecord, Origin]]) -> dict[tuple[str, str], int]:
    """Each producer's next pseq after this batch, by (run_id, producer)."""
    positions: dict[tuple[str, str], int] = {}
    for record, origin in batch:
        if origin is not None:
            key = (record.run_id, origin[0])
            positions[key] = max(positions.get(key, 0), origin[1] + 1)
    return positions


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
