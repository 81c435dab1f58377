"""A hub on the job store: the store's lease taken, its seq continued, the runs of a writer that is gone marked interrupted, or its runs rebuilt when Ray restarted it.

A hub's state (each run's producers' positions, seqs, retry keys, milestones) lives in its
process; the store has every event it released and each producer's position. A hub that Ray
restarts after its process died (``max_restarts``) is the same writer: its runs go on (their
coordinators and folds did not die), so it rebuilds them from the store (``restore_runs``)
instead of marking them interrupted, and producers' calls that were in flight are retried by Ray
and recognised by their pseq.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.events.hub import EventHub
from orchestrator.events.recorder import StoreRecorder, open_recorder
from orchestrator.messages import TrainingError
from orchestrator.store import JobStore
from orchestrator.store.runs import INTERRUPTED_PREFIX

__all__ = ["mark_interrupted", "hub_on_store", "restore_runs"]

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


def restore_runs(hub: EventHub, store: JobStore, *, recent: int = 20) -> list[str]:
    """Rebuild ``hub`` (just restarted by Ray) from the store: every unfinished run, and the
    ``recent`` newest ones (a client resuming after the restart asks which ran at a past seq),
    each from its stored events and its producers' positions. Returns the unfinished runs."""
    unfinished = {run_id: run_dir for run_id, run_dir, _ in store.unfinished_runs()}
    runs = dict(unfinished)
    for row in reversed(store.list_runs(limit=recent)):  # oldest first: the newest are kept
        runs.setdefault(row["run_id"], row["run_dir"])
    for run_id, run_dir in runs.items():
        records = store.events_since(0, run_id)
        if records or run_id in unfinished:
            hub.restore_run(run_id, run_dir, records, store.producer_positions(run_id))
    if unfinished:
        log.warning(
            "restarted: %d unfinished run(s) of %s rebuilt: %s",
            len(unfinished),
            store.where,
            ", ".join(unfinished),
        )
    return list(unfinished)


def hub_on_store(store_url: str, **hub_kwargs: Any) -> tuple[EventHub, StoreRecorder]:
    """An in-process hub writing the store at ``store_url`` (its lease taken, orphans marked);
    close the recorder when done."""
    recorder = open_recorder(store_url)
    hub = EventHub(recorder=recorder, **hub_kwargs)
    mark_interrupted(hub, recorder.store)
    return hub, recorder
