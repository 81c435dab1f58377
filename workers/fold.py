"""One fold end to end (``run_fold``: scale, train, calibrate, conformal, score) and its thin actor.

``run_fold`` is a plain function. ``FoldTrainer`` is a plain class around it that keeps torch
imported between runs and carries a cancel flag: the local executor calls it in-process, and the
Ray executor applies ``ray.remote`` to it where it launches actors (the same code runs in both).
A fold publishes ``epoch_metrics`` (and, for a live audience, ``batch_progress`` and
``prediction_delta``) through the publisher it is given and returns a ``FoldResult``; the driver
writes the files and publishes ``fold_complete`` (files are written on the head side, DESIGN 7).
Torch is imported only inside ``run_fold``: the driver imports this module for ``FoldResult``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from orchestrator.config import FoldSpec, TrainConfig
from orchestrator.errors import RunCancelledError
from orchestrator.messages import BatchProgress, EpochMetrics
from workers.calibration import CalibrationSelection, calibration_warning, select_calibration
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
from workers.metrics import (
    Forecast,
    binary_cross_entropy,
    brier_score,
    evaluate_epoch,
    expected_calibration_error,
)

if TYPE_CHECKING:
    import torch

    from workers.train import EpochRecord, TrainSettings

__all__ = [
    "FoldTrainer",
    "FoldResult",
    "FoldContext",
    "FoldScores",
    "Publisher",
    "run_fold",
    "finish_fold",
    "train_settings",
    "calibrated_predictions",
    "CalibratedPredictions",
]

FloatArray = npt.NDArray[np.float64]
# reports.PREDICTION_COLUMNS -> column; calibration rows first, then validation rows
Predictions = dict[str, np.ndarray]

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
class FoldScores:
    """The selected model's calibrated predictions of one fold and their scores."""

    predictions: Predictions
    metrics: dict[str, float | None]
    calibration_method: str
    calibration_scores: dict[str, float]
    calibration_warning: str | None
    coverage_warning: str | None


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
    train_seconds: float
    device: str
    attempt: int
    # Set by the executor: seconds from its dispatch of the fold to the result back in the driver.
    round_trip_seconds: float | None = None


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


def _never() -> bool:
    return False


def run_fold(
    features: FeatureSet,
    spec: FoldSpec,
    config: TrainConfig,
    context: FoldContext,
    publisher: Publisher,
    should_stop: Callable[[], bool] = _never,
) -> FoldResult:
    """Train one fold and score its selected model.

    ``should_stop`` is polled between epochs; once it says stop, the fold's events are flushed
    and ``RunCancelledError`` is raised.
    """
    import torch

    from workers.train import BatchReporter, Segments, fit

    torch.set_num_threads(max(1, int(config.cpus_per_fold)))
    device = _device_for(config)
    if device.type == "cuda" and config.gpus_per_fold < 1:
        # Folds sharing a GPU each keep to their share of its memory.
        torch.cuda.set_per_process_memory_fraction(config.gpus_per_fold, torch.cuda.current_device())

    train, cal, val = spec.train.as_slice(), spec.calibration.as_slice(), spec.validation.as_slice()
    scaler = Standardizer.fit(features.X[train])  # train segment only
    segments = Segments(
        X_train=scaler.transform(features.X[train]),
        y_train=features.y[train],
        X_cal=scaler.transform(features.X[cal]),
        y_cal=features.y[cal],
        X_val=scaler.transform(features.X[val]),
        y_val=features.y[val],
    )

    fold_id = spec.fold_id
    deltas = PredictionDeltaTracker(features.timestamps[val], rtol=config.prediction_delta_rtol)

    def on_epoch(metrics: EpochRecord) -> None:
        publisher.publish(EpochMetrics.model_validate({"fold_id": fold_id, **metrics}))

    def on_forecasts(epoch: int, cal: Forecast, val: Forecast) -> None:
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
        publisher.publish(
            BatchProgress(
                fold_id=fold_id,
                epoch=epoch,
                batch=batch,
                total_batches=total,
                train_loss=loss,
                samples_per_second=rate,
            )
        )

    started = time.perf_counter()
    outcome = fit(
        segments,
        train_settings(config, fold_id),
        device=device,
        on_epoch=on_epoch,
        elapsed=lambda: time.time() - context.training_started_at,
        on_batch=BatchReporter(config.batch_progress_interval_s, on_batch)
        if config.batch_progress_interval_s > 0
        else None,
        on_forecasts=on_forecasts if config.prediction_deltas else None,
        should_stop=should_stop,
    )
    if should_stop():
        publisher.flush()
        raise RunCancelledError(f"run {context.run_id} was cancelled (fold {fold_id})")
    best = outcome.history[outcome.best_epoch] if outcome.history else {}
    scores = finish_fold(spec, features, segments.y_cal, segments.y_val, outcome.cal, outcome.val, config)
    if config.prediction_deltas and publisher.wants("prediction_delta"):
        # the selected model's rows; without an audience they are in the predictions CSV
        rows = as_rows(scores.predictions, scores.predictions["segment"] == "validation")
        for message in deltas.update(fold_id, outcome.best_epoch, rows, final=True):
            publisher.publish(message)
    # Every event of the fold reaches the hub before the result (and so fold_complete) does.
    publisher.flush()
    return FoldResult(
        fold_id=fold_id,
        predictions=scores.predictions,
        metrics={
            **scores.metrics,
            **{key: best.get(key) for key in _TRAIN_KEYS},
            "epoch": outcome.best_epoch,
        },
        calibration_method=scores.calibration_method,
        calibration_scores=scores.calibration_scores,
        calibration_warning=scores.calibration_warning,
        coverage_warning=scores.coverage_warning,
        best_epoch=outcome.best_epoch,
        epochs_run=outcome.epochs_run,
        stopped_early=outcome.stopped_early,
        train_seconds=time.perf_counter() - started,
        device=str(device),
        attempt=context.attempt,
    )


