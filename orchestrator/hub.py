"""The EventHub: every event of every run passes through it (DESIGN 3).

``EventHub`` is a plain class, unit-tested without Ray. It

- restores each producer's order: Ray may reorder calls from one caller to an async actor, so
  every producer numbers its events ``pseq = 0, 1, 2, ...`` per ``(run_id, producer)`` and the hub
  releases them in that order, buffering early arrivals and dropping duplicates;
- drops what a retried fold emits again (``epoch_metrics`` and ``prediction_delta`` per fold and
  epoch, ``fold_complete`` per fold, ``batch_progress`` per fold, epoch and batch), so a retry never
  looks like new epochs to clients;
- stamps each released event with ``run_id``, ``seq`` (per hub, 1, 2, 3, ... without holes) and
  ``ts``, and appends it to ``<run_dir>/events.jsonl`` exactly as it goes out on ``/ws``;
- keeps the most recent ``max_events`` events for replay (``events_since``, ``run_events``) and
  answers the API's long-poll (``poll``) as soon as there is something new.

Publishing never waits for a consumer: ``publish`` is synchronous and cheap, and pollers are woken,
never awaited. ``get_or_create_hub`` runs the class as a named async Ray actor pinned to the
driver's node; ``HubPublisher`` is the producer side (fire-and-forget, numbered events).

Memory is bounded: the history holds at most ``max_events`` events (the oldest leave first, so the
history is always one contiguous range of ``seq`` and a lost stretch can only be at its start);
per-run bookkeeping (producer order, retry keys) is kept for at most ``max_runs`` runs, the oldest
finished run's being forgotten first; each producer buffers at most ``max_pending`` early events.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO, cast

from pydantic import BaseModel

from orchestrator.messages import TERMINAL_TYPES, sanitize
from orchestrator.notify import RunMilestones

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle

__all__ = [
    "EventHub",
    "HubPublisher",
    "HUB_NAME",
    "NAMESPACE",
    "EVENTS_FILE",
    "TERMINAL_TYPES",
    "get_or_create_hub",
    "get_hub",
]

logger = logging.getLogger(__name__)

HUB_NAME = "event_hub"
NAMESPACE = "forecast-orchestrator"
EVENTS_FILE = "events.jsonl"
ENVELOPE_FIELDS = ("run_id", "seq", "ts")

Event = dict[str, Any]
RetryKey = tuple[Any, ...]

_FORGOTTEN_RUNS_KEPT = 1_000
# get_or_create_hub: tries when the hub found is being destroyed, and how long to wait for one.
_HUB_GET_ATTEMPTS = 5
_HUB_READY_TIMEOUT_S = 120.0
# A poller's interest outlives its poll by this much, so the short gap between one poll and the
# next never reads as "nobody wants it" (which would restart prediction deltas from scratch).
INTEREST_GRACE_S = 5.0
# How often a producer asks the hub again which types are wanted.
_DEMAND_REFRESH_S = 0.5
# How long a producer's first question may take before it assumes nothing is wanted.
_DEMAND_FIRST_WAIT_S = 2.0


def _retry_key(event: Event) -> RetryKey | None:
    """The identity under which a retried fold's re-emitted event is a duplicate, if any."""
    kind = event.get("type")
    fold_id = event.get("fold_id")
    if fold_id is None:
        return None
    if kind == "epoch_metrics":
        return (kind, fold_id, event.get("epoch"))
    if kind == "prediction_delta":
        return (kind, fold_id, event.get("epoch"), event.get("chunk"), event.get("final"))
    if kind == "fold_complete":
        return (kind, fold_id)
    if kind == "batch_progress":
        return (kind, fold_id, event.get("epoch"), event.get("batch"))
    return None


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays (anything with ``item``/``tolist``) as plain Python, recursively.

    Only for events that ``json.dumps`` refused, so the common path pays nothing for it.
    """
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class _ProducerOrder:
    """Where one producer's numbered stream stands: the next pseq due and the early arrivals."""

    next_pseq: int = 0
    pending: dict[int, Any] = field(default_factory=dict)
    closed: bool = False


