"""A study's selection diagnostics on disk and on show: its two files, their API view, the end notification.

``selection.json`` and ``selection_matrix.csv`` are rewritten as the study's trials complete (DESIGN 12):

``StudySelection.update`` reads every completed trial's out-of-sample rows from its run folder
(the validation rows of its predictions CSVs, each fold's naive forecast and the loss weights
from its ``summary.json``), runs the pure ``orchestrator.hpo.selection.selection_diagnostics``
and writes both files atomically beside ``trials.csv``. A finished trial's files never change,
so its rows are read once per session and kept; a resumed session reads the earlier trials once,
on its first update. Beside the report's own keys (docs/edge.md), ``selection.json`` has
``best_vs_naive`` (the best run's aggregate ``skill``), ``trials_without_rows`` (completed
trials whose files could not be read) and ``updated_at``. A study whose trials cannot be compared
(different data) gets a ``selection.json`` with ``error`` instead, and the study goes on.

``selection_view`` is what the API and the pages show of a report: every scalar, the logits as a
histogram and the in-sample/out-of-sample pairs thinned (12870 of each for 16 blocks).

``selection_notification`` is the warning a study's end gives when its verdict is not ``skill``
or its selection is judged ``luck`` (the rule of docs/api.md and docs/hpo.md).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from orchestrator.hpo.overfitting import Direction
from orchestrator.hpo.selection import TrialRows, selection_diagnostics, trial_rows_from_frame
from orchestrator.hpo.spec import HpoSpec
from orchestrator.messages import Notification, sanitize
from orchestrator.run.reports import PREDICTION_COLUMNS, atomic_write_text

__all__ = [
    "MATRIX_FILE",
    "SELECTION_FILE",
    "StudySelection",
    "read_selection",
    "read_trial_rows",
    "selection_notification",
    "selection_view",
]

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"
MATRIX_FILE = "selection_matrix.csv"
# the prediction CSV's columns the selection reads (``run.reports.PREDICTION_COLUMNS``)
_CSV_COLUMNS = frozenset(PREDICTION_COLUMNS) - {"fold_id", "conformal_p", "pit_z"}
HISTOGRAM_BINS = 20  # logit bins, an edge at 0: the share at or left of it is the PBO
VIEW_POINTS = 500  # in-sample/out-of-sample pairs shown


@dataclass(frozen=True)
class _TrialData:
    summary_path: str
    rows: TrialRows
    skill: dict[str, Any] | None  # the run's aggregate skill against the naive forecast


def _summary_path(trial: FrozenTrial, study_dir: Path) -> Path | None:
    """The trial's summary.json: its user attribute, else where its run folder is in this study's
    folder (a relative path written by a session started elsewhere)."""
    given = trial.user_attrs.get("summary_path")
    if isinstance(given, str) and Path(given).is_file():
        return Path(given)
    run_id = trial.user_attrs.get("run_id")
    if isinstance(run_id, str) and (study_dir / "runs" / run_id / "summary.json").is_file():
        return study_dir / "runs" / run_id / "summary.json"
    return None


def read_trial_rows(number: int, summary_path: Path) -> tuple[TrialRows, dict[str, Any] | None]:
    """A completed trial's validation rows over all its folds, from its run folder, and its run's
    aggregate skill. Each fold's CSV is looked up in the run folder by the file name the summary
    gives (a path in the summary may be relative to another working directory). Rows get their
    fold's naive ``mu``/``sigma`` when every fold has its ``naive`` (runs written before the
    baseline have none: no ``best_dm_p`` then)."""
    summary = json.loads(summary_path.read_text())
    folder = summary_path.parent
    frames = []
    for fold in summary["folds"]:
        csv = folder / "predictions" / Path(str(fold["predictions_path"])).name
        frame = pd.read_csv(csv, usecols=lambda c: c in _CSV_COLUMNS)
        frame = frame[frame["segment"] == "validation"]
        naive = fold.get("naive")
        if naive is not None:
            frame = frame.assign(naive_mu=float(naive["mu"]), naive_sigma=float(naive["sigma"]))
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    if any(fold.get("naive") is None for fold in summary["folds"]):
        rows = rows.drop(columns=["naive_mu", "naive_sigma"], errors="ignore")
    config = summary.get("config", {})
    weights = (
        float(config.get("w_nll", 1.0)),
        float(config.get("w_bce", 1.0)),
        float(config.get("w_brier", 1.0)),
    )
    skill = summary.get("aggregate", {}).get("skill")
    return trial_rows_from_frame(number, rows, loss_weights=weights), skill if isinstance(
        skill, dict
    ) else None


class StudySelection:
    """One session's view of a study's selection diagnostics: the completed trials' rows, read
    once each, and the last report written (``report``; None before the first update or when no
    completed trial has rows)."""

    def __init__(self) -> None:
        self._trials: dict[int, _TrialData] = {}
        self._lock = threading.Lock()
        self.report: dict[str, Any] | None = None

    def _data(self, trial: FrozenTrial, study_dir: Path) -> _TrialData | None:
        path = _summary_path(trial, study_dir)
        if path is None:
            return None
        cached = self._trials.get(trial.number)
        if cached is not None and cached.summary_path == str(path):
            return cached
        try:
            rows, skill = read_trial_rows(trial.number, path)
        except (OSError, ValueError, KeyError) as err:
            log.warning(
                "trial %d: its out-of-sample rows cannot be read from %s: %s", trial.number, path, err
            )
            return None
        self._trials[trial.number] = data = _TrialData(str(path), rows, skill)
        return data

    def update(self, study: optuna.Study, spec: HpoSpec) -> dict[str, Any] | None:
        """Recompute the diagnostics over the study's completed trials and rewrite both files;
        returns the report (None, and no file written, while no completed trial has rows)."""
        with self._lock:
            completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            found = {t.number: self._data(t, spec.study_dir) for t in completed}
            usable = {n: d for n, d in found.items() if d is not None}
            if not usable:
                return None
            best = _best_of(completed, usable, str(spec.direction))
            missing = sorted(n for n, d in found.items() if d is None)
            self.report = self._write(spec, usable, best, missing)
            return self.report

    def _write(
        self, spec: HpoSpec, usable: Mapping[int, _TrialData], best: int, missing: list[int]
    ) -> dict[str, Any]:
        direction: Direction = "maximize" if str(spec.direction) == "maximize" else "minimize"
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        extra = {"trials_without_rows": missing, "updated_at": stamp}
        try:
            selection = selection_diagnostics(
                [d.rows for d in usable.values()], metric=spec.metric, direction=direction, best_trial=best
            )
        except ValueError as err:  # trials over different data: nothing to compare, the study goes on
            log.warning("study %s: no selection diagnostics: %s", spec.study, err)
            report: dict[str, Any] = {"error": str(err), "n_trials": len(usable), **extra}
            (spec.study_dir / MATRIX_FILE).unlink(missing_ok=True)
            atomic_write_text(spec.study_dir / SELECTION_FILE, report_text(report))
            return report
        report = {**selection.report, "best_vs_naive": usable[best].skill, **extra}
        atomic_write_text(
            spec.study_dir / MATRIX_FILE, selection.matrix.to_csv(index=False, float_format="%.17g")
        )
        atomic_write_text(spec.study_dir / SELECTION_FILE, report_text(report))
        return report


def report_text(report: Mapping[str, Any]) -> str:
    """``report`` as JSON with one line per key: its per-split lists (thousands of numbers) stay
    on one line each, written by ``json``'s C encoder, which ``indent`` would replace by the
    pure-Python one (about 60 ms against 5 ms for 12,870 splits, after every completed trial).
    NaN and infinities are written as null (``sanitize``)."""

    def lines(items: Mapping[str, Any]) -> list[str]:
        return [f"  {json.dumps(key)}: {json.dumps(value, allow_nan=False)}" for key, value in items.items()]

    try:
        text = lines(report)
    except ValueError:  # a non-finite number somewhere (rare): the slow walk that replaces it
        text = lines(sanitize(dict(report)))
    return "{\n" + ",\n".join(text) + "\n}\n"


def _best_of(completed: list[FrozenTrial], usable: Mapping[int, _TrialData], direction: str) -> int:
    """The best completed trial by its objective value among those with rows (the study's best
    trial unless its files cannot be read); ties go to the lower number, as Optuna's."""
    sign = -1.0 if direction == "maximize" else 1.0
    scored = [
        (sign * float(t.value), t.number) for t in completed if t.number in usable and t.value is not None
    ]
    return min(scored)[1] if scored else min(usable)


