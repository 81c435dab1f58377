"""Trains a run's folds one after the other in this process: for debugging, and as a baseline.

The same ``FoldTrainer`` code the Ray executor runs in its actors; a Python error inside a fold
fails the run with its text, a cancel stops the fold at its next epoch.
"""

from __future__ import annotations

import dataclasses
import time

from orchestrator.errors import FoldFailedError, OrchestratorError, RunCancelledError
from orchestrator.execution.base import FoldJob, ResultCallback, fold_producer
from workers.fold import FoldContext, FoldTrainer

__all__ = ["LocalExecutor"]


class LocalExecutor:
    name = "local"

    def __init__(self) -> None:
        self._trainer: FoldTrainer | None = None

    def run_folds(self, job: FoldJob, on_result: ResultCallback) -> None:
        trainer = self._trainer = self._trainer or FoldTrainer()
        for spec in job.specs:
            if job.cancel_event.is_set():
                raise RunCancelledError(f"run {job.run_id} was cancelled")
            context = FoldContext(job.run_id, job.training_started_at)
            publisher = job.sink.publisher(job.run_id, fold_producer(spec.fold_id, 0))
            dispatched = time.monotonic()
            try:
                result = trainer.run(
                    job.features,
                    spec,
                    job.config,
                    context,
                    publisher,
                    should_stop=job.cancel_event.is_set,
                )
            except OrchestratorError:
                raise
            except Exception as err:  # a Python error inside a fold fails the run with its text
                raise FoldFailedError(spec.fold_id, f"{type(err).__name__}: {err}") from err
            on_result(dataclasses.replace(result, round_trip_seconds=time.monotonic() - dispatched))

    def shutdown(self) -> None:
        self._trainer = None
