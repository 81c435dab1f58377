"""Runs started by the server (and scripts): a registry, one background thread per run.

The API's routes are a few lines around this class. A run's work happens in ``execute_run`` on a
thread; the Ray executors of all runs share one ``WorkerPool`` so fold actors stay warm between
runs (and HPO trials).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from orchestrator.config import TrainConfig
from orchestrator.driver import execute_run, new_run
from orchestrator.errors import OrchestratorError
from orchestrator.execution.base import FoldExecutor
from orchestrator.execution.local import LocalExecutor
from orchestrator.lifecycle import TERMINAL_STATES, Run, RunState

__all__ = ["RunManager", "RunConflictError", "UnknownRunError", "store_row"]


class RunConflictError(OrchestratorError):
    """Another run is active and the manager runs one at a time."""


class UnknownRunError(OrchestratorError):
    """No run with this id is known."""


def store_row(run: Run, priority: int = 0) -> dict[str, Any]:
    """The run as a new row of the job store's runs table (``EventHub.record_run``)."""
    return {
        "run_id": run.run_id, "state": run.state.value, "config": run.config.model_dump_json(),
        "priority": priority, "created_at": run.created_at, "run_dir": run.run_dir,
    }  # fmt: skip


class RunManager:
    """Starts, tracks and cancels runs. One active run at a time unless ``max_active`` says more.

    ``record`` (the hub's ``record_run``) adds each submitted run to the job store, before the
    run's first event, so the store lists it with its config. With ``coordinate_in`` (a Ray
    namespace: ``serve`` on an existing cluster) a Ray run is driven by a detached coordinator
    actor there (``orchestrator.coordinator``); this process only follows it (``observe``), and
    ``shutdown`` leaves it running."""

    def __init__(
        self, sink: Any, *, pool: Any | None = None, max_active: int = 1, keep: int = 200,
        record: Callable[[dict[str, Any]], None] | None = None, coordinate_in: str | None = None,
    ) -> None:
        self.sink = sink
        self.pool = pool
        self.record = record
        self.coordinate_in = coordinate_in
        self._coordinators: dict[str, Any] = {}
        self.max_active = max_active
        self._keep = keep
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def _executor_for(self, config: TrainConfig) -> FoldExecutor:
        if config.executor == "local":
            return LocalExecutor()
        from orchestrator.execution.ray import RayExecutor

        return RayExecutor(pool=self.pool)

    def active(self) -> list[Run]:
        with self._lock:
            return [run for run in self._runs.values() if not run.done]

    def submit(self, config: TrainConfig, *, extra_summary: dict[str, Any] | None = None) -> Run:
        with self._lock:
            busy = [run.run_id for run in self._runs.values() if not run.done]
            if len(busy) >= self.max_active:
                raise RunConflictError(
                    f"run {busy[0]} is still active; cancel it (POST /runs/{busy[0]}/cancel) or "
                    "wait for it to end before starting another"
                )
            run = new_run(config)
            self._runs[run.run_id] = run
            self._trim()
        if self.record is not None:
            self.record(store_row(run))
        thread = threading.Thread(
            target=self._execute, args=(run, extra_summary), name=f"run-{run.run_id}", daemon=True
        )
        self._threads[run.run_id] = thread
        thread.start()
        return run

    def _execute(self, run: Run, extra_summary: dict[str, Any] | None) -> None:
        if self.coordinate_in is not None and run.config.executor == "ray":
            self._execute_in_cluster(run, extra_summary)
            return
        executor = self._executor_for(run.config)
        try:
            execute_run(run, self.sink, executor, extra_summary=extra_summary)
        finally:
            if isinstance(executor, LocalExecutor):
                executor.shutdown()

    def _execute_in_cluster(self, run: Run, extra_summary: dict[str, Any] | None) -> None:
        import ray

        from orchestrator.coordinator import launch_coordinator

        assert self.coordinate_in is not None
        handle = launch_coordinator(run, self.coordinate_in)
        with self._lock:
            self._coordinators[run.run_id] = handle
        if run.cancel_requested.is_set():
            handle.cancel.remote()
        try:
            final: dict[str, Any] = ray.get(handle.execute.remote(extra_summary))
        except Exception as err:  # the coordinator died: its run cannot go on
            final = {"state": "failed", "error": f"the run's coordinator died: {err}", "summary_path": None}
        if not run.done:  # its events may not all have come through the hub yet
            run.summary_path = run.summary_path or final.get("summary_path")
            state = RunState(final["state"])
            if state is RunState.COMPLETED and run.state is RunState.PENDING:
                run.transition(RunState.RUNNING)
            if state in TERMINAL_STATES:
                run.transition(state, error=final.get("error"))

    def adopt(self, run: Run, coordinator: Any) -> None:
        """Follow a run whose coordinator an earlier server process started (after a restart):
        ``run`` is its mirror, rebuilt from its stored events; cancel goes to ``coordinator``."""
        with self._lock:
            self._runs[run.run_id] = run
            self._coordinators[run.run_id] = coordinator

    def get(self, run_id: str) -> Run:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise UnknownRunError(f"no run with run_id={run_id!r}")
        return run

    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._runs.values())

    def observe(self, event: dict[str, Any]) -> None:
        run_id = event.get("run_id")
        if run_id is None:
            return
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            run.observe(event)
            if run_id in self._coordinators:
                run.follow(event)

    def cancel(self, run_id: str) -> Run:
        run = self.get(run_id)
        run.request_cancel()
        handle = self._coordinators.get(run_id)
        if handle is not None:
            handle.cancel.remote()
        return run

    def wait(self, run_id: str, timeout: float | None = None) -> Run:
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(run_id)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel this process's runs and wait for them; runs of coordinators go on."""
        local = [run for run in self.active() if run.run_id not in self._coordinators]
        for run in local:
            run.request_cancel()
        for run_id, thread in list(self._threads.items()):
            if run_id not in self._coordinators:
                thread.join(timeout)
        if self.pool is not None:
            self.pool.shutdown()

    def _trim(self) -> None:
        while len(self._runs) > self._keep:
            oldest = next(iter(self._runs))
            if not self._runs[oldest].done:
                break
            self._runs.pop(oldest)
            self._threads.pop(oldest, None)