class FoldTrainer:
    """The fold actor: ``run_fold`` with a cancel flag, kept alive so torch loads once per process."""

    def __init__(self) -> None:
        # The optimizer's first call imports torch._dynamo (about 1.4 s on a small machine): an
        # actor pays it when it starts, beside the driver's set-up, not inside its first fold.
        import torch._dynamo  # noqa: F401

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
        """``run_fold``, stopped by ``cancel()`` (an actor) or ``should_stop`` (in-process)."""
        self._cancelled = False

        def stop() -> bool:
            return self._cancelled or (should_stop is not None and should_stop())

        return run_fold(features, spec, config, context, publisher, stop)


@dataclass(frozen=True)
class CalibratedPredictions:
    """The selected model's predictions for a fold's calibration and validation rows."""

    predictions: Predictions
    validation: npt.NDArray[np.bool_]  # mask of the validation rows
    selection: CalibrationSelection
    q: float


def calibrated_predictions(
    spec: FoldSpec,
    features: FeatureSet,
    y_cal: FloatArray,
    y_val: FloatArray,
    cal: Forecast,
    val: Forecast,
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
    y_cal: FloatArray,
    y_val: FloatArray,
    cal: Forecast,
    val: Forecast,
    config: TrainConfig,
) -> FoldScores:
    """Calibrate, fit conformal intervals and score the selected model's predictions.

    ``cal`` and ``val`` are the selected model's forecasts. The validation metrics are
    recomputed for exactly these forecasts, so the summary matches the CSV.
    """
    out = calibrated_predictions(spec, features, y_cal, y_val, cal, val, config)
    pred, is_val = out.predictions, out.validation
    y_up_val = (y_val > 0).astype(np.float64)
    p_val_cal = pred["p_up_cal"][is_val]

    metrics = evaluate_epoch(
        cal,
        val,
        y_cal,
        y_val,
        alpha=config.alpha,
        loss_weights=(config.w_nll, config.w_bce, config.w_brier),
    )
    ece_cal = expected_calibration_error(y_up_val, p_val_cal)
    metrics["ECE_cal"] = ece_cal
    metrics["val_brier_cal"] = brier_score(y_up_val, p_val_cal)
    metrics["val_bce_cal"] = binary_cross_entropy(y_up_val, p_val_cal)
    metrics["conformal_q"] = float(out.q) if np.isfinite(out.q) else None

    cal_warning = calibration_warning(
        len(y_cal), config.min_calibration_samples, ece_cal, config.ece_warning_threshold
    )
    coverage = interval_coverage(y_val, pred["conformal_lo"][is_val], pred["conformal_hi"][is_val])
    cov_warning = coverage_warning(coverage, config.alpha, config.coverage_tolerance, len(y_val))
    return FoldScores(
        predictions=pred,
        metrics=metrics,
        calibration_method=out.selection.method,
        calibration_scores=dict(out.selection.cv_scores),
        calibration_warning=cal_warning,
        coverage_warning=cov_warning,
    )
