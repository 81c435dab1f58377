"""The driver side of one run (DESIGN 3): data, folds, reports and lifecycle events.

``execute_run`` is the whole run, top to bottom. It publishes the lifecycle events as producer
``driver``; the folds publish their own ``epoch_metrics``. Whatever happens, the run ends with
exactly one of ``training_complete`` or ``training_error`` and a terminal state.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.config import FoldSpec, TrainConfig
from orchestrator.data.cache import run_data
from orchestrator.errors import InsufficientDataError, OrchestratorError, RunCancelledError
from orchestrator.events.publish import EventSink
from orchestrator.execution.base import FoldExecutor, FoldJob
from orchestrator.lifecycle import Run, RunState
from orchestrator.messages import (
    DatasetReady,
    FoldComplete,
    Notification,
    TrainingComplete,
    TrainingError,
    TrainingStart,
)
from orchestrator.run.feasibility import check_folds, plan_feasible_folds
from orchestrator.run.report_html import write_run_report
from orchestrator.run.reports import (
    aggregate_metrics,
    new_run_id,
    package_versions,
    run_dir,
    write_predictions_csv,
    write_summary,
)
from orchestrator.run.skill import fold_edge, run_skill
from workers.features import FeatureSet, FeatureWarning, scaling_warnings
from workers.fold import FoldResult

__all__ = ["new_run", "execute_run"]

log = logging.getLogger(__name__)


def new_run(config: TrainConfig, run_id: str | None = None, **fields: Any) -> Run:
    """A new run of ``config`` in its folder under the reports root; ``fields``: more ``Run`` fields."""
    run_id = run_id or new_run_id()
    return Run(run_id=run_id, config=config, run_dir=str(run_dir(config.reports_dir, run_id)), **fields)


def _error_text(err: BaseException) -> str:
    if isinstance(err, OrchestratorError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def execute_run(
    run: Run,
    sink: EventSink,
    executor: FoldExecutor,
    *,
    extra_summary: dict[str, Any] | None = None,
    hpo_trial: int | None = None,
) -> Run:
    """Run to the end; never raises for a run failure (the state and events say how it ended)."""
    config = run.config
    folder = Path(run.run_dir)
    sink.register_run(run.run_id, run.run_dir)
    driver = sink.publisher(run.run_id, "driver")
    started = time.time()
    try:
        run.transition(RunState.RUNNING)
        data = run_data(config.data, config.date_format, config.lookback)
        frame, features = data.frame, data.features
        driver.publish(DatasetReady(size=len(features), min_samples=config.min_samples))
        if len(features) < config.min_samples:
            raise InsufficientDataError(len(features), config.min_samples)
        specs = plan_feasible_folds(config, len(features))
        check_folds(config, specs)  # refuse what the data cannot support before any fold trains
        data_warnings = {spec.fold_id: _data_warnings(features, spec) for spec in specs}
        run.folds_total = len(specs)
        data_seconds = time.time() - started

        training_started_at = time.time()
        driver.publish(
            TrainingStart(
                use_cv=config.use_cv,
                total_folds=len(specs),
                total_epochs=config.epochs,
                hpo_trial=hpo_trial,
            )
        )
        for fold_id, found in data_warnings.items():
            if found:
                driver.publish(
                    Notification(
                        level="warning",
                        kind="data_warning",
                        fold_id=fold_id,
                        message=f"fold {fold_id}: " + "; ".join(w.message for w in found),
                    )
                )
        results: dict[int, FoldResult] = {}
        paths: dict[int, str] = {}
        edges: dict[int, dict[str, Any]] = {}  # each fold against the naive forecast (run/skill.py)

        def on_result(result: FoldResult) -> None:
            path = write_predictions_csv(folder, result.fold_id, result.predictions)
            results[result.fold_id] = result
            paths[result.fold_id] = str(path)
            spec = specs[result.fold_id]
            edges[result.fold_id] = edge = fold_edge(features.y[spec.train.as_slice()], result.predictions)
            run.folds_done = len(results)
            warnings = (
                ("calibration_warning", result.calibration_warning),
                ("coverage_warning", result.coverage_warning),
            )
            for kind, warning in warnings:
                if warning:
                    driver.publish(
                        Notification(
                            level="warning",
                            kind=kind,
                            fold_id=result.fold_id,
                            message=f"fold {result.fold_id}: {warning}",
                        )
                    )
            driver.publish(
                FoldComplete(
                    fold_id=result.fold_id,
                    predictions_path=str(path),
                    calibration_method=result.calibration_method,
                    calibration_warning=result.calibration_warning,
                    coverage_warning=result.coverage_warning,
                    val_auc=result.metrics.get("val_auc"),
                    best_epoch=result.best_epoch,
                    nll_diff=edge["skill"]["nll_diff"],
                    dm_p=edge["skill"]["dm_p"],
                )
            )

        job = FoldJob(
            run_id=run.run_id,
            features=features,
            specs=specs,
            config=config,
            training_started_at=training_started_at,
            sink=sink,
            cancel_event=run.cancel_requested,
        )
        executor.run_folds(job, on_result)
        if run.cancel_requested.is_set():
            raise RunCancelledError(f"run {run.run_id} was cancelled")
        training_seconds = time.time() - training_started_at

        per_fold = [
            _fold_summary(results[k], paths[k], specs[k], features, data_warnings[k], edges[k])
            for k in sorted(results)
        ]
        summary = {
            "run_id": run.run_id,
            "created_at": run.created_at,
            "config": config.model_dump(),
            "executor": executor.name,
            "data": {
                "source": config.data,
                "fingerprint": data.fingerprint,
                "bars": len(frame),
                "samples": len(features),
                "first_timestamp": str(frame["timestamp"].iloc[0]),
                "last_timestamp": str(frame["timestamp"].iloc[-1]),
                "feature_names": list(features.feature_names),
            },
            "folds": per_fold,
            "aggregate": {
                **aggregate_metrics([f["metrics"] for f in per_fold]),
                "skill": run_skill(
                    {k: r.predictions for k, r in results.items()}, {k: e["naive"] for k, e in edges.items()}
                ),
            },
            "timings": {
                "data_seconds": data_seconds,
                "training_seconds": training_seconds,
                "total_seconds": time.time() - started,
                "fold_train_seconds": {str(k): results[k].train_seconds for k in sorted(results)},
                **fold_overhead(results),
            },
            "versions": package_versions(),
            **(extra_summary or {}),
        }
        summary_path = write_summary(folder, summary)
        try:
            write_run_report(folder, summary)
        except BaseException:  # a full disk: no summary.json of a run that did not complete
            summary_path.unlink(missing_ok=True)
            raise
        run.summary_path = str(summary_path)
        driver.publish(TrainingComplete(folds_completed=len(results), summary_path=str(summary_path)))
        driver.flush()
        run.transition(RunState.COMPLETED)
    except RunCancelledError as err:
        _fail(run, driver, RunState.CANCELLED, str(err))
    except Exception as err:  # every failure ends the run with a readable training_error
        if not isinstance(err, OrchestratorError):
            log.exception("run %s failed", run.run_id)
        _fail(run, driver, RunState.FAILED, _error_text(err))
    return run


def _fail(run: Run, driver: Any, state: RunState, message: str) -> None:
    driver.publish(TrainingError(error=message))
    try:
        driver.flush()
    finally:
        run.transition(state, error=message)


def _data_warnings(features: FeatureSet, spec: FoldSpec) -> list[FeatureWarning]:
    """What the fold's scaler (fit on its train segment, as the fold does) cannot represent."""
    X = features.X
    later = {
        "calibration": X[spec.calibration.as_slice()],
        "validation": X[spec.validation.as_slice()],
    }
    return scaling_warnings(X[spec.train.as_slice()], later, features.feature_names)