def read_selection(study_dir: str | Path) -> dict[str, Any] | None:
    """The study's ``selection.json``, or None when it has none (yet) or it cannot be read."""
    path = Path(study_dir) / SELECTION_FILE
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _histogram(logits: list[float], n_trials: int) -> dict[str, Any]:
    """Counts of the logits in ``HISTOGRAM_BINS`` bins over [-ln N, ln N] (every logit is in it:
    rank/(N+1) lies in [1/(N+1), N/(N+1)]), each bin (lower, upper], so a logit of exactly 0 (at
    the median) counts left of 0 as the PBO does."""
    bound = math.log(max(n_trials, 2))
    half = np.linspace(0.0, bound, HISTOGRAM_BINS // 2 + 1)
    edges = np.concatenate([-half[:0:-1], half])  # 0 exactly an edge
    index = np.clip(
        np.searchsorted(edges, np.asarray(logits, dtype=np.float64), side="left") - 1, 0, HISTOGRAM_BINS - 1
    )
    counts = (
        np.bincount(index, minlength=HISTOGRAM_BINS) if logits else np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    )
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts]}


def _fit(x: np.ndarray, y: np.ndarray) -> dict[str, float] | None:
    """Least squares y = intercept + slope x over every split (the paper's degradation line)."""
    if x.size < 2 or not float(np.ptp(x)) > 0.0:
        return None
    dx = x - x.mean()
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    return {"slope": slope, "intercept": float(y.mean() - slope * x.mean())}


