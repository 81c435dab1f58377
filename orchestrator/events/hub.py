"""The EventHub: every event of every run passes through it to be ordered, stamped, held and served.

``EventHub`` is a plain class, unit-tested without Ray (``events.actor`` runs it as the named Ray
actor, DESIGN 3). Each published event is put in its producer's order (``ordering``), validated
against the wire contract, a retried fold's repeats and a run's second end dropped; each released
event becomes one ``EventRecord`` (``record``): ``run_id``, ``seq`` (1, 2, 3, ... without holes;
with a job store, continuing from its last), ``ts`` and its one JSON text, the producer's text with
the envelope put in front. That text goes to the run's ``events.jsonl`` (``journal``), the store
(``recorder``), pollers and every ``/ws`` frame; the notifications the event gives rise to follow
it (``milestones``). The hub holds the last ``max_events`` records (``history``), older ones are
read back from the store; each run's start and end seqs say which runs ran at a seq (``tracked``).
Publishing never waits for a consumer or the store; pollers are woken, never awaited.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypedDict

from orchestrator.events.demand import Demand
from orchestrator.events.history import History
from orchestrator.events.ordering import Refusal
from orchestrator.events.record import EventRecord, InvalidEvent, Payload, read_payload, stamped
from orchestrator.events.tracked import TrackedRun, TrackedRuns, running_order
from orchestrator.events.waiters import Waiters
from orchestrator.messages import TERMINAL_TYPES

if TYPE_CHECKING:
    from orchestrator.events.recorder import Origin, StoreRecorder
    from orchestrator.store.health import HealthSnapshot

__all__ = ["EventHub", "HubIdentity", "PollReply"]

logger = logging.getLogger(__name__)

# stats(): what was published, released, dropped and why, I/O errors of events.jsonl, batched calls
_COUNTERS = (
    *("published", "released", "dropped_stale", "dropped_retry", "dropped_invalid", "dropped_closed"),
    *("dropped_forgotten", "dropped_after_end", "order_gaps_skipped", "io_errors", "batches"),
)


class HubIdentity(TypedDict):
    """Which hub answered: ``id`` is new at every start (a restart by Ray included), ``pid`` its
    process, ``restored_at`` the store's last seq when it started (what it continued from)."""

    id: str
    pid: int
    restored_at: int


class PollReply(TypedDict):
    """A long poll's answer: the events, the cursor to poll from next, the gap if any, the hub
    that answered and its job store's health (None without a store)."""

    events: list[EventRecord]
    last_seq: int
    gap: int | None
    hub: HubIdentity
    store: HealthSnapshot | None


