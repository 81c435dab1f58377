"""One fold's side of a pack's training: its train-only scaling, its settings, the callbacks that turn
its epochs into events (``epoch_metrics``, and for a live audience ``batch_progress`` and
``prediction_delta``), and its selected model scored as a ``FoldResult``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from orchestrator.config import TrainConfig
from orchestrator.messages import BatchProgress, EpochMetrics
from workers.deltas import PredictionDeltaTracker, as_rows
from workers.features import FeatureSet, Standardizer
from workers.fold_types import FoldFailure, FoldResult, PackMember
from workers.metrics import Forecast
from workers.scoring import calibrated_predictions, finish_fold

if TYPE_CHECKING:
    from workers.train import EpochRecord, Segments, TrainOutcome, TrainSettings

__all__ = ["FoldMember", "train_settings"]

# Summary keys copied from the best epoch: the train segment has no rows in the predictions CSV.
_TRAIN_KEYS = ("train_loss", "train_nll", "train_bce", "train_brier", "cal_loss")


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


class FoldMember:
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

    def result(
        self, outcome: TrainOutcome, train_seconds: float, device: str, pack_size: int, pack_id: str
    ) -> FoldResult:
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
            pack_id=pack_id,
        )

    def failure(self, message: str, *, cancelled: bool) -> FoldFailure:
        self.member.publisher.flush()
        context = self.member.context
        return FoldFailure(context.run_id, self.member.spec.fold_id, context.attempt, message, cancelled)
