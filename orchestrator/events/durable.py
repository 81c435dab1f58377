"""A hub on the job store: the store's lease taken, its seq continued, the runs of a writer that is gone
marked interrupted."""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.events.hub import EventHub
from orchestrator.events.recorder import StoreRecorder, open_recorder
from orchestrator.messages import TrainingError
from orchestrator.store import JobStore
from orchestrator.store.runs import INTERRUPTED_PREFIX

__all__ = ["mark_interrupted", "hub_on_store"]

log = logging.getLogger(__name__)


def mark_interrupted(hub: EventHub, store: JobStore) -> list[str]:
    """End every unfinished run of the store with a ``training_error`` saying it was interrupted.

    Called by a hub that has just taken the store's lease: no other writer is left, so a run the
    store still has pending or running lost its lease owner (the process, or the Ray instance,
    that ran it is gone). Its row becomes ``interrupted``. Returns the runs so marked.
    """
    marked = []
    for run_id, run_dir, owner in store.unfinished_runs():
        hub.register_run(run_id, run_dir)
        error = (
            f"{INTERRUPTED_PREFIX}the process that ran it ({owner or 'unknown'}) ended "
            "before the run did; start it again"
        )
        hub.publish(run_id, "store", 0, TrainingError(error=error))
        marked.append(run_id)
    if marked:
        log.warning("marked %d run(s) of %s interrupted: %s", len(marked), store.where, ", ".join(marked))
    return marked


def hub_on_store(store_url: str, **hub_kwargs: Any) -> tuple[EventHub, StoreRecorder]:
    """An in-process hub writing the store at ``store_url`` (its lease taken, orphans marked);
    close the recorder when done."""
    recorder = open_recorder(store_url)
    hub = EventHub(recorder=recorder, **hub_kwargs)
    mark_interrupted(hub, recorder.store)
    return hub, recorder
