"""Explicit run states and their legal transitions (STYLE 5)."""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from orchestrator.config import TrainConfig
from orchestrator.messages import (
    ENVELOPE_FIELDS,
    EpochMetrics,
    FoldComplete,
    TrainingComplete,
    TrainingError,
    TrainingStart,
)
from orchestrator.states import StateTable

__all__ = [
    "RunState",
    "Run",
    "TERMINAL_STATES",
    "INTERRUPTED_PREFIX",
    "ended_state",
    "latest_metrics_of",
    "FOLLOWED_TYPES",
]


class RunState(str, enum.Enum):
    QUEUED = "queued"  # waiting in the job queue (orchestrator.jobs.admission) for its resources
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its lease owner (the process or Ray instance running it) is gone


RUN_STATES = StateTable(
    "run",
    {
        RunState.QUEUED: {RunState.PENDING, RunState.FAILED, RunState.CANCELLED, RunState.INTERRUPTED},
        RunState.PENDING: {RunState.RUNNING, RunState.FAILED, RunState.CANCELLED, RunState.INTERRUPTED},
        RunState.RUNNING: {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.INTERRUPTED},
        RunState.COMPLETED: (),
        RunState.FAILED: (),
        RunState.CANCELLED: (),
        RunState.INTERRUPTED: (),
    },
)
TERMINAL_STATES = RUN_STATES.terminal

# A training_error whose message starts so ends its run as interrupted (its writer was gone).
INTERRUPTED_PREFIX = "interrupted: "
_CANCELLED_MARK = " was cancelled"  # RunCancelledError's messages


def ended_state(error: str) -> RunState:
    """The terminal state a ``training_error`` message stands for."""
    if error.startswith(INTERRUPTED_PREFIX):
        return RunState.INTERRUPTED
    if _CANCELLED_MARK in error:
        return RunState.CANCELLED
    return RunState.FAILED


_NOT_METRICS = {"type", *ENVELOPE_FIELDS}  # a set: what pydantic's ``exclude`` takes
# What a run's mirror learns from (``Run.observe`` and ``Run.follow``); other types are not read.
FOLLOWED_TYPES = frozenset(
    {"training_start", "epoch_metrics", "fold_complete", "training_complete", "training_error"}
)


def latest_metrics_of(message: EpochMetrics) -> dict[str, Any]:
    """What a run keeps of a fold's latest ``epoch_metrics``: every field but the type and envelope."""
    return message.model_dump(mode="json", exclude=_NOT_METRICS)


@dataclass
class Run:
    """One training run as the driver sees it. Thread-safe: the API reads it while it runs."""

    run_id: str
    config: TrainConfig
    run_dir: str
    state: RunState = RunState.PENDING
    priority: int = 0  # the job queue's order: higher first (-100..100)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None  # when it started running (the store: its training_start)
    ended_at: float | None = None
    error: str | None = None
    summary_path: str | None = None
    folds_total: int = 0
    folds_done: int = 0
    epochs_done: int = 0
    latest_metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    _epochs_seen: set[tuple[int, int]] = field(default_factory=set, repr=False)
    _folds_seen: set[int] = field(default_factory=set, repr=False)
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def transition(self, new: RunState, error: str | None = None) -> None:
        with self._lock:
            self.state = RUN_STATES.check(self.state, new, f"run {self.run_id}")
            if new is RunState.RUNNING and self.started_at is None:
                self.started_at = time.time()
            if new in TERMINAL_STATES:
                self.ended_at = time.time()
                self.error = error

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    def request_cancel(self) -> bool:
        """Ask the run to stop; False when it has already ended."""
        if self.done:
            return False
        self.cancel_requested.set()
        return True

    def observe(self, message: BaseModel) -> None:
        """Update progress from one of this run's wire messages (the API pump calls this)."""
        with self._lock:
            if isinstance(message, TrainingStart):
                self.folds_total = message.total_folds
            elif isinstance(message, EpochMetrics):
                key = (message.fold_id, message.epoch)
                if key not in self._epochs_seen:
                    self._epochs_seen.add(key)
                    self.epochs_done = len(self._epochs_seen)
                self.latest_metrics[message.fold_id] = latest_metrics_of(message)

    def follow(self, message: BaseModel) -> None:
        """For a run executed elsewhere (a coordinator in the cluster): its state from its messages."""
        if isinstance(message, TrainingStart) and self.state is RunState.PENDING:
            self.transition(RunState.RUNNING)
        elif isinstance(message, TrainingComplete) and not self.done:
            self.summary_path = message.summary_path
            self.transition(RunState.COMPLETED)
        elif isinstance(message, TrainingError) and not self.done:
            self.transition(ended_state(message.error), error=message.error)
        elif isinstance(message, FoldComplete):
            with self._lock:  # an event seen twice (a replay meeting the live stream) counts once
                self._folds_seen.add(message.fold_id)
                self.folds_done = len(self._folds_seen)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "run_id": self.run_id,
                "state": self.state.value,
                "created_at": self.created_at,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "error": self.error,
                "run_dir": self.run_dir,
                "summary_path": self.summary_path,
                "priority": self.priority,
                "queue_position": None,
                "progress": {
                    "folds_total": self.folds_total,
                    "folds_done": self.folds_done,
                    "epochs_total": self.folds_total * self.config.epochs,
                    "epochs_done": self.epochs_done,
                },
                "latest_metrics": {str(k): v for k, v in sorted(self.latest_metrics.items())},
                "config": self.config.model_dump(),
            }