@dataclass
class _Run:
    """The hub's bookkeeping of one run."""

    run_id: str
    run_dir: str | None = None
    registered: bool = False
    ended: bool = False
    first_seq: int | None = None
    writer: TextIO | None = None
    file_failed: bool = False
    producers: dict[str, _ProducerOrder] = field(default_factory=dict)
    released_keys: set[RetryKey] = field(default_factory=set)
    milestones: RunMilestones = field(default_factory=RunMilestones)

    @property
    def events_path(self) -> str | None:
        return None if self.run_dir is None else os.path.join(self.run_dir, EVENTS_FILE)


class EventHub:
    """Orders, de-duplicates, stamps, records and serves the events of all runs.

    Thread-safe (one lock around the state). ``poll`` may be awaited from any event loop; a
    publish from another thread wakes pollers through their loop's ``call_soon_threadsafe``.
    Returned event dicts are the held ones: treat them as read-only.
    """

    def __init__(
        self, *, max_events: int = 100_000, max_runs: int = 20, max_pending: int = 10_000
    ) -> None:
        for name, value in (
            ("max_events", max_events),
            ("max_runs", max_runs),
            ("max_pending", max_pending),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
        self._max_runs = max_runs
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._history: deque[Event] = deque(maxlen=max_events)
        self._last_seq = 0
        self._runs: dict[str, _Run] = {}
        self._forgotten: deque[str] = deque(maxlen=_FORGOTTEN_RUNS_KEPT)
        self._waiters: set[asyncio.Future[None]] = set()
        # types some consumer will deliver -> until when (time.monotonic), from poll(interest=)
        self._interest: dict[str, float] = {}
        self._counts = dict.fromkeys(
            (
                "published",
                "released",
                "dropped_stale",
                "dropped_retry",
                "dropped_invalid",
                "dropped_closed",
                "dropped_forgotten",
                "order_gaps_skipped",
                "io_errors",
            ),
            0,
        )

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
            if run_id in self._forgotten:
                self._forgotten.remove(run_id)
            run = self._runs.get(run_id)
            if run is not None and run.registered:
                if run.run_dir != run_dir:
                    raise ValueError(
                        f"run {run_id!r} is already registered with run_dir={run.run_dir!r}, "
                        f"got run_dir={run_dir!r}"
                    )
                return
            if run is None:
                run = self._new_run(run_id)
            run.registered = True
            run.run_dir = run_dir
            if run_dir is not None and self._open_writer(run):
                earlier = [json.dumps(e, allow_nan=False) for e in self._held_events_of(run)]
                self._write_lines(run, earlier)
                if run.ended:
                    self._close_writer(run)
                else:
                    self._flush(run)

    def active_run(self) -> str | None:
        """The most recently registered run that has not ended (no terminal event released yet)."""
        with self._lock:
            for run in reversed(self._runs.values()):
                if run.registered and not run.ended:
                    return run.run_id
            return None

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
            order = run.producers.setdefault(producer, _ProducerOrder())
            released: list[Event] = []
            for pseq in sorted(order.pending):
                self._release(run, order.pending.pop(pseq), released)
            order.closed = True
            self._flush(run)
            self._wake_pollers(released)

    def close(self) -> None:
        """Close every open events.jsonl (the hub keeps working; files reopen for late events)."""
        with self._lock:
            for run in self._runs.values():
                self._close_writer(run)

    # ---- publishing -----------------------------------------------------------------------

    def publish(self, run_id: str, producer: str, pseq: int, event: Event) -> list[Event]:
        """Accept event number ``pseq`` of ``producer`` in ``run_id``; return what it released.

        The result is empty when the event arrived early (buffered until the missing ones come),
        was a duplicate, or was dropped as a retried fold's repeat or as invalid (not a dict with
        a string ``type``, or not JSON-serializable once NaN/Infinity became null). An invalid
        event still takes its place in the order, so it never stalls the events after it.
        """
        with self._lock:
            released: list[Event] = []
            run = self._accept(run_id, producer, pseq, event, released)
            if run is not None:
                self._flush(run)
            self._wake_pollers(released)
            return released

    def publish_batch(self, items: Iterable[tuple[str, str, int, Event]]) -> int:
        """``publish`` for many ``(run_id, producer, pseq, event)``; returns the count released."""
        with self._lock:
            released: list[Event] = []
            touched: dict[str, _Run] = {}
            for run_id, producer, pseq, event in items:
                run = self._accept(run_id, producer, pseq, event, released)
                if run is not None:
                    touched[run.run_id] = run
            for run in touched.values():
                self._flush(run)
            self._wake_pollers(released)
            return len(released)

    # ---- reading --------------------------------------------------------------------------

    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    def note_interest(self, types: Iterable[str], hold_s: float) -> None:
        """Someone will deliver these message types for the next ``hold_s`` seconds."""
        until = time.monotonic() + max(hold_s, 0.0)
        with self._lock:
            for kind in types:
                if self._interest.get(kind, 0.0) < until:
                    self._interest[kind] = until

    def wanted(self) -> frozenset[str]:
        """The message types some consumer delivers now (see ``poll``'s ``interest``)."""
        now = time.monotonic()
        with self._lock:
            expired = [kind for kind, until in self._interest.items() if until < now]
            for kind in expired:
                del self._interest[kind]
            return frozenset(self._interest)

    def events_since(
        self,
        since_seq: int,
        run_id: str | None = None,
        types: frozenset[str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[Event], int | None]:
        """Held events with ``seq > since_seq`` (optionally of one run / some types, at most
        ``limit``), oldest first, and the gap: the oldest held seq when events right after
        ``since_seq`` are no longer held (for ``run_id``: only if that run lost events), else None.
        """
        with self._lock:
            events, _, gap = self._collect(since_seq, run_id, types, limit)
            return events, gap

    def run_events(self, run_id: str) -> list[Event]:
        """The held events of one run, oldest first."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                return list(self._held_events_of(run))
            return [e for e in self._history if e["run_id"] == run_id]

    async def poll(
        self,
        since_seq: int,
        timeout: float,
        run_id: str | None = None,
        *,
        types: frozenset[str] | None = None,
        limit: int | None = None,
        interest: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Long-poll: ``{"events", "last_seq", "gap"}`` once events after ``since_seq`` exist.

        Returns at once when there are such events (or a gap to report), else waits up to
        ``timeout`` seconds for one to be released and returns empty ``events`` when none came.
        ``last_seq`` is the cursor to pass as ``since_seq`` next time: the hub's last seq, or the
        last returned event's seq when ``limit`` cut the answer short. Never blocks a publisher.

        ``interest`` names the message types this poller passes on to someone (a WebSocket
        client, a file): producers ask ``wanted()`` and skip optional work nobody receives
        (per-epoch ``prediction_delta``, ``batch_progress``). It holds for the poll's
        ``timeout`` plus ``INTEREST_GRACE_S``, so a consumer that keeps polling keeps it.
        """
        self.note_interest(interest, float(timeout) + INTEREST_GRACE_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(float(timeout), 0.0)
        while True:
            with self._lock:
                events, cursor, gap = self._collect(since_seq, run_id, types, limit)
                remaining = deadline - loop.time()
                if events or gap is not None or remaining <= 0:
                    return {"events": events, "last_seq": cursor, "gap": gap}
                # registered under the lock that publishers take: no wakeup can be missed
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.add(waiter)
            since_seq = cursor  # nothing up to the cursor matched the filters
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                with self._lock:
                    self._waiters.discard(waiter)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._counts,
                "last_seq": self._last_seq,
                "held_events": len(self._history),
                "oldest_held_seq": self._history[0]["seq"] if self._history else None,
                "runs": len(self._runs),
                "active_runs": [
                    r.run_id for r in self._runs.values() if r.registered and not r.ended
                ],
                "buffered": sum(
                    len(o.pending) for r in self._runs.values() for o in r.producers.values()
                ),
                "pollers": len(self._waiters),
            }

    # ---- internals (called with the lock held) --------------------------------------------

    def _new_run(self, run_id: str) -> _Run:
        run = _Run(run_id)
        self._runs[run_id] = run
        self._forget_old_runs()
        return run

    def _forget_old_runs(self) -> None:
        """Drop the bookkeeping (not the held events) of the oldest ended runs past ``max_runs``."""
        excess = len(self._runs) - self._max_runs
        if excess <= 0:
            return
        for run in [r for r in self._runs.values() if r.ended][:excess]:
            self._close_writer(run)
            del self._runs[run.run_id]
            self._forgotten.append(run.run_id)
        if len(self._runs) > self._max_runs:
            logger.warning(
                "EventHub holds %d runs, more than max_runs=%d, because none more has ended",
                len(self._runs),
                self._max_runs,
            )

    def _accept(
        self, run_id: str, producer: str, pseq: int, event: Any, released: list[Event]
    ) -> _Run | None:
        if not isinstance(pseq, int) or isinstance(pseq, bool) or pseq < 0:
            raise ValueError(f"pseq must be an int >= 0, got pseq={pseq!r}")
        if not isinstance(run_id, str) or not isinstance(producer, str):
            raise ValueError(
                f"run_id and producer must be strings, got run_id={run_id!r}, producer={producer!r}"
            )
        self._counts["published"] += 1
        run = self._runs.get(run_id)
        if run is None:
            if run_id in self._forgotten:
                self._counts["dropped_forgotten"] += 1
                logger.warning("dropping an event of forgotten run %r from %r", run_id, producer)
                return None
            run = self._new_run(run_id)
        order = run.producers.get(producer)
        if order is None:
            order = run.producers[producer] = _ProducerOrder()
        if order.closed:
            self._counts["dropped_closed"] += 1
            return run
        if pseq < order.next_pseq or pseq in order.pending:
            self._counts["dropped_stale"] += 1
            return run
        # A shallow copy, so stamping never touches the caller's dict. NaN/Infinity are replaced
        # only when _release's json.dumps refuses them: a pure-Python walk of every event (a
        # prediction_delta has ~1000 rows) would cost each publish milliseconds.
        order.pending[pseq] = dict(event) if isinstance(event, dict) else event
        if pseq != order.next_pseq and len(order.pending) > self._max_pending:
            # Bounded buffer: give up on the missing events and go on from the oldest buffered
            # one; if a given-up event still arrives it is dropped as stale.
            skipped_to = min(order.pending)
            logger.warning(
                "producer %r of run %r: %d events buffered waiting for pseq %d; skipping to %d",
                producer,
                run_id,
                len(order.pending) - 1,
                order.next_pseq,
                skipped_to,
            )
            self._counts["order_gaps_skipped"] += 1
            order.next_pseq = skipped_to
        while order.next_pseq in order.pending:
            self._release(run, order.pending.pop(order.next_pseq), released)
            order.next_pseq += 1
        return run

    def _release(self, run: _Run, event: Any, released: list[Event]) -> None:
        """Stamp, record and write one event that is next in its producer's order."""
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._counts["dropped_invalid"] += 1
            logger.error(
                "run %r: dropping an event without a string 'type': %.200r", run.run_id, event
            )
            return
        key = _retry_key(event)
        if key is not None and key in run.released_keys:
            self._counts["dropped_retry"] += 1
            return
        seq = self._last_seq + 1
        event["run_id"] = run.run_id
        event["seq"] = seq
        event["ts"] = time.time()
        try:
            line = json.dumps(event, allow_nan=False)
        except (TypeError, ValueError):
            event = sanitize(_plain(event))
            try:
                line = json.dumps(event, allow_nan=False)
            except (TypeError, ValueError) as e:
                self._counts["dropped_invalid"] += 1
                logger.error(
                    "run %r: dropping a %r event that is not JSON: %s", run.run_id, event["type"], e
                )
                return
        if key is not None:
            run.released_keys.add(key)
        self._last_seq = seq
        if run.first_seq is None:
            run.first_seq = seq
        self._history.append(event)
        self._counts["released"] += 1
        released.append(event)
        self._write_lines(run, [line])
        if event["type"] in TERMINAL_TYPES or (
            event["type"] == "hpo_trial" and event.get("state") == "study_complete"
        ):
            run.ended = True
        if run.ended:  # a late event after the end reopens the file just for itself
            self._close_writer(run)
        else:
            for derived in run.milestones.observe(event):
                self._release(run, derived, released)

    def _collect(
        self,
        since_seq: int,
        run_id: str | None,
        types: frozenset[str] | None,
        limit: int | None,
    ) -> tuple[list[Event], int, int | None]:
        """(events after since_seq, the cursor to resume from, the gap or None)."""
        if not isinstance(since_seq, int) or since_seq < 0:
            raise ValueError(f"since_seq must be an int >= 0, got since_seq={since_seq!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got limit={limit!r}")
        gap = None
        if self._history and since_seq + 1 < self._history[0]["seq"]:
            gap = self._history[0]["seq"]
            run = self._runs.get(run_id) if run_id is not None else None
            if run is not None and run.first_seq is not None and run.first_seq >= gap:
                gap = None  # nothing of this run was lost
        events: list[Event] = []
        for event in self._iter_from(since_seq + 1):
            if run_id is not None and event["run_id"] != run_id:
                continue
            if types is not None and event["type"] not in types:
                continue
            events.append(event)
            if limit is not None and len(events) >= limit:
                return events, event["seq"], gap
        return events, max(self._last_seq, since_seq), gap

    def _iter_from(self, seq: int) -> Iterator[Event]:
        """Held events with seq >= ``seq``, oldest first, walking in from the nearer end."""
        held = self._history
        if not held:
            return iter(())
        index = max(seq - held[0]["seq"], 0)  # the history is one contiguous range of seq
        if index >= len(held):
            return iter(())
        if index <= len(held) - index:
            return itertools.islice(held, index, None)
        tail = list(itertools.islice(reversed(held), len(held) - index))
        tail.reverse()
        return iter(tail)

    def _held_events_of(self, run: _Run) -> Iterator[Event]:
        if run.first_seq is None:
            return iter(())
        return (e for e in self._iter_from(run.first_seq) if e["run_id"] == run.run_id)

    def _write_lines(self, run: _Run, lines: list[str]) -> None:
        """Append lines to the run's events.jsonl; an IO error is logged, never raised."""
        if not lines or not self._open_writer(run):
            return
        assert run.writer is not None
        try:
            run.writer.write("\n".join(lines) + "\n")
        except OSError:
            self._file_failed(run)

    def _open_writer(self, run: _Run) -> bool:
        """Open the run's events.jsonl for appending unless it is open; False if it cannot be."""
        if run.writer is not None:
            return True
        if run.run_dir is None or run.file_failed:
            return False
        try:
            os.makedirs(run.run_dir, exist_ok=True)
            run.writer = open(os.path.join(run.run_dir, EVENTS_FILE), "a", encoding="utf-8")
        except OSError:
            self._file_failed(run)
            return False
        return True

    def _flush(self, run: _Run) -> None:
        if run.writer is None:
            return
        try:
            run.writer.flush()
        except OSError:
            self._file_failed(run)

    def _close_writer(self, run: _Run) -> None:
        writer, run.writer = run.writer, None
        if writer is None:
            return
        try:
            writer.close()
        except OSError:
            self._file_failed(run)

    def _file_failed(self, run: _Run) -> None:
        # one log per run, then the file is left alone: publishing must go on
        self._counts["io_errors"] += 1
        run.file_failed = True
        logger.exception(
            "run %r: cannot write %s; no more events go to it", run.run_id, run.events_path
        )
        writer, run.writer = run.writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass

    def _wake_pollers(self, released: list[Event]) -> None:
        if not released or not self._waiters:
            return
        waiters, self._waiters = self._waiters, set()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for waiter in waiters:
            loop = waiter.get_loop()
            if loop is running:
                _resolve(waiter)
            else:
                try:
                    loop.call_soon_threadsafe(_resolve, waiter)
                except RuntimeError:  # that poller's loop is closed
                    pass


# ---- Ray shell -------------------------------------------------------------------------------


class _HubActor(EventHub):
    """The EventHub as a Ray actor. ``poll`` is async, so Ray makes it an async actor: every
    method runs on the actor's one event loop (sync methods included), so pollers await while
    publishes proceed, and ``max_concurrency`` bounds how many calls are in flight."""

    def publish_remote(self, run_id: str, producer: str, pseq: int, event: Event) -> int:
        """``publish`` for a remote producer (``HubPublisher``): returns how many events it
        released, not the events, which the producer never reads; sending a 100 KB
        ``prediction_delta`` back to the fold that sent it would double its cost."""
        return len(self.publish(run_id, producer, pseq, event))

    def runtime_info(self) -> dict[str, Any]:
        """Where the hub runs and what it holds: node id, actor id, assigned resources, pid."""
        import ray

        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "actor_id": context.get_actor_id(),
            "assigned_resources": context.get_assigned_resources(),
            "pid": os.getpid(),
        }


def get_or_create_hub(namespace: str = NAMESPACE, **hub_kwargs: Any) -> ActorHandle:
    """The namespace's hub actor, created on first call (``hub_kwargs`` go to ``EventHub``).

    Needs ``ray.init`` done. The hub is pinned (hard node affinity) to the node of the calling
    driver, which is the head node in our deployments (the API / CLI process runs there). It
    takes no CPU (``num_cpus=0``) so it never holds back a fold. It is not detached: it belongs
    to the driver that created it and dies with it; a later driver creates a fresh hub (seq
    restarts at 1). When the hub exists already, ``hub_kwargs`` are ignored.

    Returns once the hub answers. A hub whose last handle has just been dropped is being
    destroyed, yet ``get_if_exists`` may still hand it out: then a fresh one is created.
    """
    import ray
    from ray.exceptions import RayActorError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = ray.get_runtime_context().get_node_id()
    hub_class = ray.remote(_HubActor).options(
        name=HUB_NAME,
        namespace=namespace,
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=1000,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=driver_node, soft=False),
    )
    for attempt in range(_HUB_GET_ATTEMPTS):
        handle: Any = hub_class.remote(**hub_kwargs)
        try:
            ray.get(handle.last_seq.remote(), timeout=_HUB_READY_TIMEOUT_S)
        except RayActorError:
            if attempt + 1 == _HUB_GET_ATTEMPTS:
                raise
            time.sleep(0.1 * (attempt + 1))  # until the GCS has freed the dead hub's name
            continue
        return cast("ActorHandle", handle)
    raise AssertionError("unreachable")


