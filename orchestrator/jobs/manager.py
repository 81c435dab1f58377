"""Runs started by the server (and scripts): queued, admitted by resources, one background thread per running run.

The API's routes are a few lines around this class. ``submit`` records a run in the job store as
``queued`` and puts it in the ``JobQueue`` (``orchestrator.jobs.admission``); when the queue admits it, the
run's work happens in ``execute_run`` on a thread. HPO trials wait in the same queue
(``wait_turn``/``done``). The Ray executors of all runs share one ``WorkerPool`` so fold actors
stay warm between runs (and HPO trials).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from orchestrator.config import TrainConfig
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.events.record import EventRecord
from orchestrator.execution.base import FoldExecutor
from orchestrator.execution.local import LocalExecutor
from orchestrator.execution.placement import ClusterView, ResourceShape
from orchestrator.jobs.admission import ask_of, default_capacity
from orchestrator.jobs.coordinated import CoordinatedRuns
from orchestrator.jobs.policy import Ask
from orchestrator.jobs.queue import JobKind, JobQueue
from orchestrator.lifecycle import (
    FOLLOWED_TYPES,
    INTERRUPTED_PREFIX,
    Run,
    RunState,
    ended_state,
)
from orchestrator.messages import TrainingError
from orchestrator.run.driver import execute_run, new_run
from orchestrator.store.runs import store_row

__all__ = ["RunManager", "UnknownRunError", "QUEUED_CANCEL_MESSAGE"]

log = logging.getLogger(__name__)

# The training_error of a run cancelled before it started (" was cancelled": lifecycle.ended_state).
QUEUED_CANCEL_MESSAGE = "run {run_id} was cancelled while queued (it never started)"
# How often a trial waiting in the queue looks at its cancel switch.
_TURN_POLL_S = 0.2


class UnknownRunError(OrchestratorError):
    """No run with this id is known."""


class RunManager:
    """Queues, starts, tracks and cancels runs; as many train at once as the queue admits.

    ``queue``: the ``JobQueue`` (default: one over the Ray cluster if Ray is up, else this
    machine, no cap on running runs). ``record`` (the hub's ``record_run``) adds each submitted
    run to the job store, before the run's first event, so the store lists it with its config and
    priority; ``record_admission`` (the hub's ``admit_run``) marks its row ``pending``, with the
    config it was admitted with, when the queue lets it start, so a restart queues again only
    what never started. With ``coordinate_in`` (a Ray namespace: ``serve`` on an existing cluster) a Ray
    run is driven by a detached coordinator actor there (``orchestrator.jobs.coordinator``); this
    process only follows it (``observe``), and ``shutdown`` leaves it running."""

    def __init__(
        self,
        sink: Any,
        *,
        pool: Any | None = None,
        keep: int = 200,
        queue: JobQueue | None = None,
        record: Callable[[dict[str, Any]], None] | None = None,
        coordinate_in: str | None = None,
        record_admission: Callable[[str, str], None] | None = None,
    ) -> None:
        self.sink = sink
        self.pool = pool
        self.record = record
        self.record_admission = record_admission
        self.coordinate_in = coordinate_in
        self.queue = queue if queue is not None else JobQueue(default_capacity)
        self.coordinated = CoordinatedRuns(self._end_unstarted)
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
        """The runs admitted and not ended (queued runs are in ``queued``)."""
        with self._lock:
            return [run for run in self._runs.values() if not run.done and run.state is not RunState.QUEUED]

    def queued(self) -> list[Run]:
        """The queued runs in queue order."""
        order = self.queue.queued_ids()
        with self._lock:
            return [self._runs[run_id] for run_id in order if run_id in self._runs]

    def queue_position(self, run_id: str) -> int | None:
        return self.queue.position(run_id)

    def describe_queue(self) -> dict[str, Any]:
        """``GET /queue``: ``JobQueue.describe``, and the idle warm fold actors this process holds
        (counted free: a run that cannot use them gets their resources at its admission)."""
        return {
            **self.queue.describe(),
            "idle_warm_workers": 0 if self.pool is None else self.pool.idle_count(),
        }

    def submit(
        self, config: TrainConfig, *, priority: int = 0, extra_summary: dict[str, Any] | None = None
    ) -> Run:
        """Queue a run (it may start before this returns). ``ResourceError`` (a ``ConfigError``)
        when no node could ever hold one of its folds."""
        ask = ask_of(config)
        view = self.queue.check(ask)
        run = new_run(config, priority=priority, state=RunState.QUEUED)
        return self._enqueue(run, self._starter(run, extra_summary), ask, view=view)

    def _enqueue(
        self,
        run: Run,
        on_admit: Callable[[int], None],
        ask: Ask,
        *,
        kind: JobKind = "run",
        study: str | None = None,
        record: bool = True,
        admit: bool = True,
        view: ClusterView | None = None,
    ) -> Run:
        if record and self.record is not None:
            self.record(store_row(run))
        with self._lock:
            self._runs[run.run_id] = run
            self._trim()
        self.queue.put(
            run.run_id,
            run.priority,
            ask,
            on_admit,
            submitted_at=run.created_at,
            kind=kind,
            study=study,
            admit=admit,
            view=view,
        )
        return run

    def _admitted(self, run: Run, slots: int) -> None:
        """The queue admitted ``run`` with ``slots`` folds in flight at most; a failure here ends
        the run ``failed`` (the queue then gives its slots back)."""
        try:
            if slots < (run.config.max_concurrent_folds or run.config.total_folds):
                run.config = run.config.model_copy(update={"max_concurrent_folds": slots})
            if self.record_admission is not None:
                self.record_admission(run.run_id, run.config.model_dump_json())
            run.transition(RunState.PENDING)
        except Exception as err:
            self._end_unstarted(run, f"run {run.run_id} could not start: {type(err).__name__}: {err}")
            raise

    def _starter(self, run: Run, extra_summary: dict[str, Any] | None = None) -> Callable[[int], None]:
        """What the queue calls when it admits ``run``: start its thread."""

        def start(slots: int) -> None:
            self._admitted(run, slots)
            thread = threading.Thread(
                target=self._execute, args=(run, extra_summary), name=f"run-{run.run_id}", daemon=True
            )
            thread.start()
            self._threads[run.run_id] = thread

        return start

    # ---- HPO trials: runs executed by their study's threads, admitted by the same queue --------

    def wait_turn(self, run: Run, *, study: str, cancel: threading.Event | None = None) -> bool:
        """Queue a trial's ``run`` (state QUEUED, ``run.priority`` set) and block until the queue
        admits it (True) or it ends while queued: cancelled (``run.request_cancel``, ``cancel`` or
        ``POST /runs/{id}/cancel``) or failed to start (False). Call ``done(run)`` once it has run.
        ``ResourceError`` when no node could ever hold one of its folds."""
        ask = ask_of(run.config)
        view = self.queue.check(ask)
        admitted = threading.Event()

        def on_admit(slots: int) -> None:
            self._admitted(run, slots)
            admitted.set()

        self._enqueue(run, on_admit, ask, kind="trial", study=study, view=view)
        while not admitted.wait(_TURN_POLL_S):
            if run.done:  # cancelled through the API, or it could not start
                return False
            stop = run.cancel_requested.is_set() or (cancel is not None and cancel.is_set())
            if stop and self._cancel_queued(run):
                return False
        return True

    def done(self, run: Run) -> None:
        """A run admitted through ``wait_turn`` has ended: what it held is free."""
        self.queue.release(run.run_id)

    def restore_queue(self, store: Any) -> list[str]:
        """After a restart: queue again the runs the job store has ``queued`` (their order, priority
        and submit time kept; one admission pass once all are back). A queued HPO trial, whose study
        session ended with the old process, ends ``interrupted``; a row that cannot run (a config
        this version refuses, resources no node of this cluster holds) ends ``failed`` naming why.
        Returns the runs queued again."""
        restored = []
        view = self.queue.capacity()  # read once for every row
        for row in store.queued_runs():
            try:
                config = TrainConfig.model_validate(row["config"])
                problem = None
            except ValueError as err:
                config = TrainConfig()
                problem = f"run {row['run_id']} cannot be queued again: its stored config is refused: {err}"
            run = Run(
                run_id=row["run_id"],
                config=config,
                run_dir=row["run_dir"] or "",
                created_at=row["created_at"],
                priority=row["priority"],
                state=RunState.QUEUED,
            )
            if problem is None and run.run_id.startswith("hpo_"):
                problem = (
                    f"{INTERRUPTED_PREFIX}its study's session ended with the server before the "
                    "trial started; resume the study (POST /hpo) to run it"
                )
            if problem is None:
                try:
                    self.queue.check(ask_of(run.config), view)
                except ConfigError as err:
                    problem = f"run {run.run_id} cannot be queued again: {err}"
            if problem is not None:
                with self._lock:
                    self._runs[run.run_id] = run
                self._end_unstarted(run, problem)
                continue
            self._enqueue(run, self._starter(run), ask_of(run.config), record=False, admit=False)
            restored.append(run.run_id)
        self.queue.admit(view)
        return restored

    def _execute(self, run: Run, extra_summary: dict[str, Any] | None) -> None:
        try:
            if self.coordinate_in is not None and run.config.executor == "ray":
                self._give_back_idle_workers(run)
                self.coordinated.drive(run, self.coordinate_in, extra_summary)
                return
            executor = self._executor_for(run.config)
            try:
                execute_run(run, self.sink, executor, extra_summary=extra_summary)
            finally:
                if isinstance(executor, LocalExecutor):
                    executor.shutdown()
        finally:
            self.queue.release(run.run_id)

    def _give_back_idle_workers(self, run: Run) -> None:
        """The queue admitted ``run`` against the cluster's resources, which this process's idle
        warm actors (an HPO study's) may hold while the queue counts them free; its coordinator
        places its own folds and cannot use them, so they go first (else its folds would wait
        for resources the ledger calls free, and fail after ``placement_timeout_s``)."""
        if self.pool is not None and (released := self.pool.discard_idle()):
            log.info(
                "run %s: %d idle warm fold actor(s) given back for its coordinator", run.run_id, released
            )

    def adopt(self, run: Run, coordinator: Any) -> None:
        """Follow a run whose coordinator an earlier server process started (after a restart):
        ``run`` is its mirror, rebuilt from its stored events; cancel goes to ``coordinator``."""
        with self._lock:
            self._runs[run.run_id] = run
        if run.done:
            return
        # what it holds counts against the queue until its coordinator ends: its admitted cap
        slots = run.config.max_concurrent_folds or run.config.total_folds
        self.queue.hold(run.run_id, ResourceShape.of(run.config), slots)
        thread = threading.Thread(
            target=self._watch_adopted, args=(run, coordinator), name=f"adopted-{run.run_id}", daemon=True
        )
        thread.start()
        self._threads[run.run_id] = thread

    def _watch_adopted(self, run: Run, coordinator: Any) -> None:
        try:
            self.coordinated.watch(run, coordinator)
        finally:
            self.queue.release(run.run_id)

    def get(self, run_id: str) -> Run:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise UnknownRunError(f"no run with run_id={run_id!r}")
        return run

    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._runs.values())

    def observe(self, record: EventRecord) -> None:
        """A released event: the progress of its run (and, for a run of a coordinator, its state);
        only the types a run reads are parsed."""
        if record.type not in FOLLOWED_TYPES:
            return
        with self._lock:
            run = self._runs.get(record.run_id)
        if run is not None:
            run.observe(record.message)
            if record.run_id in self.coordinated:
                run.follow(record.message)

    def cancel(self, run_id: str) -> Run:
        """Stop a run: a queued one ends ``cancelled`` at once, a running one at its next epoch."""
        run = self.get(run_id)
        if self._cancel_queued(run):
            return run
        run.request_cancel()
        self.coordinated.cancel(run_id)
        return run

    def _cancel_queued(self, run: Run) -> bool:
        """Take ``run`` out of the queue and end it ``cancelled``; False when it was not queued."""
        if not self.queue.remove(run.run_id):
            return False
        run.request_cancel()
        self._end_unstarted(run, QUEUED_CANCEL_MESSAGE.format(run_id=run.run_id))
        return True

    def _end_unstarted(self, run: Run, error: str) -> None:
        """End a run that never started, or whose coordinator died, with its one
        ``training_error`` event (the store's row, ``GET /`` and ``/ws`` follow it) and its
        terminal state (the state even when the event cannot be sent)."""
        try:
            self.sink.register_run(run.run_id, run.run_dir)
            publisher = self.sink.publisher(run.run_id, "queue")
            publisher.publish(TrainingError(error=error))
            publisher.flush(timeout=10.0)
        except Exception:
            log.exception("run %s: its training_error could not be sent (%s)", run.run_id, error)
        if not run.done:
            run.transition(ended_state(error), error=error)

    def wait(self, run_id: str, timeout: float | None = None) -> Run:
        """Wait for the run to end (a queued run: to start, then end), at most ``timeout`` s."""
        run = self.get(run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while (thread := self._threads.get(run_id)) is None and not run.done:
            if deadline is not None and time.monotonic() >= deadline:
                return run
            time.sleep(0.05)
        if thread is not None:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return run

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel this process's runs and wait for them; runs of coordinators go on, and queued
        runs stay queued in the job store (the next server admits them)."""
        self.queue.close()
        local = [run for run in self.active() if run.run_id not in self.coordinated]
        for run in local:
            run.request_cancel()
        for run_id, thread in list(self._threads.items()):
            if run_id not in self.coordinated:
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
