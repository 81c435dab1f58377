"""A fold's selected model scored: ``p_up`` calibrated and conformal intervals fitted on the calibration
segment, both applied to the validation segment, and the summary's metrics of exactly those
predictions (the rows of the predictions CSV)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from orchestrator.config import FoldSpec, TrainConfig
from workers.calibration import CalibrationSelection, calibration_warning, select_calibration
from workers.conformal import (
    conformal_interval,
    conformal_pvalues,
    conformal_quantile,
    coverage_warning,
    interval_coverage,
    normalized_scores,
)
from workers.features import FeatureSet
from workers.metrics import (
    Forecast,
    binary_cross_entropy,
    brier_score,
    evaluate_epoch,
    expected_calibration_error,
)

__all__ = ["FoldScores", "CalibratedPredictions", "Predictions", "calibrated_predictions", "finish_fold"]

FloatArray = npt.NDArray[np.float64]
# run.reports.PREDICTION_COLUMNS -> column; calibration rows first, then validation rows
Predictions = dict[str, np.ndarray]


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