class EventHub:
    """Orders, de-duplicates, stamps, records and serves the events of all runs.

    Thread-safe (one lock around the state). ``poll`` may be awaited from any event loop; a
    publish from another thread wakes pollers through their loop's ``call_soon_threadsafe``.
    Returned records are the held ones (immutable).
    """

    def __init__(
        self,
        *,
        max_events: int = 100_000,
        max_runs: int = 20,
        max_pending: int = 10_000,
        recorder: StoreRecorder | None = None,
    ) -> None:
        for name, value in (("max_runs", max_runs), ("max_pending", max_pending)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
        self._lock = threading.Lock()
        self._recorder = recorder  # the job store's journal: seq continues from its last
        self._history = History(max_events, 0 if recorder is None else recorder.store.last_seq())
        self._runs = TrackedRuns(max_runs, max_pending, self._io_error)
        self.identity: HubIdentity = {
            "id": uuid.uuid4().hex[:12],
            "pid": os.getpid(),
            "restored_at": self._history.start_seq,
        }
        self._waiters = Waiters()
        self._demand = Demand()
        self._counts = dict.fromkeys(_COUNTERS, 0)

    # ---- runs -----------------------------------------------------------------------------

    def register_run(self, run_id: str, run_dir: str | None) -> None:
        """Start recording ``run_id``; with a ``run_dir`` its events go to ``run_dir/events.jsonl``.

        Registering before the run's first publish is the normal order. Events released before the
        registration arrived (Ray may reorder the calls) are written to the file at registration.
        Registering a run again with the same folder does nothing; with another folder it raises.
        """
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id must be a non-empty string, got run_id={run_id!r}")
        with self._lock:
            run = self._runs.remember(run_id)
            if run.registered:
                if run.journal.run_dir != run_dir:
                    raise ValueError(
                        f"run {run_id!r} is already registered with "
                        f"run_dir={run.journal.run_dir!r}, got run_dir={run_dir!r}"
                    )
                return
            run.registered = True
            run.journal.run_dir = run_dir
            if run.journal.open():
                run.journal.write([record.text for record in self._held_events_of(run)])
                if run.ended:
                    run.journal.close()
                else:
                    run.journal.flush()

    def record_run(self, row: dict[str, Any]) -> None:
        """Add a run's row (``orchestrator.store.schema.runs`` columns) to the job store, if any."""
        if self._recorder is not None:
            with self._lock:
                self._recorder.record_run(row)

    def admit_run(self, run_id: str, config_json: str) -> None:
        """The job queue let a queued run start: its row in the job store becomes ``pending``
        with the config it was admitted with (its fold concurrency as admitted)."""
        if self._recorder is not None:
            with self._lock:
                self._recorder.admit_run(run_id, config_json)

    def running_runs(self, at: int | None = None) -> list[str]:
        """The runs running at seq ``at`` (default: now), oldest first (``tracked.running_order``);
        ended runs forgotten past ``max_runs`` are not counted."""
        with self._lock:
            return running_order(self._runs, self._history.last_seq if at is None else at)

    def close_producer(self, run_id: str, producer: str) -> None:
        """Stop waiting for a dead producer's missing events.

        Its buffered early events are released in pseq order (the holes between them are given
        up), and any event it still sends afterwards is dropped (counted as ``dropped_closed``),
        so a late straggler can never appear after events that followed it.
        """
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return
            released: list[EventRecord] = []
            for pseq, event in run.ordering.close_producer(producer):
                self._release(run, event, released, (producer, pseq))
            run.journal.flush()
            if released:
                self._waiters.wake_all()

    # ---- publishing -----------------------------------------------------------------------

    def publish(self, run_id: str, producer: str, pseq: int, event: Payload) -> list[EventRecord]:
        """Accept event number ``pseq`` of ``producer`` in ``run_id`` (its message's JSON text
        without the envelope, a message model or a dict; ``record.read_payload``); return the
        records it released: none when it came early (buffered), twice, as a retried fold's repeat
        or invalid (no message of the wire contract; it still takes its place in the order)."""
        if not isinstance(pseq, int) or isinstance(pseq, bool) or pseq < 0:
            raise ValueError(f"pseq must be an int >= 0, got pseq={pseq!r}")
        if not isinstance(run_id, str) or not isinstance(producer, str):
            raise ValueError(
                f"run_id and producer must be strings, got run_id={run_id!r}, producer={producer!r}"
            )
        with self._lock:
            released: list[EventRecord] = []
            run = self._accept(run_id, producer, pseq, event, released)
            if run is not None:
                run.journal.flush()
            if released:
                self._waiters.wake_all()
            return released

    def settled(self, run_id: str, producer: str, pseq: int) -> bool:
        """Whether event ``pseq`` of ``producer`` is past the hub's order (released, dropped, or
        given up), never again waiting for an earlier one: a publish call's events are then done."""
        with self._lock:
            run = self._runs.get(run_id)
            return run is None or run.ordering.passed(producer, pseq)

    def restore_run(
        self, run_id: str, run_dir: str | None, records: list[EventRecord], positions: dict[str, int]
    ) -> None:
        """A run of the hub's previous incarnation (Ray restarted it), rebuilt from its ``records``
        in the store, its producers continued at ``positions`` (``TrackedRuns.restore``)."""
        with self._lock:
            self._runs.restore(run_id, run_dir, records, positions)

    def note_interest(self, types: Iterable[str], hold_s: float) -> None:
        """Someone will deliver these message types for the next ``hold_s`` seconds."""
        with self._lock:
            self._demand.note(types, hold_s)

    def wanted(self) -> frozenset[str]:
        """The message types some consumer delivers now (see ``poll``'s ``interest``)."""
        with self._lock:
            return self._demand.wanted()

    # ---- reading --------------------------------------------------------------------------

    def last_seq(self) -> int:
        with self._lock:
            return self._history.last_seq

    def events_since(
        self,
        since_seq: int,
        run_id: str | None = None,
        types: frozenset[str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[EventRecord], int | None]:
        """Held events with ``seq > since_seq`` (optionally of one run / some types, at most
        ``limit``), oldest first, and the gap: the oldest held seq when events right after
        ``since_seq`` are no longer held (for ``run_id``: only if that run lost events), else None.
        """
        with self._lock:
            events, _, gap = self._collect(since_seq, run_id, types, limit)
            return events, gap

    def run_events(self, run_id: str) -> list[EventRecord]:
        """The held events of one run, oldest first."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                return list(self._held_events_of(run))
            return list(self._history.of_run(run_id))

    def whoami(self) -> HubIdentity:
        """This hub's identity (``PollReply.hub``)."""
        return self.identity

    def store_health(self) -> HealthSnapshot | None:
        """The job store's health as this hub's writer sees it (None without a store)."""
        return None if self._recorder is None else self._recorder.health()

    async def poll(
        self,
        since_seq: int,
        timeout: float,
        run_id: str | None = None,
        *,
        types: frozenset[str] | None = None,
        limit: int | None = None,
        interest: Iterable[str] = (),
    ) -> PollReply:
        """Long-poll: the events after ``since_seq`` (or a gap to report) at once if there are
        any, else the first released within ``timeout`` s (empty ``events`` if none). ``last_seq``
        is the cursor to poll from next: the hub's last seq, or the last returned event's when
        ``limit`` cut the answer short. ``interest``: the types this poller passes on (held for
        ``timeout`` plus a grace, ``Demand.note_poll``)."""
        with self._lock:
            self._demand.note_poll(interest, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(float(timeout), 0.0)
        while True:
            with self._lock:
                events, cursor, gap = self._collect(since_seq, run_id, types, limit)
                remaining = deadline - loop.time()
                if events or gap is not None or remaining <= 0:
                    store = self.store_health()
                    return {
                        "events": events,
                        "last_seq": cursor,
                        "gap": gap,
                        "hub": self.identity,
                        "store": store,
                    }
                # registered under the lock that publishers take: no wakeup can be missed
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.add(waiter)
            since_seq = cursor  # nothing up to the cursor matched the filters
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                with self._lock:
                    self._waiters.discard(waiter)

    def note_batch(self) -> None:
        """Count one call that carried a batch of events (``stats()["batches"]``)."""
        with self._lock:
            self._counts["batches"] += 1

    def stats(self) -> dict[str, Any]:
        """Counters of what was published, released and dropped (and why), and what is held."""
        with self._lock:
            return {
                **self._counts,
                "last_seq": self._history.last_seq,
                "held_events": len(self._history),
                "oldest_held_seq": self._history.oldest_seq,
                "runs": len(self._runs),
                "active_runs": [r.run_id for r in self._runs if r.registered and not r.ended],
                "buffered": sum(r.ordering.buffered() for r in self._runs),
                "pollers": len(self._waiters),
                "store": None if self._recorder is None else self._recorder.stats(),
            }

    # ---- internals (called with the lock held) --------------------------------------------

    def _io_error(self) -> None:
        self._counts["io_errors"] += 1

    def _accept(
        self, run_id: str, producer: str, pseq: int, event: Payload, released: list[EventRecord]
    ) -> TrackedRun | None:
        self._counts["published"] += 1
        run = self._runs.get(run_id)
        if run is None:
            if self._runs.forgotten(run_id):
                self._counts["dropped_forgotten"] += 1
                logger.warning("dropping an event of forgotten run %r from %r", run_id, producer)
                return None
            run = self._runs.new(run_id)
        accepted = run.ordering.accept(producer, pseq, (pseq, event))
        if accepted.refused is Refusal.CLOSED:
            self._counts["dropped_closed"] += 1
        elif accepted.refused is Refusal.STALE:
            self._counts["dropped_stale"] += 1
        if accepted.skipped is not None:
            missing, resumed = accepted.skipped
            logger.warning(
                "producer %r of run %r: its buffer overflowed waiting for pseq %d; skipping to %d",
                producer,
                run_id,
                missing,
                resumed,
            )
            self._counts["order_gaps_skipped"] += 1
        for ready_pseq, ready in accepted.ready:
            self._release(run, ready, released, (producer, ready_pseq))
        return run

    def _release(
        self, run: TrackedRun, payload: Payload, released: list[EventRecord], origin: Origin = None
    ) -> None:
        """Validate, stamp, record and write one event that is next in its producer's order
        (``origin``: that producer and pseq; None for the hub's own notifications)."""
        try:
            message, body = read_payload(payload)
        except InvalidEvent as err:
            self._counts["dropped_invalid"] += 1
            logger.error(
                "run %r: dropping an event that is no message of the wire contract: %s", run.run_id, err
            )
            return
        if run.retries.is_repeat(message):
            self._counts["dropped_retry"] += 1
            return
        if run.ended and message.type in TERMINAL_TYPES:  # a run ends once (a dead coordinator's
            self._counts["dropped_after_end"] += 1  # error after its run completed, say)
            logger.warning("run %r has ended: dropping a second %s", run.run_id, message.type)
            return
        record = stamped(message, body, run.run_id, self._history.last_seq + 1, time.time())
        run.retries.remember(message)
        run.released(record)
        self._history.append(record)
        self._counts["released"] += 1
        released.append(record)
        run.journal.write([record.text])
        if self._recorder is not None:
            self._recorder.record(record, origin)
        if run.ended:  # a late event after the end reopens the file just for itself
            run.journal.close()
        else:
            for derived in run.milestones.observe(message):
                self._release(run, derived, released)

    def _collect(
        self, since_seq: int, run_id: str | None, types: frozenset[str] | None, limit: int | None
    ) -> tuple[list[EventRecord], int, int | None]:
        run = self._runs.get(run_id) if run_id is not None else None
        first_seq = None if run is None or since_seq < self._history.start_seq else run.first_seq
        events, cursor, gap = self._history.collect(since_seq, run_id, types, limit, run_first_seq=first_seq)
        if gap is None or self._recorder is None:
            return events, cursor, gap
        return self._recorder.backfill(since_seq, gap, run_id, types, limit, events, cursor)

    def _held_events_of(self, run: TrackedRun) -> Iterator[EventRecord]:
        if run.first_seq is None:
            return iter(())
        return self._history.of_run(run.run_id, run.first_seq)
