"""The driver side of one run (DESIGN 3): data, folds, reports and lifecycle events.

``execute_run`` is the whole run, top to bottom. It publishes the lifecycle events as producer
``driver``; the folds publish their own ``epoch_metrics``. Whatever happens, the run ends with
exactly one of ``training_complete`` or ``training_error`` and a terminal state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

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

__all__ = ["new_run", "execute_run", "execute_runs", "RunDriver", "RunPhases"]

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
    execute_runs([RunDriver(run, sink, extra_summary=extra_summary, hpo_trial=hpo_trial)], executor)
    return run


class RunPhases(Protocol):
    """What ``execute_runs`` calls of a run's driver side: ``RunDriver``, or ``hpo.finisher.DeferredDriver``
    (whose ``on_result`` and ``finish`` run later, on its finisher's thread)."""

    def prepare(self) -> FoldJob | None: ...
    def on_result(self, result: FoldResult) -> None: ...
    def finish(self, executor_name: str, error: BaseException | None) -> Run: ...


def execute_runs(
    drivers: Sequence[RunPhases], executor: FoldExecutor, on_prepared: Callable[[], None] | None = None
) -> None:
    """Several runs to their ends, their folds trained in one executor call (packed together where
    they share an architecture: HPO trials admitted together). A run that fails (its data, a fold,
    its files, a cancel) ends alone; the others go on. Never raises for a run failure.
    ``on_prepared`` is called once every run is prepared, before the executor call."""
    by_run: dict[str, RunPhases] = {}
    jobs: list[FoldJob] = []
    for driver in drivers:
        job = driver.prepare()
        if job is not None:
            by_run[job.run_id] = driver
            jobs.append(job)
    if on_prepared is not None:
        on_prepared()
    if not jobs:
        return
    finished: set[str] = set()

    def on_end(run_id: str, error: Exception | None) -> None:  # a run ends as soon as its folds do
        finished.add(run_id)
        by_run[run_id].finish(executor.name, error)

    try:
        errors = executor.run_jobs(jobs, lambda result: by_run[result.run_id].on_result(result), on_end)
    except Exception as err:  # the executor itself broke: every run of the call ends with it
        if not isinstance(err, OrchestratorError):
            log.exception("runs %s: the executor failed", ", ".join(by_run))
        errors = dict.fromkeys(by_run, err)
    for run_id, driver in by_run.items():
        if run_id not in finished:
            driver.finish(executor.name, errors.get(run_id))


class RunDriver:
    """One run's driver side in three phases (``prepare``, ``on_result`` per fold, ``finish``), so
    that the folds of several runs can train in one executor call. It publishes the lifecycle
    events as producer ``driver``; whatever happens, the run ends with exactly one of
    ``training_complete`` or ``training_error`` and a terminal state."""

    def __init__(
        self,
        run: Run,
        sink: EventSink,
        *,
        extra_summary: dict[str, Any] | None = None,
        hpo_trial: int | None = None,
    ) -> None:
        self.run = run
        self.sink = sink
        self.extra_summary = extra_summary
        self.hpo_trial = hpo_trial
        self.folder = Path(run.run_dir)
        self.results: dict[int, FoldResult] = {}
        self.paths: dict[int, str] = {}
        self.edges: dict[int, dict[str, Any]] = {}  # each fold against the naive forecast (run/skill.py)
        self._data: Any = None
        self._specs: list[FoldSpec] = []
        self._data_warnings: dict[int, list[FeatureWarning]] = {}
        self._started = time.time()
        self._data_seconds = 0.0
        self._training_started_at = 0.0
        self.trained_at: float | None = None  # time.time() its folds ended, when finish comes later
        self._driver: Any = None

    def prepare(self) -> FoldJob | None:
        """Data, features, the fold plan, ``training_start``: the run's fold job, or None when the
        run has already ended (its data or config refused, a cancel)."""
        run, config = self.run, self.run.config
        self.sink.register_run(run.run_id, run.run_dir)
        self._driver = driver = self.sink.publisher(run.run_id, "driver")
        self._started = time.time()
        try:
            run.transition(RunState.RUNNING)
            self._data = data = run_data(config.data, config.date_format, config.lookback)
            features = data.features
            driver.publish(DatasetReady(size=len(features), min_samples=config.min_samples))
            if len(features) < config.min_samples:
                raise InsufficientDataError(len(features), config.min_samples)
            specs = self._specs = plan_feasible_folds(config, len(features))
            check_folds(config, specs)  # refuse what the data cannot support before any fold trains
            self._data_warnings = {spec.fold_id: _data_warnings(features, spec) for spec in specs}
            run.folds_total = len(specs)
            self._data_seconds = time.time() - self._started

            self._training_started_at = time.time()
            driver.publish(
                TrainingStart(
                    use_cv=config.use_cv,
                    total_folds=len(specs),
                    total_epochs=config.epochs,
                    hpo_trial=self.hpo_trial,
                )
            )
            for fold_id, found in self._data_warnings.items():
                if found:
                    driver.publish(
                        Notification(
                            level="warning",
                            kind="data_warning",
                            fold_id=fold_id,
                            message=f"fold {fold_id}: " + "; ".join(w.message for w in found),
                        )
                    )
            if run.cancel_requested.is_set():
                raise RunCancelledError(f"run {run.run_id} was cancelled")
        except Exception as err:
            self.finish("", err)
            return None
        return FoldJob(
            run_id=run.run_id,
            features=features,
            specs=specs,
            config=config,
            training_started_at=self._training_started_at,
            sink=self.sink,
            cancel_event=run.cancel_requested,
        )

    def on_result(self, result: FoldResult) -> None:
        """A fold's result: its predictions CSV, its warnings, ``fold_complete``."""
        path = write_predictions_csv(self.folder, result.fold_id, result.predictions)
        self.results[result.fold_id] = result
        self.paths[result.fold_id] = str(path)
        spec = self._specs[result.fold_id]
        y_train = self._data.features.y[spec.train.as_slice()]
        self.edges[result.fold_id] = edge = fold_edge(y_train, result.predictions)
        self.run.folds_done = len(self.results)
        warnings = (
            ("calibration_warning", result.calibration_warning),
            ("coverage_warning", result.coverage_warning),
        )
        for kind, warning in warnings:
            if warning:
                self._driver.publish(
                    Notification(
                        level="warning",
                        kind=kind,
                        fold_id=result.fold_id,
                        message=f"fold {result.fold_id}: {warning}",
                    )
                )
        self._driver.publish(
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

    def finish(self, executor_name: str, error: BaseException | None) -> Run:
        """The summary, ``report.html`` and ``training_complete``; or, after ``error`` (or a
        cancel), ``training_error``. Never raises for a run failure."""
        run = self.run
        try:
            if error is not None:
                raise error
            if run.cancel_requested.is_set():
                raise RunCancelledError(f"run {run.run_id} was cancelled")
            self._complete(executor_name)
        except RunCancelledError as err:
            _fail(run, self._driver, RunState.CANCELLED, str(err))
        except Exception as err:  # every failure ends the run with a readable training_error
            if not isinstance(err, OrchestratorError):
                log.exception("run %s failed", run.run_id, exc_info=err)
            _fail(run, self._driver, RunState.FAILED, _error_text(err))
        return run

    def _complete(self, executor_name: str) -> None:
        run, config, data, results = self.run, self.run.config, self._data, self.results
        frame, features = data.frame, data.features
        training_seconds = (self.trained_at or time.time()) - self._training_started_at
        per_fold = [
            _fold_summary(
                results[k], self.paths[k], self._specs[k], features, self._data_warnings[k], self.edges[k]
            )
            for k in sorted(results)
        ]
        summary = {
            "run_id": run.run_id,
            "created_at": run.created_at,
            "config": config.model_dump(),
            "executor": executor_name,
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
                    {k: r.predictions for k, r in results.items()},
                    {k: e["naive"] for k, e in self.edges.items()},
                ),
            },
            "timings": {
                "data_seconds": self._data_seconds,
                "training_seconds": training_seconds,
                "total_seconds": time.time() - self._started,
                "fold_train_seconds": {str(k): results[k].train_seconds for k in sorted(results)},
                **fold_overhead(results),
            },
            "versions": package_versions(),
            **(self.extra_summary or {}),
        }
        summary_path = write_summary(self.folder, summary)
        try:
            write_run_report(self.folder, summary)
        except BaseException:  # a full disk: no summary.json of a run that did not complete
            summary_path.unlink(missing_ok=True)
            raise
        run.summary_path = str(summary_path)
        self._driver.publish(TrainingComplete(folds_completed=len(results), summary_path=str(summary_path)))
        self._driver.flush()
        run.transition(RunState.COMPLETED)


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
        "pack_size": result.pack_size,
        "pack_id": result.pack_id,
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
