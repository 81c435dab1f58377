"""What a fold is given (its run's context, its place in a pack, its publisher) and what it gives back
(a ``FoldResult``, or a ``FoldFailure`` when its model failed or its run was cancelled)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from orchestrator.config import FoldSpec, TrainConfig
from workers.scoring import Predictions

__all__ = ["Publisher", "FoldContext", "PackMember", "FoldResult", "FoldFailure", "FoldOutcome"]


class Publisher(Protocol):
    def publish(self, event: BaseModel) -> None: ...

    def flush(self, timeout: float | None = None) -> object: ...

    def wants(self, kind: str) -> bool:
        """Whether a consumer receives ``kind`` now: optional live detail is skipped if not."""
        ...


@dataclass(frozen=True)
class FoldContext:
    """What a fold needs to know about its run."""

    run_id: str
    training_started_at: float  # time.time() of training_start: elapsed_seconds counts from it
    attempt: int = 0


@dataclass(frozen=True)
class PackMember:
    """One fold of one run in a pack: its segments, its run's config, where its events go."""

    spec: FoldSpec
    config: TrainConfig
    context: FoldContext
    publisher: Publisher


@dataclass(frozen=True)
class FoldResult:
    """What a trained fold hands back to the driver (its summary entry and predictions CSV)."""

    fold_id: int
    predictions: Predictions
    metrics: dict[str, float | None]  # validation metrics, then the best epoch's train_* and epoch
    calibration_method: str
    calibration_scores: dict[str, float]
    calibration_warning: str | None
    coverage_warning: str | None
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    # Seconds of the fold's compute: its pack's training (shared with the pack's other models,
    # each counted in full: the pack's wall time) plus its own scoring.
    train_seconds: float
    device: str
    attempt: int
    run_id: str = ""
    pack_size: int = 1  # the models trained together with this one (itself included)
    pack_id: str = ""  # the pack it trained in (one per ``run_pack`` call; retried folds get a new one)
    # Set by the executor: seconds from its dispatch of the fold to the result back in the driver.
    round_trip_seconds: float | None = None


@dataclass(frozen=True)
class FoldFailure:
    """A fold of a pack that did not produce a result: its run was cancelled, or its model failed
    (a non-finite loss: a retry would diverge again). The pack's other folds went on."""

    run_id: str
    fold_id: int
    attempt: int
    message: str
    cancelled: bool


FoldOutcome = FoldResult | FoldFailure
