"""Pruning a trial on its run's epoch events: intermediate values, the pruner, the cancel.

``EpochTracker`` turns one run's events into the pruner's intermediate values (step = epoch
index, value = mean over folds of the metric). ``TrialPruning`` reports them to the trial and,
when the pruner says prune, cancels the trial's run (its fold actors stop at the next epoch and
stay warm); the trial then raises ``optuna.TrialPruned`` (see ``study``).
"""

from __future__ import annotations

import math
import threading
from typing import Protocol

import optuna
from pydantic import BaseModel

from orchestrator.events.record import EventRecord
from orchestrator.hpo.spec import HpoSpec
from orchestrator.messages import TERMINAL_TYPES, EpochMetrics, FoldComplete, TrainingStart

__all__ = ["EpochTracker", "TrialPruning", "make_pruner"]

# What the pruning of a trial reads of its run's events.
_TRACKED_TYPES = frozenset({"training_start", "epoch_metrics", "fold_complete"}) | TERMINAL_TYPES


def make_pruner(spec: HpoSpec) -> optuna.pruners.BasePruner:
    """The spec's Optuna pruner; hyperband's resource is the epoch."""
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.config.epochs)
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.pruner_startup_trials, n_warmup_steps=spec.pruner_warmup_epochs
    )


class EpochTracker:
    """One run's events -> the pruner's intermediate values (pure; no Optuna, no Ray).

    Step ``e`` is the epoch index; its value is the mean over folds of ``metric`` at epoch ``e``
    (a fold that stopped early carries its last value forward; undefined values are left out).
    A step is settled, and returned once by ``observe``, when every fold has reported epoch
    ``e`` or completed, or when the run has ended.
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.total_folds: int | None = None
        self._values: dict[int, dict[int, float | None]] = {}
        self._done: set[int] = set()
        self._ended = False
        self._next_step = 0

    def observe(self, message: BaseModel) -> list[tuple[int, float]]:
        if isinstance(message, TrainingStart):
            self.total_folds = message.total_folds
        elif isinstance(message, EpochMetrics):
            value = getattr(message, self.metric, None)  # the spec's metric: a field of EpochMetrics
            number = float(value) if isinstance(value, (int, float)) else math.nan
            self._values.setdefault(message.fold_id, {})[message.epoch] = (
                number if math.isfinite(number) else None
            )
        elif isinstance(message, FoldComplete):
            self._done.add(message.fold_id)
        elif getattr(message, "type", None) in TERMINAL_TYPES:
            self._ended = True
        else:
            return []
        return self._settle()

    def _settle(self) -> list[tuple[int, float]]:
        last_epoch = max((max(v) for v in self._values.values() if v), default=-1)
        settled: list[tuple[int, float]] = []
        while self._next_step <= last_epoch and self._is_settled(self._next_step):
            value = self._mean_at(self._next_step)
            if value is not None:
                settled.append((self._next_step, value))
            self._next_step += 1
        return settled

    def _is_settled(self, step: int) -> bool:
        if self._ended:
            return True
        if self.total_folds is None:
            return False
        for fold in range(self.total_folds):
            epochs = self._values.get(fold, {})
            if step not in epochs and not (fold in self._done and epochs):
                return False
        return True

    def _mean_at(self, step: int) -> float | None:
        values = []
        for epochs in self._values.values():
            reached = [e for e in epochs if e <= step]
            if reached:
                value = epochs[max(reached)]
                if value is not None:
                    values.append(value)
        return sum(values) / len(values) if values else None


class Cancellable(Protocol):
    def request_cancel(self) -> bool: ...


class TrialPruning:
    """One trial's run events -> ``trial.report``; cancels ``run`` when the pruner says prune.

    ``observe`` runs on the thread that delivers events; the trial's own thread sets ``run``
    before the run's first event, ``wait_ended`` for its last epochs and ``close`` when done.
    A pruned decision stands even if the run happened to finish before the cancel took effect.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        # ``--pruner none`` (make_pruner's NopPruner): report the values, never ask the pruner
        self.prunes = not isinstance(trial.study.pruner, optuna.pruners.NopPruner)
        self.tracker = EpochTracker(metric)
        self.run: Cancellable | None = None
        self.pruned = False
        self._closed = False
        self._lock = threading.Lock()
        self._ended = threading.Event()

    def observe(self, record: EventRecord) -> None:
        if record.type not in _TRACKED_TYPES:
            return  # never parsed: a trial's prediction_delta or batch_progress says nothing here
        with self._lock:
            if self._closed:
                return
            steps = self.tracker.observe(record.message)
            if steps and not self.pruned:
                for step, value in steps:
                    self.trial.report(value, step)
                if self.prunes and self.trial.should_prune():  # (a storage read each time)
                    self.pruned = True
                    self.trial.set_user_attr("pruned_at_epoch", steps[-1][0])
                    if self.run is not None:
                        self.run.request_cancel()  # the executor stops and releases its actors
        if record.type in TERMINAL_TYPES:
            self._ended.set()

    def wait_ended(self, timeout: float) -> bool:
        """Wait until the run's terminal event was observed (its last epochs are reported)."""
        return self._ended.wait(timeout)

    def close(self) -> bool:
        """Ignore later events; whether the trial was pruned."""
        with self._lock:
            self._closed = True
            return self.pruned
