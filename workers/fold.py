"""Folds end to end (scale, train, calibrate, conformal, score), one or a pack at a time, and the
thin actor over them.

``run_pack`` trains the folds a worker holds as one stacked model (``workers.packed``) when there
are several, or alone with ``workers.train.fit``: each fold keeps its own scaling, seed, dropout
generator, learning rate, early stopping and best state, so the results equal training them one by
one. ``run_fold`` is a pack of one. ``FoldTrainer`` is a plain class around them that keeps torch
imported between runs and carries per-run cancel flags: the local executor calls it in-process,
the Ray executor applies ``ray.remote`` to it where it launches actors (the same code runs in
both). A fold publishes ``epoch_metrics`` (and, for a live audience, ``batch_progress`` and
``prediction_delta``) through its own publisher and comes back as a ``FoldResult`` (or a
``FoldFailure``); the driver writes the files and publishes ``fold_complete`` (files are written
on the head side, DESIGN 7). Torch is imported only inside the functions: the driver imports this
module for ``FoldResult``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from orchestrator.config import FoldSpec, TrainConfig
from orchestrator.errors import RunCancelledError
from orchestrator.messages import BatchProgress, EpochMetrics
from workers.deltas import PredictionDeltaTracker, as_rows
from workers.features import FeatureSet, Standardizer
from workers.metrics import Forecast
from workers.scoring import Predictions, calibrated_predictions, finish_fold

if TYPE_CHECKING:
    import torch

    from workers.train import EpochRecord, Segments, TrainOutcome, TrainSettings

__all__ = [
    "FoldTrainer",
    "FoldResult",
    "FoldFailure",
    "FoldOutcome",
    "FoldContext",
    "PackMember",
    "Publisher",
    "run_fold",
    "run_pack",
    "train_settings",
]

# Summary keys copied from the best epoch: the train segment has no rows in the predictions CSV.
_TRAIN_KEYS = ("train_loss", "train_nll", "train_bce", "train_brier", "cal_loss")


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


def _device_for(config: TrainConfig) -> torch.device:
    import torch

    # An actor sees only the GPUs Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES per actor).
    if config.gpus_per_fold > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def train_settings(config: TrainConfig, fold_id: int) -> TrainSettings:
    from workers.train import TrainSettings

    return TrainSettings(
        epochs=config.epochs,
        batch_size=config.batch_size,
        hidden=config.hidden,
        depth=config.depth,
        dropout=config.dropout,
        lr=config.lr,
        weight_decay=config.weight_decay,
        loss_weights=(config.w_nll, config.w_bce, config.w_brier),
        patience=config.patience,
        alpha=config.alpha,
        seed=config.seed + 7919 * fold_id,
        cuda_graphs=config.cuda_graphs,
        mixed_precision=config.mixed_precision,
    )


def _never(run_id: str) -> bool:
    return False


class _Fold:
    """One member's side of training: its scaled segments and settings, and the callbacks that turn
    its epochs into events."""

    def __init__(self, features: FeatureSet, member: PackMember) -> None:
        from workers.train import BatchReporter, Segments

        self.member = member
        self.features = features
        spec, config = member.spec, member.config
        train, cal, val = spec.train.as_slice(), spec.calibration.as_slice(), spec.validation.as_slice()
        scaler = Standardizer.fit(features.X[train])  # train segment only
        self.segments: Segments = Segments(
            X_train=scaler.transform(features.X[train]),
            y_train=features.y[train],
            X_cal=scaler.transform(features.X[cal]),
            y_cal=features.y[cal],
            X_val=scaler.transform(features.X[val]),
            y_val=features.y[val],
        )
        self.settings = train_settings(config, spec.fold_id)
        self.deltas = PredictionDeltaTracker(features.timestamps[val], rtol=config.prediction_delta_rtol)
        interval = config.batch_progress_interval_s
        self.on_batch = BatchReporter(interval, self._batch) if interval > 0 else None
        self.on_forecasts = self._forecasts if config.prediction_deltas else None

    @property
    def run_id(self) -> str:
        return self.member.context.run_id

    def elapsed(self) -> float:
        return time.time() - self.member.context.training_started_at

    def on_epoch(self, metrics: EpochRecord) -> None:
        self.member.publisher.publish(
            EpochMetrics.model_validate({"fold_id": self.member.spec.fold_id, **metrics})
        )

    def _forecasts(self, epoch: int, cal: Forecast, val: Forecast) -> None:
        # A calibration per epoch is most of a small fold's time: only for a live audience.
        # Without one, the next delta starts over with every row (a newcomer sees them all).
        publisher = self.member.publisher
        if not publisher.wants("prediction_delta"):
            self.deltas.forget()
            return
        segs, spec = self.segments, self.member.spec
        out = calibrated_predictions(
            spec, self.features, segs.y_cal, segs.y_val, cal, val, self.member.config
        )
        for message in self.deltas.update(spec.fold_id, epoch, as_rows(out.predictions, out.validation)):
            publisher.publish(message)

    def _batch(self, epoch: int, batch: int, total: int, loss: float, rate: float) -> None:
        publisher = self.member.publisher
        if not publisher.wants("batch_progress"):
            return
        publisher.publish(
            BatchProgress(
                fold_id=self.member.spec.fold_id,
                epoch=epoch,
                batch=batch,
                total_batches=total,
                train_loss=loss,
                samples_per_second=rate,
            )
        )

    def result(self, outcome: TrainOutcome, train_seconds: float, device: str, pack_size: int) -> FoldResult:
        """Score the selected model; every event of the fold reaches the hub before the result
        (and so ``fold_complete``) does."""
        scoring_started = time.perf_counter()
        spec, config, segs = self.member.spec, self.member.config, self.segments
        best = outcome.history[outcome.best_epoch] if outcome.history else {}
        scores = finish_fold(spec, self.features, segs.y_cal, segs.y_val, outcome.cal, outcome.val, config)
        if config.prediction_deltas and self.member.publisher.wants("prediction_delta"):
            # the selected model's rows; without an audience they are in the predictions CSV
            rows = as_rows(scores.predictions, scores.predictions["segment"] == "validation")
            for message in self.deltas.update(spec.fold_id, outcome.best_epoch, rows, final=True):
                self.member.publisher.publish(message)
        self.member.publisher.flush()
        return FoldResult(
            fold_id=spec.fold_id,
            predictions=scores.predictions,
            metrics={
                **scores.metrics,
                **{key: best.get(key) for key in _TRAIN_KEYS},
                "epoch": outcome.best_epoch,
            },
            calibration_method=scores.calibration_method,
            calibration_scores=dict(scores.calibration_scores),
            calibration_warning=scores.calibration_warning,
            coverage_warning=scores.coverage_warning,
            best_epoch=outcome.best_epoch,
            epochs_run=outcome.epochs_run,
            stopped_early=outcome.stopped_early,
            train_seconds=train_seconds + time.perf_counter() - scoring_started,
            device=device,
            attempt=self.member.context.attempt,
            run_id=self.run_id,
            pack_size=pack_size,
        )

    def failure(self, message: str, *, cancelled: bool) -> FoldFailure:
        self.member.publisher.flush()
        context = self.member.context
        return FoldFailure(context.run_id, self.member.spec.fold_id, context.attempt, message, cancelled)


def _prepare_device(config: TrainConfig) -> torch.device:
    import torch

    torch.set_num_threads(max(1, int(config.cpus_per_fold)))
    device = _device_for(config)
    if device.type == "cuda" and config.gpus_per_fold < 1:
        # Folds sharing a GPU each keep to their share of its memory.
        torch.cuda.set_per_process_memory_fraction(config.gpus_per_fold, torch.cuda.current_device())
    return device


def run_pack(
    features: FeatureSet,
    members: Sequence[PackMember],
    stopped: Callable[[str], bool] = _never,
    on_outcome: Callable[[FoldOutcome], None] | None = None,
) -> list[FoldOutcome]:
    """Train ``members`` (folds of one architecture: ``execution.packing.pack_key``) together and
    score each; their outcomes in the order of ``members``.

    ``stopped(run_id)`` is polled between epochs: a member of a stopped run leaves the pack (its
    events flushed) as a cancelled ``FoldFailure``; a member whose loss goes non-finite leaves it
    as a failed one; the others go on. ``on_outcome`` sees each outcome once all are trained.
    Raises what the shared training raises otherwise (a bug fails the whole pack).
    """
    from workers.train import NonFiniteLossError, fit

    if not members:
        return []
    device = _prepare_device(members[0].config)
    folds = [_Fold(features, member) for member in members]
    started = time.perf_counter()
    trained: list[TrainOutcome | BaseException]
    if len(folds) == 1:
        fold = folds[0]
        try:
            trained = [
                fit(
                    fold.segments,
                    fold.settings,
                    device=device,
                    on_epoch=fold.on_epoch,
                    elapsed=fold.elapsed,
                    on_batch=fold.on_batch,
                    on_forecasts=fold.on_forecasts,
                    should_stop=lambda: stopped(fold.run_id),
                )
            ]
        except NonFiniteLossError as err:
            trained = [err]
    else:
        trained = _fit_stacked(folds, device, stopped)
    train_seconds = time.perf_counter() - started
    outcomes: list[FoldOutcome] = []
    for fold, outcome in zip(folds, trained, strict=True):
        spec = fold.member.spec
        if stopped(fold.run_id):
            result: FoldOutcome = fold.failure(
                f"run {fold.run_id} was cancelled (fold {spec.fold_id})", cancelled=True
            )
        elif isinstance(outcome, BaseException):
            result = fold.failure(f"{type(outcome).__name__}: {outcome}", cancelled=False)
        else:
            result = fold.result(outcome, train_seconds, str(device), len(folds))
        outcomes.append(result)
        if on_outcome is not None:
            on_outcome(result)
    return outcomes


def _fit_stacked(
    folds: Sequence[_Fold], device: torch.device, stopped: Callable[[str], bool]
) -> list[TrainOutcome | BaseException]:
    """The folds' models as one stacked model (``workers.packed.fit_pack``)."""
    from workers.packed import PackedFold, fit_pack

    return fit_pack(
        [
            PackedFold(
                segments=fold.segments,
                settings=fold.settings,
                on_epoch=fold.on_epoch,
                elapsed=fold.elapsed,
                on_batch=fold.on_batch,
                on_forecasts=fold.on_forecasts,
                should_stop=(lambda run_id=fold.run_id: stopped(run_id)),
            )
            for fold in folds
        ],
        device=device,
    )


