"""Trains the folds of one or several runs in this process, a pack at a time: for debugging, and as
the baseline (``pack: 1`` is the plain loop, one fold after the other).

The same ``FoldTrainer`` code the Ray executor runs in its actors. The folds of one architecture
(``packing.pack_key``) train as one stacked model, up to ``pack`` models at a time; results are
handed to the driver in each run's fold order. A Python error inside a pack fails the runs that
have folds in it, with its text; a fold whose loss goes non-finite fails its run; a cancel stops a
run's folds at their next epoch and leaves the other runs training.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from orchestrator.config import FoldSpec
from orchestrator.errors import FoldFailedError, OrchestratorError, RunCancelledError
from orchestrator.execution.base import EndCallback, FoldJob, ResultCallback, fold_producer, raise_for
from orchestrator.execution.packing import PackTask, pack_cap, pack_key, plan_packs
from orchestrator.execution.scheduler import fold_cost
from workers.fold import FoldContext, FoldFailure, FoldResult, FoldTrainer, PackMember

__all__ = ["LocalExecutor"]

Task = tuple[int, FoldSpec]  # (index of the job, the fold)


class LocalExecutor:
    name = "local"

    def __init__(self) -> None:
        self._trainer: FoldTrainer | None = None

    def run_folds(self, job: FoldJob, on_result: ResultCallback) -> None:
        raise_for(job.run_id, self.run_jobs([job], on_result))

    def run_jobs(
        self, jobs: Sequence[FoldJob], on_result: ResultCallback, on_end: EndCallback | None = None
    ) -> dict[str, Exception]:
        trainer = self._trainer = self._trainer or FoldTrainer()
        errors: dict[str, Exception] = {}
        delivered = dict.fromkeys(range(len(jobs)), 0)
        ended: set[str] = set()

        def deliver(result: FoldResult) -> None:
            on_result(result)
            index = next(i for i, job in enumerate(jobs) if job.run_id == result.run_id)
            delivered[index] += 1

        def notify() -> None:  # each job once, as soon as it has ended
            for i, job in enumerate(jobs):
                done = job.run_id in errors or delivered[i] == len(job.specs)
                if done and job.run_id not in ended:
                    ended.add(job.run_id)
                    if on_end is not None:
                        on_end(job.run_id, errors.get(job.run_id))

        pending: list[PackTask[Task]] = [
            PackTask((i, spec), pack_key(job.config), pack_cap(job.config), float(fold_cost(spec)))
            for i, job in enumerate(jobs)
            for spec in job.specs
        ]
        while True:
            for job in jobs:
                if job.cancel_event.is_set() and job.run_id not in errors:
                    errors[job.run_id] = RunCancelledError(f"run {job.run_id} was cancelled")
            pending = [task for task in pending if jobs[task.item[0]].run_id not in errors]
            notify()
            if not pending:
                return errors
            (pack,) = plan_packs(pending, workers=1)
            pending = [task for task in pending if task.item not in pack]
            self._train_pack(trainer, jobs, sorted(pack, key=lambda t: (t[0], t[1].fold_id)), deliver, errors)

    def _train_pack(
        self,
        trainer: FoldTrainer,
        jobs: Sequence[FoldJob],
        pack: list[Task],
        on_result: ResultCallback,
        errors: dict[str, Exception],
    ) -> None:
        members = [
            PackMember(
                spec,
                jobs[i].config,
                FoldContext(jobs[i].run_id, jobs[i].training_started_at),
                jobs[i].sink.publisher(jobs[i].run_id, fold_producer(spec.fold_id, 0)),
            )
            for i, spec in pack
        ]
        cancelled = {job.run_id: job.cancel_event for job in jobs}
        dispatched = time.monotonic()
        try:
            outcomes = trainer.run_pack(
                jobs[pack[0][0]].features, members, should_stop=lambda run_id: cancelled[run_id].is_set()
            )
        except OrchestratorError as err:
            for i, _ in pack:
                errors.setdefault(jobs[i].run_id, err)
            return
        except Exception as err:  # a Python error inside the pack fails its runs with its text
            for i, spec in pack:
                errors.setdefault(
                    jobs[i].run_id, FoldFailedError(spec.fold_id, f"{type(err).__name__}: {err}")
                )
            return
        for outcome in outcomes:
            if outcome.run_id in errors:
                continue
            if isinstance(outcome, FoldFailure):
                errors[outcome.run_id] = (
                    RunCancelledError(outcome.message)
                    if outcome.cancelled
                    else FoldFailedError(outcome.fold_id, outcome.message)
                )
                continue
            try:
                on_result(dataclasses.replace(outcome, round_trip_seconds=time.monotonic() - dispatched))
            except Exception as err:  # the driver's files of this run: it ends, the others go on
                errors[outcome.run_id] = err

    def shutdown(self) -> None:
        self._trainer = None