def get_hub(namespace: str = NAMESPACE) -> ActorHandle:
    """The existing hub of a namespace (raises ValueError from Ray when there is none)."""
    import ray

    return ray.get_actor(HUB_NAME, namespace=namespace)


class HubPublisher:
    """A producer's side of the hub: numbers its events and sends them without waiting.

    One publisher per producer name: a copy (pickled into a task or actor) continues the same
    numbering, so give each actor or attempt its own name with ``for_producer``. ``publish``
    returns at once; ``flush`` waits until the hub has received what was sent (call it before a
    fold returns, so its last events reach the hub before the driver ends the run).
    """

    _demand: frozenset[str] | None  # the hub's last answer to wanted(), None before the first
    _demand_ref: ObjectRef[Any] | None  # a wanted() call in flight
    _demand_asked: float
    _PRUNE_AT = 256  # outstanding refs that trigger dropping the acknowledged ones
    _MAX_TRACKED = 10_000  # past this, the oldest refs are no longer tracked (flush skips them)

    def __init__(self, hub: ActorHandle, run_id: str, producer: str, *, next_pseq: int = 0) -> None:
        if not run_id or not producer:
            raise ValueError(
                "run_id and producer must be non-empty, "
                f"got run_id={run_id!r}, producer={producer!r}"
            )
        self.hub = hub
        self.run_id = run_id
        self.producer = producer
        self._next_pseq = next_pseq
        self._lock = threading.Lock()
        self._outstanding: list[ObjectRef[Any]] = []
        self._forget_demand()

    def for_producer(self, producer: str) -> HubPublisher:
        """A fresh publisher (pseq from 0) for another producer of the same run and hub."""
        return HubPublisher(self.hub, self.run_id, producer)

    @property
    def next_pseq(self) -> int:
        return self._next_pseq

    def publish(self, event: Event | BaseModel) -> None:
        """Send one event (a wire model or its dict) to the hub; never waits for it.

        This runs in the fold's training loop, so it does the least it can: NaN and Infinity
        are left for the hub, which replaces them when it releases the event
        (``EventHub._release``); a pure-Python ``sanitize`` here cost a fold more than a tenth of its time with ``prediction_delta``.
        """
        if isinstance(event, BaseModel):
            payload = event.model_dump(mode="json")
            for name in ENVELOPE_FIELDS:  # the hub stamps these
                if payload.get(name) is None:
                    payload.pop(name, None)
        else:
            payload = event
        with self._lock:
            pseq = self._next_pseq
            self._next_pseq += 1
            self._outstanding.append(
                self.hub.publish_remote.remote(self.run_id, self.producer, pseq, payload)
            )
            if len(self._outstanding) >= self._PRUNE_AT:
                self._prune()

    def wants(self, kind: str) -> bool:
        """Whether some consumer of the hub delivers ``kind`` now (``EventHub.wanted``).

        The first call waits for the hub's answer (one round trip, at most a couple of
        seconds); later calls return the last answer at once and ask again in the background
        every ``_DEMAND_REFRESH_S``, so a training loop can call this per epoch or batch.
        """
        import ray

        with self._lock:
            now = time.monotonic()
            if self._demand is None:
                answer: Iterable[str]
                try:
                    answer = ray.get(self.hub.wanted.remote(), timeout=_DEMAND_FIRST_WAIT_S)
                except Exception:  # a slow or unreachable hub: nothing optional is wanted
                    answer = frozenset()
                self._demand, self._demand_asked = frozenset(answer), now
            elif self._demand_ref is not None:
                ready, _ = ray.wait([self._demand_ref], timeout=0)
                if ready:
                    try:
                        self._demand = frozenset(ray.get(ready[0]))
                    except Exception:
                        pass  # keep the last answer
                    self._demand_ref = None
            elif now - self._demand_asked >= _DEMAND_REFRESH_S:
                self._demand_ref, self._demand_asked = self.hub.wanted.remote(), now
            return kind in self._demand

    def _forget_demand(self) -> None:
        self._demand = None
        self._demand_ref = None
        self._demand_asked = 0.0

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait up to ``timeout`` seconds until the hub took every tracked event; True if it did."""
        import ray

        with self._lock:
            refs, self._outstanding = self._outstanding, []
        if not refs:
            return True
        ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        with self._lock:
            self._outstanding = not_ready + self._outstanding
        return not not_ready

    def _prune(self) -> None:
        import ray

        refs = self._outstanding
        _, not_ready = ray.wait(refs, num_returns=len(refs), timeout=0)
        if len(not_ready) >= self._MAX_TRACKED:
            logger.warning(
                "producer %r: %d publishes not yet taken by the hub; tracking the newest half",
                self.producer,
                len(not_ready),
            )
            not_ready = not_ready[len(not_ready) // 2 :]
        self._outstanding = not_ready

    def __getstate__(self) -> dict[str, Any]:
        # refs and the lock stay with this process; the copy continues the numbering
        return {
            "hub": self.hub,
            "run_id": self.run_id,
            "producer": self.producer,
            "next_pseq": self._next_pseq,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.hub = state["hub"]
        self.run_id = state["run_id"]
        self.producer = state["producer"]
        self._next_pseq = state["next_pseq"]
        self._lock = threading.Lock()
        self._outstanding = []
        self._forget_demand()
