"""Where the driver and the folds send events: the EventHub, in-process or as a Ray actor.

Both sinks hand out publishers with the same three methods (``publish``, ``flush``, ``wants``); a
producer numbers its own events so the hub can restore their order (DESIGN 3), and asks
``wants(type)`` before optional work that only a consumer of that type would see.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

from orchestrator.hub import EventHub
from orchestrator.messages import MESSAGE_TYPES, to_wire

__all__ = ["EventSink", "InProcessSink", "LocalPublisher", "event_dict"]

Listener = Callable[[list[dict[str, Any]]], None]


def event_dict(event: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """The wire dict of an event without the envelope (the hub stamps run_id, seq, ts)."""
    data = to_wire(event) if isinstance(event, BaseModel) else dict(event)
    for key in ("run_id", "seq", "ts"):
        data.pop(key, None)
    return data


class PublisherLike(Protocol):
    def publish(self, event: Any) -> None: ...

    def flush(self, timeout: float | None = None) -> object: ...

    def wants(self, kind: str) -> bool: ...


class EventSink(Protocol):
    def register_run(self, run_id: str, run_dir: str | None) -> None: ...

    def publisher(self, run_id: str, producer: str) -> PublisherLike: ...


class LocalPublisher:
    """Publishes synchronously into an in-process hub and tells the listener what was released."""

    def __init__(self, sink: "InProcessSink", run_id: str, producer: str) -> None:
        self._sink = sink
        self._run_id = run_id
        self._producer = producer
        self._pseq = 0

    def publish(self, event: BaseModel | dict[str, Any]) -> None:
        self._sink.publish(self._run_id, self._producer, self._pseq, event_dict(event))
        self._pseq += 1

    def flush(self, timeout: float | None = None) -> None:
        """Nothing is in flight: publish is synchronous."""

    def wants(self, kind: str) -> bool:
        return self._sink.wants(kind)


class InProcessSink:
    """A plain ``EventHub`` in this process (the ``local`` executor and the CLI).

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
        self._lock = threading.Lock()
        if interest is None:
            interest = frozenset(MESSAGE_TYPES) if listener is not None else frozenset()
        self.interest = interest

    def wants(self, kind: str) -> bool:
        return kind in self.interest or kind in self.hub.wanted()

    def register_run(self, run_id: str, run_dir: str | None) -> None:
        with self._lock:
            self.hub.register_run(run_id, run_dir)

    def publisher(self, run_id: str, producer: str) -> LocalPublisher:
        return LocalPublisher(self, run_id, producer)

    def publish(self, run_id: str, producer: str, pseq: int, event: dict[str, Any]) -> None:
        with self._lock:
            released = self.hub.publish(run_id, producer, pseq, event)
        if released and self._listener is not None:
            self._listener(released)
