"""Executors run a run's folds and hand each ``FoldResult`` back to the driver.

``LocalExecutor`` runs the same fold code sequentially in this process: for debugging, and as the
baseline of the parallel benchmark. The Ray executor lives in ``orchestrator.ray_executor``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from orchestrator.config import TrainConfig
from orchestrator.cv import FoldSpec
from orchestrator.errors import FoldFailedError, OrchestratorError, RunCancelledError
from orchestrator.events.publish import EventSink
from workers.features import FeatureSet
from workers.fold import FoldContext, FoldResult, FoldTrainer

__all__ = ["FoldJob", "FoldExecutor", "LocalExecutor", "ResultCallback"]

ResultCallback = Callable[[FoldResult], None]


@dataclass
class FoldJob:
    """Everything an executor needs to train the folds of one run."""

    run_id: str
    features: FeatureSet
    specs: list[FoldSpec]
    config: TrainConfig
    training_started_at: float
    sink: EventSink
    cancel_event: threading.Event


class FoldExecutor(Protocol):
    name: str

    def run_folds(self, job: FoldJob, on_result: ResultCallback) -> None:
        """Train every fold; call ``on_result`` once per fold as it finishes.

        Raises ``RunCancelledError`` after a cancel and ``FoldFailedError`` when a fold fails.
        """

    def shutdown(self) -> None: ...


def fold_producer(fold_id: int, attempt: int) -> str:
    return f"fold-{fold_id}-attempt-{attempt}"


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
            try:
                result = trainer.run(
                    job.features, spec, job.config, context, publisher,
                    should_stop=job.cancel_event.is_set,
                )
            except OrchestratorError:
                raise
            except Exception as err:  # a Python error inside a fold fails the run with its text
                raise FoldFailedError(spec.fold_id, f"{type(err).__name__}: {err}") from err
            on_result(result)

    def shutdown(self) -> None:
        self._trainer = None