def selection_view(report: Mapping[str, Any] | None, max_points: int = VIEW_POINTS) -> dict[str, Any] | None:
    """A report as the API and the pages show it: every other key as is; ``logits``,
    ``is_performance`` and ``oos_performance`` replaced by ``logit_histogram`` (edges, counts),
    ``performance`` (every k-th split's pair, at most ``max_points``, with k as ``stride``, the
    number of splits as ``splits``) and ``performance_fit`` (over all splits)."""
    if report is None:
        return None
    view = {k: v for k, v in report.items() if k not in ("logits", "is_performance", "oos_performance")}
    if "error" in report:
        return view
    logits = list(report.get("logits") or [])
    x = np.asarray(report.get("is_performance") or [], dtype=np.float64)
    y = np.asarray(report.get("oos_performance") or [], dtype=np.float64)
    stride = max(1, math.ceil(x.size / max_points))
    view["logit_histogram"] = _histogram(logits, len(report.get("pbo_trials") or []))
    view["performance"] = {
        "in_sample": x[::stride].tolist(),
        "out_of_sample": y[::stride].tolist(),
        "stride": stride,
        "splits": int(x.size),
    }
    view["performance_fit"] = _fit(x, y)
    return view


def _p(value: Any, digits: int = 3) -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def selection_notification(report: Mapping[str, Any] | None, study: str) -> Notification | None:
    """The ``selection_warning`` of a study's end (level warning): when its verdict is not
    ``skill`` or its selection is ``luck``; None when it is ``skill`` and not ``luck``, or when there
    is no report (no completed trial with rows)."""
    if report is None:
        return None
    if "error" in report:
        message = f"study {study}: no selection diagnostics: {report['error']}"
        return Notification(level="warning", kind="selection_warning", message=message)
    verdict, selection = report.get("verdict"), report.get("selection")
    if verdict == "skill" and selection != "luck":
        return None
    message = (
        f"study {study}: {verdict} (best trial {report.get('best_trial')}: Diebold-Mariano p "
        f"{_p(report.get('best_dm_p'), 4)} against the naive forecast, deflated Sharpe ratio "
        f"{_p(report.get('dsr'))} for {report.get('n_trials')} trials); selection "
        f"{selection or 'not judged'} (PBO {_p(report.get('pbo'))})"
    )
    return Notification(level="warning", kind="selection_warning", message=message)