def run_fold(
    features: FeatureSet,
    spec: FoldSpec,
    config: TrainConfig,
    context: FoldContext,
    publisher: Publisher,
    should_stop: Callable[[], bool] | None = None,
) -> FoldResult:
    """Train one fold and score its selected model (a pack of one).

    ``should_stop`` is polled between epochs; once it says stop, the fold's events are flushed
    and ``RunCancelledError`` is raised. A non-finite loss raises ``NonFiniteLossError``.
    """
    from workers.train import NonFiniteLossError

    def stopped(run_id: str) -> bool:
        return should_stop is not None and should_stop()

    (outcome,) = run_pack(features, [PackMember(spec, config, context, publisher)], stopped)
    if isinstance(outcome, FoldFailure):
        if outcome.cancelled:
            raise RunCancelledError(outcome.message)
        raise NonFiniteLossError(outcome.message.removeprefix("NonFiniteLossError: "))
    return outcome


class FoldTrainer:
    """The fold actor: ``run_pack`` with cancel flags (all, or some runs), kept alive so torch
    loads once per process."""

    def __init__(self) -> None:
        # The optimizer's first call imports torch._dynamo (about 1.4 s on a small machine): an
        # actor pays it when it starts, beside the driver's set-up, not inside its first fold.
        import torch._dynamo  # noqa: F401

        import workers.train  # noqa: F401  (torch, scipy, statsmodels: once per worker process)

        self.pid = os.getpid()
        self._cancelled = False
        self._cancelled_runs: set[str] = set()

    def ping(self) -> int:
        return self.pid

    def cancel(self, run_ids: Sequence[str] | None = None) -> None:
        """Stop every fold of the current call at its next epoch, or only those of ``run_ids``."""
        if run_ids is None:
            self._cancelled = True
        else:
            self._cancelled_runs.update(run_ids)

    def _stopped(self, run_id: str, should_stop: Callable[[str], bool] | None) -> bool:
        return (
            self._cancelled
            or run_id in self._cancelled_runs
            or (should_stop is not None and should_stop(run_id))
        )

    def run(
        self,
        features: FeatureSet,
        spec: FoldSpec,
        config: TrainConfig,
        context: FoldContext,
        publisher: Publisher,
        should_stop: Callable[[], bool] | None = None,
    ) -> FoldResult:
        """``run_fold``, stopped by ``cancel()`` (an actor) or ``should_stop`` (in-process)."""
        self._cancelled = False
        self._cancelled_runs.clear()

        def stop() -> bool:
            return self._stopped(context.run_id, None) or (should_stop is not None and should_stop())

        return run_fold(features, spec, config, context, publisher, stop)

    def run_pack(
        self,
        features: FeatureSet,
        members: Sequence[PackMember],
        should_stop: Callable[[str], bool] | None = None,
    ) -> list[FoldOutcome]:
        """``run_pack``, its runs stopped by ``cancel`` (an actor) or ``should_stop`` (in-process)."""
        self._cancelled = False
        self._cancelled_runs.clear()
        return run_pack(features, members, lambda run_id: self._stopped(run_id, should_stop))
