"""Trains a run's folds in parallel on warm Ray actors, carrying out the scheduler's decisions.

The dataset is put in the object store once per run; every fold gets a reference. The
``FoldScheduler`` decides which fold gets a worker, what a failure means and when the run ends;
the loop here only talks to Ray: it pings a worker until it is up, runs the fold on it, waits,
and feeds back what came of each call. Actors belong to the run until it ends, and a finished
fold's actor takes the next fold, or one still waiting for a new actor.

Whatever ends the run early (a failure, a cancel), the folds still training are asked to stop at
their next epoch, given ``CANCEL_GRACE_S``, then killed; their producers are closed in the hub
before ``run_folds`` returns, so no fold event can arrive after the run's terminal event. When
the run completes (or fails), its healthy actors go back to the pool; after a cancel every actor
that worked on the run is killed (``keep_workers_on_cancel`` keeps them warm).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import (
    NodeDiedError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from orchestrator.config import TrainConfig
from orchestrator.errors import OrchestratorError, RunCancelledError
from orchestrator.execution.base import FoldJob, ResultCallback, fold_producer
from orchestrator.execution.cluster import cluster_view, free_resources, is_placed
from orchestrator.execution.placement import (
    ClusterView,
    Placement,
    ResourceShape,
    concurrency_limit,
    fold_placement,
    reachable_resources,
    scale_up_types,
)
from orchestrator.execution.pool import Worker, WorkerPool
from orchestrator.execution.scheduler import (
    EndRun,
    FoldScheduler,
    RetryPolicy,
    Train,
    launch_order,
)
from orchestrator.messages import Notification
from workers.fold import FoldContext, FoldResult

__all__ = ["RayExecutor"]

log = logging.getLogger(__name__)

# Seconds a stopped fold gets to finish its epoch and flush its events before its actor is killed.
CANCEL_GRACE_S = 2.0
# How often the driver wakes to check for cancels and placement timeouts while folds run.
WAIT_SLICE_S = 0.2
# What a dead worker process looks like to the caller of one of its methods.
_WORKER_DEATH: tuple[type[BaseException], ...] = (
    RayActorError,
    WorkerCrashedError,
    OutOfMemoryError,
    NodeDiedError,
)


class RayExecutor:
    """Trains a run's folds concurrently on fold-trainer actors from ``pool``.

    ``current_pids`` maps fold_id to the worker pid of its latest attempt in the current (or
    last) run, and ``run_actor_names`` holds the names of every actor that worked on it.

    After a cancel the run's actors are killed (a user's cancel leaves nothing of the run
    behind); ``keep_workers_on_cancel=True`` keeps the ones that stopped cleanly warm instead,
    for callers that cancel as a matter of course (HPO pruning).
    """

    name = "ray"

    def __init__(self, pool: WorkerPool | None = None, *, keep_workers_on_cancel: bool = False) -> None:
        self.pool = pool or WorkerPool()
        self.keep_workers_on_cancel = keep_workers_on_cancel
        self.current_pids: dict[int, int] = {}
        self.run_actor_names: set[str] = set()

    def shutdown(self) -> None:
        self.pool.shutdown()

    def prestart(self, config: TrainConfig) -> int:
        """Start the fold actors a run of ``config`` will use (as many as run at once), now."""
        shape = ResourceShape.of(config)
        limit = concurrency_limit(
            shape, reachable_resources(cluster_view()), config.total_folds, config.max_concurrent_folds
        )
        return self.pool.prestart(shape, limit)

    def run_folds(self, job: FoldJob, on_result: ResultCallback) -> None:
        shape = ResourceShape.of(job.config)
        view = cluster_view()
        # Fails at once when no node, live or one the autoscaler may add, could host a fold.
        placement = fold_placement(shape, view)
        self.current_pids.clear()
        self.run_actor_names.clear()
        _FoldRun(self, job, shape, view, placement, on_result).execute()


@dataclass
class _Call:
    """A call in flight on a worker: its ``ping`` (it is coming up) or its fold's run."""

    fold_id: int
    attempt: int
    worker: Worker
    ping: bool
    since: float = field(default_factory=time.monotonic)


