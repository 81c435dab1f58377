"""What every executor shares: the job of one run, the executor protocol, the producer names.

An executor trains a run's folds and hands each ``FoldResult`` back to the driver; ``local``
runs them one after the other in this process, ``ray`` in parallel on fold-trainer actors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from orchestrator.config import FoldSpec, TrainConfig
from orchestrator.events.publish import EventSink
from workers.features import FeatureSet
from workers.fold import FoldResult

__all__ = ["FoldJob", "FoldExecutor", "ResultCallback", "fold_producer"]

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
    """The hub producer of one fold attempt's events: each attempt numbers its own from 0."""
    return f"fold-{fold_id}-attempt-{attempt}"
