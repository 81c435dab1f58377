"""Runs this server follows while their coordinator actors drive them in the cluster: launched or adopted, cancelled, ended everywhere if a coordinator dies.

On ``serve --address`` a Ray run is driven by a detached ``RunCoordinator``
(``orchestrator.jobs.coordinator``); this process holds its handle, follows the run's events (the
run mirror's state comes from them) and waits for the coordinator's end on the run's own thread.
A coordinator that dies (``kill -9``, its node lost) ends nothing by itself: its run would stay
``running`` in the store, in ``GET /`` and for every ``/ws`` client following it. So the waiting
thread ends it with ``end_run``, which publishes the run's ``training_error`` through the hub
(the store's row, the hub's running runs and every client follow that one event); the hub keeps
a run to one terminal event, so a coordinator that ended its run just before it died is not
contradicted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from orchestrator.lifecycle import TERMINAL_STATES, Run, RunState

__all__ = ["CoordinatedRuns", "coordinator_died"]

log = logging.getLogger(__name__)


def coordinator_died(run_id: str, err: BaseException) -> str:
    """The ``training_error`` of a run whose coordinator died."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"run {run_id} failed: its coordinator died before the run ended ({reason})"


class CoordinatedRuns:
    """The handles of the coordinators this server follows, by run id (thread-safe).

    ``end_run(run, error)`` ends a run whose coordinator died: its ``training_error`` published,
    its mirror ended."""

    def __init__(self, end_run: Callable[[Run, str], None]) -> None:
        self._end_run = end_run
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __contains__(self, run_id: object) -> bool:
        with self._lock:
            return run_id in self._handles

    def cancel(self, run_id: str) -> bool:
        """Ask the run's coordinator to stop the run; False when none is known."""
        with self._lock:
            handle = self._handles.get(run_id)
        if handle is None:
            return False
        handle.cancel.remote()
        return True

    def drive(self, run: Run, namespace: str, extra_summary: dict[str, Any] | None = None) -> None:
        """Launch ``run``'s coordinator in ``namespace`` and wait for the run's end (on the run's
        thread); the mirror ends with the coordinator's final snapshot if its events have not
        ended it already."""
        from orchestrator.jobs.coordinator import launch_coordinator

        handle = launch_coordinator(run, namespace, extra_summary)
        self._add(run.run_id, handle)
        if run.cancel_requested.is_set():
            handle.cancel.remote()
        final = self._wait(run, handle)
        if final is None or run.done:  # its events may not all have come through the hub yet
            return
        run.summary_path = run.summary_path or final.get("summary_path")
        state = RunState(final["state"])
        if state is RunState.COMPLETED and run.state is RunState.PENDING:
            run.transition(RunState.RUNNING)
        if state in TERMINAL_STATES:
            run.transition(state, error=final.get("error"))

    def watch(self, run: Run, handle: Any) -> None:
        """Follow a run whose coordinator an earlier server process started, until it ends (the
        run's events end its mirror)."""
        self._add(run.run_id, handle)
        self._wait(run, handle)

    def _add(self, run_id: str, handle: Any) -> None:
        with self._lock:
            self._handles[run_id] = handle

    def _wait(self, run: Run, handle: Any) -> dict[str, Any] | None:
        """The coordinator's final snapshot, or None when it died (its run then ended here)."""
        import ray

        try:
            final: dict[str, Any] = ray.get(handle.result.remote())
            return final
        except Exception as err:  # the coordinator is gone: its run cannot go on
            if not run.done:
                error = coordinator_died(run.run_id, err)
                log.error("%s", error)
                self._end_run(run, error)
            return None
