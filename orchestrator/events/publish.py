"""Where producers send events: the publisher protocol and its implementations, in-process or to the hub actor.

A sink (``EventSink``) registers runs and hands out one publisher per producer; every publisher
has the same three methods (``publish``, ``flush``, ``wants``). A producer numbers its own events
so the hub can restore their order (DESIGN 3), and asks ``wants(type)`` before optional work that
only a consumer of that type would see. ``InProcessSink``/``LocalPublisher`` publish into an
``EventHub`` in this process; ``RaySink``/``HubPublisher`` send to the hub actor without waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from orchestrator.events.hub import EventHub
from orchestrator.events.record import EventRecord, body_json, read_payload
from orchestrator.messages import MESSAGE_TYPES

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle

__all__ = [
    "EventSink",
    "Publisher",
    "LocalPublisher",
    "InProcessSink",
    "HubPublisher",
    "RaySink",
    "Listener",
]

logger = logging.getLogger(__name__)

Listener = Callable[[list[EventRecord]], None]
# What a producer hands a publisher: a message model (a dict of one is validated into it).
Outbound = BaseModel | dict[str, Any]

# How often a HubPublisher asks the hub again which types are wanted.
_DEMAND_REFRESH_S = 0.5
# How long its first question may take before it assumes nothing is wanted.
_DEMAND_FIRST_WAIT_S = 2.0
# A batched producer's events within this many seconds of its last send go to the hub together,
# in one actor call, at the end of that window (each call costs the hub far more than its event).
# A packed fold ends an epoch every 40-80 ms: at 0.05 s nearly every epoch was its own call and
# timer thread, 0.4 CPU-s per 5-fold trial in the workers and 0.15 in the hub on 2 cores
# (docs/benchmarks.md, "Packed training"); a slow fold (an epoch longer than this) still sends
# each event at once.
BATCH_WINDOW_S = 0.25
# The window while some consumer delivers the event's type live (a WebSocket client, an events
# file: ``EventHub.wanted``): latency for whoever watches, fewer calls when nobody does.
LIVE_BATCH_WINDOW_S = 0.05
# How long ``flush`` waits for the hub by default: long enough for Ray to bring a dead hub back
# (its process start and rebuild from the store take seconds) and acknowledge the retried calls.
FLUSH_TIMEOUT_S = 60.0


def _kind(event: Outbound) -> Any:
    """The message type of ``event`` (a wire model or its dict)."""
    return event.get("type") if isinstance(event, dict) else getattr(event, "type", None)


def _payload(event: Outbound) -> str:
    """What a producer sends for ``event``: its message's JSON text without the envelope (the hub
    validates it, puts ``run_id``, ``seq``, ``ts`` in front and sends that text on). Encoded by
    pydantic in Rust (NaN and Infinity as null); a string crosses Ray far cheaper than a dict.
    A dict is validated here first (``InvalidEvent`` names what is wrong)."""
    if isinstance(event, BaseModel):
        return body_json(event)
    return read_payload(event)[1]


class Publisher(Protocol):
    def publish(self, event: Outbound) -> None: ...

    def flush(self, timeout: float | None = None) -> object: ...

    def wants(self, kind: str) -> bool: ...


class EventSink(Protocol):
    def register_run(self, run_id: str, run_dir: str | None) -> None: ...

    def publisher(self, run_id: str, producer: str, *, batched: bool = False) -> Publisher:
        """``batched``: the producer may send its events in batches (a fold: many events, none
        that another producer's events must follow)."""
        ...


class LocalPublisher:
    """Publishes synchronously into an in-process hub and tells the listener what was released."""

    def __init__(self, sink: InProcessSink, run_id: str, producer: str) -> None:
        self._sink = sink
        self._run_id = run_id
        self._producer = producer
        self._pseq = 0

    def publish(self, event: Outbound) -> None:
        self._sink.publish(self._run_id, self._producer, self._pseq, _payload(event))
        self._pseq += 1

    def flush(self, timeout: float | None = None) -> None:
        """Nothing is in flight: publish is synchronous."""

    def wants(self, kind: str) -> bool:
        return self._sink.wants(kind)


class InProcessSink:
    """A plain ``EventHub`` in this process (the ``local`` executor, the CLI, tests).

    ``listener`` is called with what each publish released, on the publishing thread.
    ``interest``: the message types ``listener`` passes on (default: every type when there is a
    listener, none without); the hub's pollers can add more (``EventHub.poll(interest=)``).
    """

    def __init__(
        self,
        hub: EventHub | None = None,
        listener: Listener | None = None,
        interest: frozenset[str] | None = None,
    ) -> None:
        self.hub = hub or EventHub()
        self._listener = listener
        if interest is None:
            interest = frozenset(MESSAGE_TYPES) if listener is not None else frozenset()
        self.interest = interest

    def wants(self, kind: str) -> bool:
        return kind in self.interest or kind in self.hub.wanted()

    def register_run(self, run_id: str, run_dir: str | None) -> None:
        self.hub.register_run(run_id, run_dir)

    def publisher(self, run_id: str, producer: str, *, batched: bool = False) -> LocalPublisher:
        return LocalPublisher(self, run_id, producer)  # synchronous: nothing to batch

    def publish(self, run_id: str, producer: str, pseq: int, event: str) -> None:
        released = self.hub.publish(run_id, producer, pseq, event)
        if released and self._listener is not None:
            self._listener(released)


class HubPublisher:
    """A producer's side of the hub actor: numbers its events and sends them without waiting.

    One publisher per producer name: a copy (pickled into a task or actor) continues the same
    numbering, so give each actor or attempt its own name. ``publish`` returns at once; ``flush``
    waits until the hub has acknowledged what was sent (call it before a fold returns, so its
    last events reach the hub before the driver ends the run). The hub acknowledges a call once
    its events are in order and in the job store; until then Ray retries the call if the hub
    dies (``events.actor``), so a fold never loses an event to a hub restart, and ``flush``'s
    default wait covers one.
    """

    _demand: frozenset[str] | None  # the hub's last answer to wanted(), None before the first
    _demand_ref: ObjectRef[Any] | None  # a wanted() call in flight
    _demand_asked: float
    _PRUNE_AT = 256  # outstanding refs that trigger dropping the acknowledged ones
    _MAX_TRACKED = 10_000  # past this, the oldest refs are no longer tracked (flush skips them)

    def __init__(
        self, hub: ActorHandle[Any], run_id: str, producer: str, *, batch_window_s: float = 0.0
    ) -> None:
        if not run_id or not producer:
            raise ValueError(
                f"run_id and producer must be non-empty, got run_id={run_id!r}, producer={producer!r}"
            )
        self.hub = hub
        self.run_id = run_id
        self.producer = producer
        self.batch_window_s = batch_window_s
        self._next_pseq = 0
        self._lock = threading.Lock()
        self._outstanding: list[ObjectRef[Any]] = []
        self._start_batching()
        self._forget_demand()

    def _start_batching(self) -> None:
        self._batch: list[tuple[int, str]] = []  # (pseq, message text) not sent yet
        self._last_send = 0.0
        self._timer: threading.Timer | None = None
        self._timer_due = 0.0  # when the timer sends (time.monotonic())

    def publish(self, event: Outbound) -> None:
        """Send one event (a wire model or its dict) to the hub; never waits for it.

        With a ``batch_window_s`` (``LIVE_BATCH_WINDOW_S``, if shorter, while some consumer
        delivers the event's type live), an event goes at once when the last send was at least that
        long ago; one that follows closer waits, with any others, for the end of that window (a
        timer sends them in one call), so a burst costs the hub one call per window and no event
        waits longer. Only for a producer none of whose events another producer's must follow
        (a fold: the driver's ``fold_complete`` comes after the fold's ``flush``); the driver's
        ``training_start`` must reach the hub before the folds' first epochs, so it sends at once.
        This runs in the fold's training loop, so it does the least it can: one
        ``model_dump_json`` (Rust; a pure-Python ``sanitize`` here once cost a fold more than a
        tenth of its time with ``prediction_delta``).
        """
        payload = _payload(event)
        with self._lock:
            pseq = self._next_pseq
            self._next_pseq += 1
            self._batch.append((pseq, payload))
            window = self.batch_window_s
            if window > LIVE_BATCH_WINDOW_S and _kind(event) in self._known_demand():
                window = LIVE_BATCH_WINDOW_S
            due = self._last_send + window
            wait = due - time.monotonic()
            if wait <= 0:
                self._send_batch()
            elif self._timer is None or due < self._timer_due:  # a live event: the sooner end
                if self._timer is not None:
                    self._timer.cancel()
                self._timer, self._timer_due = threading.Timer(wait, self._send_on_timer), due
                self._timer.daemon = True
                self._timer.start()

    def _send_on_timer(self) -> None:
        with self._lock:
            self._timer = None
            self._send_batch()

    def _send_batch(self) -> None:
        """Send what is batched in one call (under ``_lock``)."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._last_send = time.monotonic()
        if len(batch) == 1:
            pseq, payload = batch[0]
            self._outstanding.append(
                self.hub.publish_remote.remote(self.run_id, self.producer, pseq, payload)
            )
        else:
            self._outstanding.append(self.hub.publish_batch_remote.remote(self.run_id, self.producer, batch))
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
            if self._demand is None:
                answer: Iterable[str]
                try:
                    ref = self._demand_ref or self.hub.wanted.remote()
                    answer = ray.get(ref, timeout=_DEMAND_FIRST_WAIT_S)
                except Exception:  # a slow or unreachable hub: nothing optional is wanted
                    answer = frozenset()
                self._demand, self._demand_ref, self._demand_asked = frozenset(answer), None, time.monotonic()
                return kind in self._demand
            return kind in self._known_demand()

    def _known_demand(self) -> frozenset[str]:
        """The hub's last answer (empty before the first), asked again in the background every
        ``_DEMAND_REFRESH_S``; never waits (under ``_lock``)."""
        import ray

        if self._demand_ref is not None:
            ready, _ = ray.wait([self._demand_ref], timeout=0)
            if ready:
                try:
                    self._demand = frozenset(ray.get(ready[0]))
                except Exception:
                    pass  # keep the last answer
                self._demand_ref = None
        elif time.monotonic() - self._demand_asked >= _DEMAND_REFRESH_S:  # 0.0 before the first
            self._demand_ref, self._demand_asked = self.hub.wanted.remote(), time.monotonic()
        return self._demand or frozenset()

    def _forget_demand(self) -> None:
        self._demand = None
        self._demand_ref = None
        self._demand_asked = 0.0

    def flush(self, timeout: float | None = FLUSH_TIMEOUT_S) -> bool:
        """Wait up to ``timeout`` seconds until the hub took every tracked event; True if it did."""
        import ray

        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._send_batch()
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
        # refs, the lock and any batch stay with this process (its timer sends the batch); the
        # copy continues the numbering
        return {
            "hub": self.hub,
            "run_id": self.run_id,
            "producer": self.producer,
            "next_pseq": self._next_pseq,
            "batch_window_s": self.batch_window_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.hub = state["hub"]
        self.run_id = state["run_id"]
        self.producer = state["producer"]
        self._next_pseq = state["next_pseq"]
        self.batch_window_s = state["batch_window_s"]
        self._lock = threading.Lock()
        self._outstanding = []
        self._start_batching()
        self._forget_demand()


class RaySink:
    """Events go to the EventHub actor; each producer gets a fire-and-forget publisher."""

    def __init__(self, hub: ActorHandle[Any]) -> None:
        self.hub = hub

    def register_run(self, run_id: str, run_dir: str | None) -> None:
        import ray

        ray.get(self.hub.register_run.remote(run_id, run_dir))

    def publisher(self, run_id: str, producer: str, *, batched: bool = False) -> HubPublisher:
        return HubPublisher(self.hub, run_id, producer, batch_window_s=BATCH_WINDOW_S if batched else 0.0)

    def close_producers(self, run_id: str, producers: Iterable[str], timeout: float | None = 10.0) -> None:
        """Tell the hub these producers are gone; with a ``timeout``, wait until it knows.

        Waiting matters at the end of a run: the hub then drops anything a killed fold still had
        in flight instead of releasing it after the run's terminal event.
        """
        import ray

        refs: list[Any] = [self.hub.close_producer.remote(run_id, p) for p in producers]
        if refs and timeout is not None:
            ray.wait(refs, num_returns=len(refs), timeout=timeout)