class _FoldRun:
    """The folds of one run on Ray: the scheduler's decisions, carried out (module doc)."""

    def __init__(
        self,
        executor: RayExecutor,
        job: FoldJob,
        shape: ResourceShape,
        view: ClusterView,
        placement: Placement,
        on_result: ResultCallback,
    ) -> None:
        self.executor = executor
        self.pool = executor.pool
        self.job = job
        self.config = job.config
        self.shape = shape
        self.placement = placement
        self.on_result = on_result
        self.specs = {spec.fold_id: spec for spec in job.specs}
        capacity = self._capacity(view)
        self.scheduler = FoldScheduler(
            job.run_id,
            launch_order(job.specs, capacity),
            limit=capacity,
            policy=RetryPolicy(self.config.max_retries, self.config.placement_timeout_s),
            shape=shape,
            scale_up=scale_up_types(shape, view),
        )
        self.calls: dict[Any, _Call] = {}  # ObjectRef of a ping or a run -> the call
        self.free: list[Worker] = []  # this run's actors between two folds
        self.producers: list[str] = []
        self.notices = job.sink.publisher(job.run_id, "executor")
        self.features_ref: Any = None
        self.finished: list[FoldResult] = []  # results not yet handed to on_result, in order

    def execute(self) -> None:
        completed = False
        try:
            if self.placement is Placement.AFTER_SCALE_UP:
                self._announce_scale_up()
            self.features_ref = self.pool.put_features(self.job.features)  # shared by every fold
            while not self.scheduler.finished:
                if self.job.cancel_event.is_set():
                    raise self.scheduler.cancel_requested().error
                self._move_to_free_workers()
                for launch in self.scheduler.launches():
                    if self.free and self.free[-1].pid is not None:
                        # a worker of this run whose fold just returned: alive, no ping needed
                        self._submit(self.scheduler.started(launch.fold_id), self.free.pop())
                        continue
                    worker = self.free.pop() if self.free else self._acquire()
                    self._ping(launch.fold_id, launch.attempt, worker)
                self._deliver()  # the driver's work on finished folds, once the next ones train
                self._check_placement()
                for ref in self._wait():
                    call = self.calls.pop(ref)
                    if call.ping:
                        self._on_started(ref, call)
                    else:
                        self._on_finished(ref, call)
            self._deliver()
            completed = True
        finally:
            self._end(completed)

    # ---- one step at a time ------------------------------------------------------------------

    def _capacity(self, view: ClusterView) -> int:
        """How many folds ``view`` can hold at a time, capped by ``max_concurrent_folds``."""
        return concurrency_limit(
            self.shape, reachable_resources(view), len(self.specs), self.config.max_concurrent_folds
        )

    def _announce_scale_up(self) -> None:
        types = " or ".join(self.scheduler.scale_up)
        message = (
            f"no live node can host a fold with {self.shape.describe()}: waiting up to "
            f"placement_timeout_s={self.config.placement_timeout_s:g} for the autoscaler to "
            f"add a node of type {types}"
        )
        log.info("run %s: %s", self.job.run_id, message)
        self.notices.publish(Notification(level="info", kind="autoscaling", message=message))

    def _acquire(self) -> Worker:
        worker = self.pool.acquire(self.shape)
        self.executor.run_actor_names.add(worker.name)
        return worker

    def _ping(self, fold_id: int, attempt: int, worker: Worker) -> None:
        # A warm actor answers at once; a new one once its process is up and torch imported.
        self.calls[worker.actor.ping.remote()] = _Call(fold_id, attempt, worker, ping=True)

    def _move_to_free_workers(self) -> None:
        """A fold waiting for a new actor (still starting, or not even placed) moves to a warm
        worker of this run whose fold has ended: it trains now rather than in seconds. The new
        actor stays with the run if it got a place (it will be warm for later folds and runs)."""
        ready = [w for w in self.free if w.pid is not None]
        for ref, call in list(self.calls.items()):
            if not ready:
                return
            if not call.ping or call.worker.pid is not None:  # training, or a warm worker
                continue
            worker = ready.pop()
            self.free.remove(worker)
            del self.calls[ref]
            if is_placed(call.worker.actor):
                self.free.insert(0, call.worker)
            else:
                self.pool.discard(call.worker)
            self._ping(call.fold_id, call.attempt, worker)

    def _wait(self) -> list[Any]:
        """The refs that are ready, after waiting at most WAIT_SLICE_S for the first one."""
        refs = list(self.calls)
        done, rest = ray.wait(refs, num_returns=1, timeout=WAIT_SLICE_S, fetch_local=False)
        if done and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            done += more
        return done

    def _check_placement(self) -> None:
        now = time.monotonic()
        pings = {call.fold_id: ref for ref, call in self.calls.items() if call.ping}
        decisions = self.scheduler.check_placement(
            {fold_id: now - self.calls[ref].since for fold_id, ref in pings.items()},
            placed=lambda fold_id: is_placed(self.calls[pings[fold_id]].worker.actor),
            free=free_resources,
        )
        for decision in decisions:
            if isinstance(decision, EndRun):
                raise decision.error
            self.pool.discard(self.calls.pop(pings[decision.fold_id]).worker)

    def _on_started(self, ref: Any, call: _Call) -> None:
        try:
            call.worker.pid = int(ray.get(ref))
        except _WORKER_DEATH as err:  # died before its first call: a new actor, not a new attempt
            self.pool.discard(call.worker)
            failed = self.scheduler.start_failed(call.fold_id, _short(err))
            if failed is not None:
                raise failed.error from err
            return
        self._submit(self.scheduler.started(call.fold_id), call.worker)

    def _submit(self, train: Train, worker: Worker) -> None:
        job = self.job
        producer = fold_producer(train.fold_id, train.attempt)
        self.producers.append(producer)
        self.executor.current_pids[train.fold_id] = worker.pid or 0
        context = FoldContext(job.run_id, job.training_started_at, train.attempt)
        publisher = job.sink.publisher(job.run_id, producer, batched=True)
        ref = worker.actor.run.remote(
            self.features_ref, self.specs[train.fold_id], self.config, context, publisher
        )
        self.calls[ref] = _Call(train.fold_id, train.attempt, worker, ping=False)

    def _on_finished(self, ref: Any, call: _Call) -> None:
        try:
            result = ray.get(ref)
        except _WORKER_DEATH as err:
            self.pool.discard(call.worker)
            self._close_producers([fold_producer(call.fold_id, call.attempt)], wait=False)
            capacity = self._capacity(cluster_view())  # a lost node took its resources along
            decision = self.scheduler.worker_died(call.fold_id, call.worker.pid, _short(err), capacity)
            if isinstance(decision, EndRun):
                raise decision.error from err
            self.notices.publish(decision.notice)
            return
        except RayTaskError as err:
            # A Python exception inside the fold: the worker is fine, and a retry would fail again.
            self.free.append(call.worker)
            cause = getattr(err, "cause", None)
            cancelled = isinstance(cause, RunCancelledError) and self.job.cancel_event.is_set()
            message = str(cause) if cancelled else _cause_text(err)
            raise self.scheduler.fold_raised(call.fold_id, message, cancelled=cancelled).error from err
        self.free.append(call.worker)
        self.scheduler.succeeded(call.fold_id)
        self.finished.append(dataclasses.replace(result, round_trip_seconds=time.monotonic() - call.since))

    def _deliver(self) -> None:
        """Hand the finished folds' results to the driver (``on_result``: its CSV, fold_complete)."""
        while self.finished:
            self.on_result(self.finished.pop(0))

    # ---- the end -----------------------------------------------------------------------------

    def _end(self, completed: bool) -> None:
        try:
            if not completed:
                self._stop_folds()
                self.scheduler.stop()
            cancelled = not completed and self.job.cancel_event.is_set()
            kill = cancelled and not self.executor.keep_workers_on_cancel
            for worker in self.free:
                # A cancel takes every actor of the run down with it; otherwise they stay warm.
                if kill:
                    self.pool.discard(worker)
                else:
                    self.pool.release(worker)
            self.free.clear()
            if not completed:
                self._close_producers(self.producers, wait=True)
        finally:
            self.notices.flush()

    def _stop_folds(self) -> None:
        """Ask the folds still training to stop; kill what has not stopped within the grace."""
        calls, self.calls = self.calls, {}
        # A placed actor still starting is healthy as far as anyone knows (its next user pings
        # it); one still waiting for resources would take them later, unasked: it goes.
        for call in calls.values():
            if call.ping:
                if is_placed(call.worker.actor):
                    self.free.append(call.worker)
                else:
                    self.pool.discard(call.worker)
        stopping = {ref: call for ref, call in calls.items() if not call.ping}
        if not stopping:
            return
        for call in stopping.values():
            try:
                call.worker.actor.cancel.remote()
            except Exception:  # its actor is gone already
                pass
        stopped, _ = ray.wait(
            list(stopping), num_returns=len(stopping), timeout=CANCEL_GRACE_S, fetch_local=False
        )
        for ref, call in stopping.items():
            if ref in stopped and _returned(ref):
                self.free.append(call.worker)
            else:
                self.pool.discard(call.worker)

    def _close_producers(self, producers: list[str], *, wait: bool) -> None:
        close = getattr(self.job.sink, "close_producers", None)
        if close is None or not producers:
            return
        try:
            close(self.job.run_id, producers, timeout=10.0 if wait else None)
        except Exception:  # the hub is gone: nothing left to protect
            log.exception("run %s: could not close producers %s", self.job.run_id, producers)


def _returned(ref: Any) -> bool:
    """True when the fold's call ended in its own process (a result or an exception)."""
    try:
        ray.get(ref, timeout=0)
    except _WORKER_DEATH:
        return False
    except Exception:
        return True
    return True


def _cause_text(err: RayTaskError) -> str:
    """The fold's own exception as ``Type: message`` (an OrchestratorError: its message)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, OrchestratorError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return _short(err)


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__
