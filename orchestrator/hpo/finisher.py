"""A batch's driver work after its folds have trained, done while the next batch trains.

With ``parallel`` >= 2 on Ray a study pipelines its batches (``study._batches``): when a batch's
folds have trained, the next batch is asked and trains while one ``Finisher`` thread does the
last batch's driver work in order: each fold's result (predictions CSV, ``fold_complete``), each
run's summary, report and terminal event, then the Optuna ``tell`` of its trials and the study's
files. ``DeferredDriver`` hands a run's ``on_result`` and ``finish`` to that thread, so the
executor call returns as soon as the folds have. Measured on 2 cores, that work is 0.4-0.5 s per
batch of two trials (docs/benchmarks.md, "Packed training") during which both workers idled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna

from orchestrator.execution.base import FoldJob
from orchestrator.lifecycle import Run

if TYPE_CHECKING:
    from orchestrator.hpo.pruning import TrialPruning
    from orchestrator.run.driver import RunDriver
    from workers.fold import FoldResult

__all__ = ["DeferredDriver", "Finisher", "TrialEntry"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TrialEntry:
    """One asked trial of a batch: its parameters, run (None when its config was refused), pruning
    and the error that failed it."""

    trial: optuna.Trial
    params: dict[str, Any]
    pruning: TrialPruning
    run: Run | None = None
    error: str | None = None
    admitted: bool = False  # its run got its turn (a gate's ``done`` is owed)
    trained: bool = False  # its run went through the executor call (its terminal event comes)


class Finisher:
    """One thread that runs what it is given in the order given (a FIFO); ``hold`` keeps it from
    starting the next item (the study asks and starts the next batch meanwhile: the workers wait
    for that, and the two threads would share one GIL)."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._error: BaseException | None = None  # the first an item raised (its future has it too)
        self._go = threading.Event()
        self._go.set()

    def hold(self) -> None:
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    def submit(self, fn: Callable[..., None], *args: Any) -> Future[None]:
        return self._pool.submit(self._when_released, fn, *args)

    def _when_released(self, fn: Callable[..., None], *args: Any) -> None:
        self._go.wait()
        try:
            fn(*args)
        except BaseException as err:
            self._error = self._error or err  # (only this thread writes it)
            raise

    def close(self) -> None:
        """Wait for everything given; raise the first error among them."""
        self.release()
        self._pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error


class DeferredDriver:
    """A ``RunDriver`` whose ``on_result`` and ``finish`` run on a ``Finisher``, in the order the
    executor calls them; ``prepare`` runs at once. A result whose files fail ends the run with
    that error at its ``finish`` (its other folds have trained by then: unlike the run's own
    driver, it does not stop them early)."""

    def __init__(self, driver: RunDriver, finisher: Finisher) -> None:
        self.driver = driver
        self.finisher = finisher
        self._failure: Exception | None = None

    def prepare(self) -> FoldJob | None:
        return self.driver.prepare()

    def on_result(self, result: FoldResult) -> None:
        self.finisher.submit(self._deliver, result)

    def finish(self, executor_name: str, error: BaseException | None) -> Run:
        self.driver.trained_at = time.time()  # the training stage ends now, not when this runs
        self.finisher.submit(self._finish, executor_name, error)
        return self.driver.run

    def _deliver(self, result: FoldResult) -> None:
        if self._failure is None:
            try:
                self.driver.on_result(result)
            except Exception as err:  # the run's files: it ends with this error
                self._failure = err

    def _finish(self, executor_name: str, error: BaseException | None) -> None:
        try:
            self.driver.finish(executor_name, error or self._failure)
        except Exception:  # a bug (finish never raises for a run failure): the study goes on
            log.exception("run %s: its driver's finish failed", self.driver.run.run_id)