def _fold_summary(
    result: FoldResult,
    path: str,
    spec: Any,
    features: Any,
    data_warnings: list[FeatureWarning],
    edge: dict[str, Any],
) -> dict[str, Any]:
    def span(segment: Any) -> dict[str, Any]:
        return {
            "start": segment.start,
            "stop": segment.stop,
            "first_timestamp": str(np.datetime_as_string(features.timestamps[segment.start], unit="s")),
            "last_timestamp": str(np.datetime_as_string(features.timestamps[segment.stop - 1], unit="s")),
        }

    return {
        "fold_id": result.fold_id,
        "segments": {
            "train": span(spec.train),
            "calibration": span(spec.calibration),
            "validation": span(spec.validation),
        },
        "predictions_path": path,
        "metrics": result.metrics,
        **edge,  # naive, baseline, skill
        "calibration_method": result.calibration_method,
        "calibration_cv_bce": result.calibration_scores,
        "calibration_warning": result.calibration_warning,
        "coverage_warning": result.coverage_warning,
        "data_warnings": [w.to_dict() for w in data_warnings],
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "train_seconds": result.train_seconds,
        "device": result.device,
        "attempt": result.attempt,
    }


def fold_overhead(results: dict[int, FoldResult]) -> dict[str, Any]:
    """Each fold's orchestration overhead: from its dispatch by the executor to its result back
    in the driver (``fold_round_trip_seconds``), minus its train+evaluate compute in the worker
    (``fold_train_seconds``); and the overhead's share of all round trips."""
    trips = {k: r.round_trip_seconds for k, r in sorted(results.items()) if r.round_trip_seconds is not None}
    overhead = {k: max(trip - results[k].train_seconds, 0.0) for k, trip in trips.items()}
    total = sum(trips.values())
    return {
        "fold_round_trip_seconds": {str(k): v for k, v in trips.items()},
        "fold_overhead_seconds": {str(k): v for k, v in overhead.items()},
        "fold_overhead_fraction": sum(overhead.values()) / total if total > 0 else None,
    }
