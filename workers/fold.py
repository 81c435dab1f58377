"""One fold, end to end: scale, train, calibrate ``p_up``, fit conformal intervals.

``FoldTrainer`` is a plain class: the local executor calls it in-process, and the Ray executor
applies ``ray.remote`` to it where it launches actors (the same code runs in both). It publishes
``epoch_metrics`` through the publisher it is given and returns a ``FoldResult``; the driver writes
the files and publishes ``fold_complete`` (files are written on the head side, DESIGN 7).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from orchestrator.config import TrainConfig
from orchestrator.cv import FoldSpec
from orchestrator.errors import RunCancelledError
from orchestrator.messages import BatchProgress, EpochMetrics
from workers.calibration import calibration_warning, select_calibration
from workers.conformal import (
    conformal_interval,
    conformal_pvalues,
    conformal_quantile,
    coverage_warning,
    interval_coverage,
    normalized_scores,
)
from workers.deltas import PredictionDeltaTracker, as_rows
from workers.features import FeatureSet, Standardizer
from workers.metrics import binary_cross_entropy, brier_score, expected_calibration_error

__all__ = [
    "FoldTrainer", "FoldResult", "FoldContext", "Publisher", "finish_fold", "train_settings",
    "calibrated_predictions", "CalibratedPredictions",
]

# Summary keys copied from the best epoch: the train segment has no rows in the predictions CSV.
_TRAIN_KEYS = ("train_loss", "train_nll", "train_bce", "train_brier", "cal_loss")


class Publisher(Protocol):
    def publish(self, event: Any) -> None: ...

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


@dataclass
class FoldResult:
    fold_id: int
    predictions: dict[str, np.ndarray]  # reports.PREDICTION_COLUMNS -> column; calibration rows first
    metrics: dict[str, Any]
    calibration_method: str
    calibration_scores: dict[str, float]
    calibration_warning: str | None
    coverage_warning: str | None
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    device: str = "cpu"
    attempt: int = 0
    worker_pid: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _device_for(config: TrainConfig) -> Any:
    import torch

    # An actor sees only the GPUs Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES per actor).
    if config.gpus_per_fold > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def train_settings(config: TrainConfig, fold_id: int) -> Any:
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


class FoldTrainer:
    """Trains folds; kept alive between runs so torch is imported once per worker process."""

    def __init__(self) -> None:
        import workers.train  # noqa: F401  (torch, scipy, statsmodels: once per worker process)

        self.pid = os.getpid()
        self._cancelled = False

    def ping(self) -> int:
        return self.pid

    def cancel(self) -> None:
        self._cancelled = True

    def run(
        self,
        features: FeatureSet,
        spec: FoldSpec,
        config: TrainConfig,
        context: FoldContext,
        publisher: Publisher,
        should_stop: Callable[[], bool] | None = None,
    ) -> FoldResult:
        """Train one fold. ``should_stop`` is polled between epochs (in-process cancel); an actor
        is cancelled through ``cancel()`` instead. Raises ``RunCancelledError`` when stopped."""
        import torch

        from workers.train import BatchReporter, Segments, fit

        self._cancelled = False
        torch.set_num_threads(max(1, int(config.cpus_per_fold)))
        device = _device_for(config)
        if device.type == "cuda" and config.gpus_per_fold < 1:
            # Folds sharing a GPU each keep to their share of its memory.
            torch.cuda.set_per_process_memory_fraction(config.gpus_per_fold, torch.cuda.current_device())

        train, cal, val = spec.train, spec.calibration, spec.validation
        scaler = Standardizer.fit(features.X[train.start : train.stop])  # train segment only
        segments = Segments(
            X_train=scaler.transform(features.X[train.start : train.stop]),
            y_train=features.y[train.start : train.stop],
            X_cal=scaler.transform(features.X[cal.start : cal.stop]),
            y_cal=features.y[cal.start : cal.stop],
            X_val=scaler.transform(features.X[val.start : val.stop]),
            y_val=features.y[val.start : val.stop],
        )

        fold_id = spec.fold_id
        deltas = PredictionDeltaTracker(
            features.timestamps[spec.validation.start : spec.validation.stop],
            rtol=config.prediction_delta_rtol,
        )

        def on_epoch(metrics: dict[str, Any]) -> None:
            publisher.publish(EpochMetrics(fold_id=fold_id, **metrics))

        def on_forecasts(epoch: int, cal: Any, val: Any) -> None:
            # A calibration per epoch is most of a small fold's time: only for a live audience.
            # Without one, the next delta starts over with every row (a newcomer sees them all).
            if not publisher.wants("prediction_delta"):
                deltas.forget()
                return
            out = calibrated_predictions(spec, features, segments.y_cal, segments.y_val, cal, val, config)
            for message in deltas.update(fold_id, epoch, as_rows(out.predictions, out.validation)):
                publisher.publish(message)

        def on_batch(epoch: int, batch: int, total: int, loss: float, rate: float) -> None:
            if not publisher.wants("batch_progress"):
                return
            publisher.publish(BatchProgress(
                fold_id=fold_id, epoch=epoch, batch=batch, total_batches=total,
                train_loss=loss, samples_per_second=rate,
            ))

        started = time.perf_counter()
        outcome = fit(
            segments,
            train_settings(config, fold_id),
            device=device,
            on_epoch=on_epoch,
            elapsed=lambda: time.time() - context.training_started_at,
            on_batch=BatchReporter(config.batch_progress_interval_s, on_batch)
            if config.batch_progress_interval_s > 0 else None,
            on_forecasts=on_forecasts if config.prediction_deltas else None,
            should_stop=lambda: self._cancelled or (should_stop is not None and should_stop()),
        )
        if self._cancelled or (should_stop is not None and should_stop()):
            publisher.flush()
            raise RunCancelledError(f"run {context.run_id} was cancelled (fold {spec.fold_id})")
        best = outcome.history[outcome.best_epoch] if outcome.history else {}
        result = finish_fold(spec, features, segments.y_cal, segments.y_val, outcome.cal, outcome.val, config)
        if config.prediction_deltas and publisher.wants("prediction_delta"):
            # the selected model's rows; without an audience they are in the predictions CSV
            rows = as_rows(result.predictions, result.predictions["segment"] == "validation")
            for message in deltas.update(fold_id, outcome.best_epoch, rows, final=True):
                publisher.publish(message)
        # Every event of the fold reaches the hub before the result (and so fold_complete) does.
        publisher.flush()
        result.metrics.update({key: best.get(key) for key in _TRAIN_KEYS})
        result.metrics["epoch"] = outcome.best_epoch
        result.best_epoch = outcome.best_epoch
        result.epochs_run = outcome.epochs_run
        result.stopped_early = outcome.stopped_early
        result.train_seconds = time.perf_counter() - started
        result.device = str(device)
        result.attempt = context.attempt
        result.worker_pid = self.pid
        result.history = outcome.history
        return result


@dataclass
class CalibratedPredictions:
    """The selected model's predictions for a fold's calibration and validation rows."""

    predictions: dict[str, np.ndarray]  # reports.PREDICTION_COLUMNS -> column
    validation: np.ndarray  # boolean mask of the validation rows
    selection: Any  # workers.calibration.CalibrationSelection
    q: float


def calibrated_predictions(
    spec: FoldSpec,
    features: FeatureSet,
    y_cal: np.ndarray,
    y_val: np.ndarray,
    cal: Any,
    val: Any,
    config: TrainConfig,
) -> CalibratedPredictions:
    """Calibrate p_up and fit conformal intervals on the calibration segment; apply to both."""
    y_up_cal = (y_cal > 0).astype(np.float64)
    # Chosen by cross-fitting on the calibration segment, then applied to validation.
    selection = select_calibration(cal.p_up, y_up_cal, n_splits=config.calibration_splits)
    cal_scores = normalized_scores(y_cal, cal.mu, cal.sigma)
    q = conformal_quantile(cal_scores, config.alpha)

    n_cal, n_val = len(y_cal), len(y_val)
    y = np.concatenate([y_cal, y_val])
    mu = np.concatenate([cal.mu, val.mu])
    sigma = np.concatenate([cal.sigma, val.sigma])
    p_raw = np.concatenate([cal.p_up, val.p_up])
    lo, hi = conformal_interval(mu, sigma, q)
    rows = np.r_[spec.calibration.start : spec.calibration.stop, spec.validation.start : spec.validation.stop]
    predictions = {
        "timestamp": features.timestamps[rows],
        "fold_id": np.full(n_cal + n_val, spec.fold_id, dtype=np.int64),
        "segment": np.array(["calibration"] * n_cal + ["validation"] * n_val),
        "y": y,
        "mu": mu,
        "sigma": sigma,
        "p_up_raw": p_raw,
        "p_up_cal": selection.calibrator.predict(p_raw),  # in-sample for calibration rows
        "conformal_lo": lo,
        "conformal_hi": hi,
        "conformal_p": conformal_pvalues(cal_scores, normalized_scores(y, mu, sigma)),
        "pit_z": (y - mu) / sigma,
    }
    validation = np.r_[np.zeros(n_cal, dtype=bool), np.ones(n_val, dtype=bool)]
    return CalibratedPredictions(predictions, validation, selection, q)


def finish_fold(
    spec: FoldSpec,
    features: FeatureSet,
    y_cal: np.ndarray,
    y_val: np.ndarray,
    cal: Any,
    val: Any,
    config: TrainConfig,
) -> FoldResult:
    """Calibrate, fit conformal intervals and score the selected model's predictions.

    ``cal`` and ``val`` are the selected model's forecasts (``workers.train.Forecast``). The
    validation metrics are recomputed for exactly these forecasts, so the summary matches the CSV.
    """
    from workers.train import evaluate_epoch

    out = calibrated_predictions(spec, features, y_cal, y_val, cal, val, config)
    pred, is_val = out.predictions, out.validation
    y_up_val = (y_val > 0).astype(np.float64)
    p_val_cal = pred["p_up_cal"][is_val]

    metrics: dict[str, Any] = evaluate_epoch(
        cal, val, y_cal, y_val,
        alpha=config.alpha, loss_weights=(config.w_nll, config.w_bce, config.w_brier),
    )
    metrics["ECE_cal"] = expected_calibration_error(y_up_val, p_val_cal)
    metrics["val_brier_cal"] = brier_score(y_up_val, p_val_cal)
    metrics["val_bce_cal"] = binary_cross_entropy(y_up_val, p_val_cal)
    metrics["conformal_q"] = float(out.q) if np.isfinite(out.q) else None

    cal_warning = calibration_warning(
        len(y_cal), config.min_calibration_samples, metrics["ECE_cal"], config.ece_warning_threshold
    )
    coverage = interval_coverage(y_val, pred["conformal_lo"][is_val], pred["conformal_hi"][is_val])
    cov_warning = coverage_warning(coverage, config.alpha, config.coverage_tolerance, len(y_val))
    return FoldResult(
        fold_id=spec.fold_id,
        predictions=pred,
        metrics=metrics,
        calibration_method=out.selection.method,
        calibration_scores=dict(out.selection.cv_scores),
        calibration_warning=cal_warning,
        coverage_warning=cov_warning,
    )
