"""The folds of one Ray executor call, trained a pack per worker (``execution.ray``'s loop).

One ``FoldScheduler`` per run decides; ``PackRun`` carries it out: free worker slots get packs of
the folds waiting (``packing.plan_packs``), a new worker is pinged until it is up, a pack runs as
one streaming actor call (``FoldTrainer.stream_pack``: each fold's outcome comes back once scored,
so the driver writes its files while the next is scored), and each outcome is fed to its fold's
scheduler: a result, a fold that failed, or the worker's death (the folds without an outcome yet
retry, each as its next attempt). A run ends on its own (``_end_run``), the others go on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayTaskError

from orchestrator.errors import RunCancelledError
from orchestrator.execution.base import EndCallback, FoldJob, ResultCallback, fold_producer
from orchestrator.execution.cluster import cluster_view, free_resources, is_placed
from orchestrator.execution.packing import PackTask, pack_cap, pack_key, plan_packs
from orchestrator.execution.placement import (
    ClusterView,
    Placement,
    ResourceShape,
    combined_fold_cap,
    concurrency_limit,
    reachable_resources,
    scale_up_types,
)
from orchestrator.execution.pool import Worker
from orchestrator.execution.ray_calls import (
    CANCEL_GRACE_S,
    WORKER_DEATH,
    Call,
    Member,
    PackedRun,
    PackExecutor,
    cause_text,
    close_producers,
    scale_up_message,
    short,
    stop_packs,
)
from orchestrator.execution.scheduler import (
    EndRun,
    fold_cost,
    launch_order,
)
from orchestrator.messages import Notification
from workers.fold import FoldContext, FoldFailure, FoldResult, PackMember

__all__ = ["PackRun", "CANCEL_GRACE_S"]

log = logging.getLogger(__name__)

# How often the driver wakes to check for cancels and placement timeouts while folds run.
WAIT_SLICE_S = 0.2


class PackRun:
    """The folds of one call on Ray: the schedulers' decisions, carried out (module doc)."""

    def __init__(
        self,
        executor: PackExecutor,
        jobs: Sequence[FoldJob],
        shape: ResourceShape,
        view: ClusterView,
        placement: Placement,
        on_result: ResultCallback,
        on_end: EndCallback | None,
    ) -> None:
        self.executor = executor
        self.pool = executor.pool
        self.shape = shape
        self.placement = placement
        self.on_result = on_result
        self.on_end = on_end
        # each run was admitted with its own fold concurrency: together they may use the sum
        self.max_concurrent = combined_fold_cap([job.config.max_concurrent_folds for job in jobs])
        self.tasks = sum(len(job.specs) for job in jobs)
        self.capacity = self._capacity(view)
        scale_up = scale_up_types(shape, view)
        self.runs = [
            PackedRun.of(job, launch_order(job.specs, self.capacity), shape, scale_up) for job in jobs
        ]
        self.calls: dict[Any, Call] = {}  # ObjectRef of a ping or a pack -> the call
        self.free: list[Worker] = []  # this call's actors between two packs
        self.finished: list[tuple[PackedRun, FoldResult]] = []  # results not yet handed to on_result
        self.deferred: list[PackedRun] = []  # ended runs whose on_end waits for the call's end
        self.broken: Exception | None = None  # what broke the loop off, if anything did

    def execute(self) -> dict[str, Exception]:
        try:
            if self.placement is Placement.AFTER_SCALE_UP:
                self._announce_scale_up()
            for run in self.runs:
                run.features_ref = self.pool.put_features(run.job.features)  # shared by its packs
            while self._live():
                for run in self._live():
                    if run.job.cancel_event.is_set():
                        self._end_run(run, run.scheduler.cancel_requested().error)
                self._move_to_free_workers()
                self._launch()
                self._deliver()  # the driver's work on finished folds, once the next ones train
                self._check_placement()
                for ref in self._wait():
                    if self.calls[ref].ping:
                        self._on_started(ref, self.calls.pop(ref))
                    else:
                        self._on_streamed(ref, self.calls[ref])
            self._deliver()
        except BaseException as err:  # the loop itself broke: the runs still going fail with it
            self.broken = err if isinstance(err, Exception) else RuntimeError(f"interrupted: {err!r}")
            raise
        finally:
            self._end()
        return {run.job.run_id: run.error for run in self.runs if run.error is not None}

    # ---- one step at a time ------------------------------------------------------------------

    def _live(self) -> list[PackedRun]:
        return [run for run in self.runs if not run.ended]

    def _capacity(self, view: ClusterView) -> int:
        """How many workers ``view`` can hold at a time, capped by ``max_concurrent_folds``."""
        return concurrency_limit(self.shape, reachable_resources(view), self.tasks, self.max_concurrent)

    def _announce_scale_up(self) -> None:
        run = self.runs[0]
        message = scale_up_message(self.shape, run.job.config.placement_timeout_s, run.scheduler.scale_up)
        log.info("runs %s: %s", ", ".join(r.job.run_id for r in self.runs), message)
        for each in self.runs:
            each.notices.publish(Notification(level="info", kind="autoscaling", message=message))

    def _busy_workers(self) -> int:
        return len({id(call.worker) for call in self.calls.values()})

    def _launch(self) -> None:
        """Packs of the waiting folds for the free worker slots, biggest first."""
        slots = self.capacity - self._busy_workers()
        if slots <= 0:
            return
        tasks = [
            PackTask(
                (index, fold_id),
                pack_key(run.job.config),
                pack_cap(run.job.config),
                float(fold_cost(run.specs[fold_id])),
            )
            for index, run in enumerate(self.runs)
            if not run.ended
            for fold_id in run.scheduler.queued()
        ]
        for pack in plan_packs(tasks, slots):  # (none without tasks)
            members = [
                Member(index, fold_id, self.runs[index].scheduler.launch(fold_id).attempt)
                for index, fold_id in pack
            ]
            if self.free and self.free[-1].pid is not None:  # a warm worker of this call: no ping
                self._submit(self.free.pop(), members)
                continue
            worker = self.free.pop() if self.free else self._acquire()
            self._ping(worker, members)

    def _acquire(self) -> Worker:
        worker = self.pool.acquire(self.shape)
        self.executor.run_actor_names.add(worker.name)
        return worker

    def _ping(self, worker: Worker, members: list[Member], since: float | None = None) -> None:
        # A warm actor answers at once; a new one once its process is up and torch imported.
        call = Call(worker, ping=True, members=members)
        if since is not None:
            call.since = since
        self.calls[worker.actor.ping.remote()] = call

    def _move_to_free_workers(self) -> None:
        """A pack waiting for a new actor (still starting, or not even placed) moves to a warm
        worker of this call whose pack has ended: it trains now rather than in seconds. The new
        actor stays with the call if it got a place (warm for later packs and runs)."""
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
            self._ping(worker, call.members)

    def _wait(self) -> list[Any]:
        """The refs that are ready, after waiting at most WAIT_SLICE_S for the first one."""
        refs = list(self.calls)
        if not refs:
            return []
        done, rest = ray.wait(refs, num_returns=1, timeout=WAIT_SLICE_S, fetch_local=False)
        if done and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            done += more
        return done

    def _check_placement(self) -> None:
        now = time.monotonic()
        for ref, call in list(self.calls.items()):
            if not call.ping:
                continue
            decided = False

            def placed(_fold_id: int, worker: Worker = call.worker) -> bool:
                return is_placed(worker.actor)

            for index in sorted({m.run for m in call.members}):
                run = self.runs[index]
                if run.ended:
                    continue
                decisions = run.scheduler.check_placement(
                    {m.fold_id: now - call.since for m in call.members if m.run == index},
                    placed=placed,
                    free=free_resources,
                )
                for decision in decisions:
                    decided = True
                    if isinstance(decision, EndRun):
                        self._end_run(run, decision.error)
            if decided:
                del self.calls[ref]
                self.pool.discard(call.worker)
                self.capacity = max(1, self._busy_workers())

    def _on_started(self, ref: Any, call: Call) -> None:
        try:
            call.worker.pid = int(ray.get(ref))
        except WORKER_DEATH as err:  # died before its first call: a new actor, not a new attempt
            self.pool.discard(call.worker)
            for member in call.members:
                run = self.runs[member.run]
                if run.ended:
                    continue
                failed = run.scheduler.start_failed(member.fold_id, short(err))
                if failed is not None:
                    self._end_run(run, failed.error)
            return
        self._submit(call.worker, call.members)

    def _submit(self, worker: Worker, members: list[Member]) -> None:
        members = [m for m in members if not self.runs[m.run].ended]
        if not members:
            self.free.append(worker)
            return
        pack = []
        for member in members:
            run = self.runs[member.run]
            train = run.scheduler.started(member.fold_id)
            producer = fold_producer(train.fold_id, train.attempt)
            run.producers.append(producer)
            self.executor.current_pids[train.fold_id] = worker.pid or 0
            job = run.job
            context = FoldContext(job.run_id, job.training_started_at, train.attempt)
            publisher = job.sink.publisher(job.run_id, producer, batched=True)
            pack.append(PackMember(run.specs[member.fold_id], job.config, context, publisher))
        features_ref = self.runs[members[0].run].features_ref
        stream = worker.actor.stream_pack.options(num_returns="streaming").remote(features_ref, pack)
        self.calls[stream] = Call(worker, False, members)

    def _on_streamed(self, stream: Any, call: Call) -> None:
        """The pack's next outcome (``ray.wait`` said it is there), or how its call ended. A member
        leaves ``call.members`` with its outcome: a death or an exception later concerns the rest."""
        try:
            outcome = ray.get(next(stream))
        except StopIteration:  # a bug of the worker's: the loop breaks off, its live runs fail
            raise RuntimeError(f"a pack's call ended without the outcome of {call.members}") from None
        except WORKER_DEATH as err:
            del self.calls[stream]
            self._worker_died(call, err)
            return
        except RayTaskError as err:
            # A Python exception inside the pack: the worker is fine, and a retry would fail again.
            self._end_call(stream, call, err)
            return
        index = call.take(outcome.run_id, outcome.fold_id, [run.job.run_id for run in self.runs])
        if not call.members:  # the generator's own end carries nothing more: free the worker now
            self.free.append(self.calls.pop(stream).worker)
        run = self.runs[index]
        if run.ended:
            return
        if isinstance(outcome, FoldFailure):
            cancelled = outcome.cancelled and run.job.cancel_event.is_set()
            decision = run.scheduler.fold_raised(outcome.fold_id, outcome.message, cancelled=cancelled)
            self._end_run(run, decision.error)
            return
        run.scheduler.succeeded(outcome.fold_id)
        trip = time.monotonic() - call.since
        self.finished.append((run, dataclasses.replace(outcome, round_trip_seconds=trip)))

    def _end_call(self, stream: Any, call: Call, err: RayTaskError) -> None:
        """The pack's call raised ``err`` in its worker (which is fine): each run with a fold still
        in it fails with its first such fold."""
        del self.calls[stream]
        self.free.append(call.worker)
        cause = getattr(err, "cause", None)
        for index in sorted({m.run for m in call.members}):
            run = self.runs[index]
            if run.ended:
                continue
            cancelled = isinstance(cause, RunCancelledError) and run.job.cancel_event.is_set()
            message = str(cause) if cancelled else cause_text(err)
            first = min(m.fold_id for m in call.members if m.run == index)
            self._end_run(run, run.scheduler.fold_raised(first, message, cancelled=cancelled).error)

    def _worker_died(self, call: Call, err: BaseException) -> None:
        self.pool.discard(call.worker)
        capacity = self._capacity(cluster_view())  # a lost node took its resources along
        self.capacity = max(1, min(self.capacity, capacity))
        for index in sorted({m.run for m in call.members}):
            run = self.runs[index]
            if run.ended:
                continue
            lost = [m for m in call.members if m.run == index]
            close_producers(run.job, [fold_producer(m.fold_id, m.attempt) for m in lost], wait=False)
            for member in lost:
                decision = run.scheduler.worker_died(member.fold_id, call.worker.pid, short(err), capacity)
                if isinstance(decision, EndRun):
                    self._end_run(run, decision.error)
                    break
                run.notices.publish(decision.notice)

    def _deliver(self) -> None:
        """Hand the finished folds' results to the driver (``on_result``: its CSV, fold_complete);
        a run whose folds have all been handed over has ended."""
        while self.finished:
            run, result = self.finished.pop(0)
            if run.ended:
                continue
            try:
                self.on_result(result)
            except Exception as err:  # the driver's files of this run: it ends, the others go on
                self._end_run(run, err)
                continue
            run.delivered += 1
            if run.delivered == len(run.specs):
                self._end_run(run, None)

    # ---- the end -----------------------------------------------------------------------------

    def _end_run(self, run: PackedRun, error: Exception | None) -> None:
        """``run`` ends (``error`` None: completed). Its folds still in a shared pack are stopped
        there and its producers closed before ``on_end`` hears of it; when it was the last run of
        the call, ``on_end`` waits for the call's end (its folds stopped, its workers released)."""
        run.ended, run.error = True, error
        if error is not None:
            run.scheduler.stop()
        if self._live() and error is not None:
            for call in self.calls.values():
                if not call.ping and any(self.runs[m.run] is run for m in call.members):
                    call.worker.actor.cancel.remote([run.job.run_id])
            close_producers(run.job, run.producers, wait=True)
        if self._live():
            self._notify_end(run)
        else:
            self.deferred.append(run)

    def _notify_end(self, run: PackedRun) -> None:
        run.notices.flush()
        if self.on_end is not None:
            self.on_end(run.job.run_id, run.error)

    def _end(self) -> None:
        try:
            self.free.extend(stop_packs(self.calls, self.pool))
            self.calls = {}
            for run in self._live():  # the loop broke off (an error of its own): they fail with it
                run.ended, run.error = True, self.broken or RuntimeError("the executor's loop ended early")
                self.deferred.append(run)
            cancelled = all(isinstance(run.error, RunCancelledError) for run in self.runs)
            kill = cancelled and not self.executor.keep_workers_on_cancel
            for worker in self.free:
                # A cancel takes every actor of its runs down with it; otherwise they stay warm.
                if kill:
                    self.pool.discard(worker)
                else:
                    self.pool.release(worker)
            self.free.clear()
            for run in self.deferred:
                if run.error is not None:
                    close_producers(run.job, run.producers, wait=True)
        finally:
            for run in self.deferred:
                self._notify_end(run)
            self.deferred.clear()
