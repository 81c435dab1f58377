"""What every executor shares: the job of one run, the executor protocol, the producer names.

An executor trains the folds of one or several runs' jobs and hands each ``FoldResult`` back to
the driver; the folds of one architecture train as packs (``packing``): ``local`` in this
process, ``ray`` in parallel on fold-trainer actors, each actor a pack at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from orchestrator.config import FoldSpec, TrainConfig
from orchestrator.events.publish import EventSink
from workers.features import FeatureSet
from workers.fold import FoldResult

__all__ = ["FoldJob", "FoldExecutor", "ResultCallback", "EndCallback", "fold_producer", "raise_for"]

ResultCallback = Callable[[FoldResult], None]
# A run of the call has ended: its run id, and its error (None: every fold's result was handed over).
EndCallback = Callable[[str, Exception | None], None]


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

    def run_jobs(
        self, jobs: Sequence[FoldJob], on_result: ResultCallback, on_end: EndCallback | None = None
    ) -> dict[str, Exception]:
        """Train every fold of every job; call ``on_result`` once per fold as it finishes, and
        ``on_end`` once per job as soon as it has ended (no event of its folds comes after).

        Returns the jobs that did not complete, by run id: ``RunCancelledError`` after the job's
        cancel, ``FoldFailedError`` when one of its folds failed, or what its ``on_result``
        raised. A job that fails ends alone: the other jobs' folds go on.
        """
        ...

    def run_folds(self, job: FoldJob, on_result: ResultCallback) -> None:
        """``run_jobs`` of one job; raises the job's error."""
        ...

    def shutdown(self) -> None: ...


def raise_for(run_id: str, errors: dict[str, Exception]) -> None:
    """Raise the error ``run_jobs`` returned for ``run_id``, if any."""
    error = errors.get(run_id)
    if error is not None:
        raise error


def fold_producer(fold_id: int, attempt: int) -> str:
    """The hub producer of one fold attempt's events: each attempt numbers its own from 0."""
    return f"fold-{fold_id}-attempt-{attempt}"
