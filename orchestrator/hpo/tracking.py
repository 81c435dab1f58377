"""The study's subscriber to the hub's released events: trial events to their pruning, all to the listener.

``StudyEvents.receive`` takes each batch of events the hub releases (any run's), keeps those of
the study (its own ``hpo_<study>`` run and its trials' runs), hands each trial's events to the
callback routed for its run (``TrialPruning.observe``), then the batch to the listener (the CLI's
lines, the events file), and notices the study's ``study_complete``. The study subscribes it to
``orchestrator.events.stream``, the one follower of the hub.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from orchestrator.events.record import EventRecord
from orchestrator.messages import HpoTrial

__all__ = ["Listener", "StudyEvents"]

log = logging.getLogger(__name__)

Listener = Callable[[list[EventRecord]], None]


class StudyEvents:
    """Routes released events to the study's trials and listener (pure: no Ray, thread-safe)."""

    def __init__(self, study_run_id: str, listener: Listener | None = None) -> None:
        self.study_run_id = study_run_id
        self._listener = listener
        self._routes: dict[str, Callable[[EventRecord], None]] = {}
        # A trial's late events (after its route is gone) still go to the listener.
        self._run_ids = {study_run_id}
        self._lock = threading.Lock()
        self._ended = threading.Event()

    def route(self, run_id: str, callback: Callable[[EventRecord], None]) -> None:
        with self._lock:
            self._routes[run_id] = callback
            self._run_ids.add(run_id)

    def unroute(self, run_id: str) -> None:
        with self._lock:
            self._routes.pop(run_id, None)

    def receive(self, events: Sequence[EventRecord]) -> None:
        """One batch of released events, in hub order (the subscriber's entry point)."""
        with self._lock:
            mine = [e for e in events if e.run_id in self._run_ids]
            routes = dict(self._routes)
        for event in mine:
            callback = routes.get(event.run_id)
            if callback is not None:
                try:
                    callback(event)
                except Exception:
                    log.exception("HPO: handling event %s of %s failed", event.type, event.run_id)
            if event.run_id == self.study_run_id and event.type == "hpo_trial":
                message = event.message
                if isinstance(message, HpoTrial) and message.state == "study_complete":
                    self._ended.set()
        if mine and self._listener is not None:
            try:
                self._listener(mine)
            except Exception:
                log.exception("HPO: the event listener failed")

    def wait_ended(self, timeout: float) -> bool:
        """Wait until the study's ``study_complete`` event went through ``receive``."""
        return self._ended.wait(timeout)
