"""What a study has produced: trial values, the trials table (trials.csv), the best trial and its config.

Pure functions of Optuna's frozen trials, except the two writers (``write_trials_csv``,
``write_best_config``), which replace their file atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from orchestrator.hpo.selection_files import StudySelection, selection_view
from orchestrator.hpo.spec import HpoSpec
from orchestrator.hpo.state import StudyState
from orchestrator.lifecycle import Run, RunState
from orchestrator.messages import HpoTrial, sanitize
from orchestrator.run.reports import atomic_write_text

__all__ = [
    "trial_outcome",
    "trial_event",
    "write_study_files",
    "FINISHED",
    "EVENT_STATE",
    "StudyResult",
    "session_result",
    "objective_value",
    "best_trial",
    "standing",
    "trials_frame",
    "write_trials_csv",
    "write_best_config",
    "status_of",
]


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# A finished trial's state as its hpo_trial event says it.
EVENT_STATE = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
}


@dataclass
class StudyResult:
    """How a study session ended (the storage keeps every trial of every session)."""

    study: str
    state: StudyState
    trials_done: int
    trials_total: int
    session_trials: list[int]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] | None
    trials_csv: str
    best_config: str | None
    counts: dict[str, int]
    session_completed: int = 0  # trials of this session that completed (the exit code's rule)


def session_result(
    study: optuna.Study,
    spec: HpoSpec,
    state: StudyState,
    trials_total: int,
    session_trials: Sequence[int],
) -> StudyResult:
    """How the session ended: its state, the study's counts by trial state, the best trial."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    done = sum(t.state in FINISHED for t in trials)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    best_config = spec.study_dir / "best_config.yaml"
    return StudyResult(
        study=spec.study,
        state=state,
        trials_done=done,
        trials_total=max(trials_total, done),
        session_trials=sorted(session_trials),
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else None,
        trials_csv=str(spec.study_dir / "trials.csv"),
        best_config=str(best_config) if best_config.exists() else None,
        counts=counts,
        session_completed=sum(
            t.state is TrialState.COMPLETE for t in trials if t.number in set(session_trials)
        ),
    )


def objective_value(summary: Mapping[str, Any], metric: str) -> tuple[float | None, str | None]:
    """Mean over folds of ``metric`` in the summary's per-fold final metrics, or why not."""
    values = []
    for fold in summary["folds"]:
        value = fold["metrics"].get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None, f"{metric} is undefined (null) in fold {fold['fold_id']}"
        values.append(float(value))
    if not values:
        return None, "the run has no folds"
    return sum(values) / len(values), None


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def standing(
    trials: Sequence[FrozenTrial], direction: str, hidden: Collection[int] = ()
) -> tuple[int, FrozenTrial | None]:
    """Finished trials and the best completed one, leaving out the trial numbers in ``hidden``."""
    shown = [t for t in trials if t.number not in hidden and t.state in FINISHED]
    sign = -1.0 if direction == "maximize" else 1.0
    scored = [
        (sign * t.value, t.number, t) for t in shown if t.state is TrialState.COMPLETE and t.value is not None
    ]
    return len(shown), min(scored, key=lambda s: s[:2])[2] if scored else None


def trials_frame(trials: Sequence[FrozenTrial]) -> pd.DataFrame:
    """One row per trial (by number): state, value, timing, last epoch, run, error, params."""
    names: list[str] = []
    for trial in trials:
        names += [n for n in trial.params if n not in names]
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        last = trial.last_step
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value if trial.state is not TrialState.FAIL else None,
                "duration_seconds": trial.duration.total_seconds() if trial.duration else None,
                "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
                "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
                "last_epoch": last,
                "last_intermediate_value": trial.intermediate_values.get(last) if last is not None else None,
                "run_id": trial.user_attrs.get("run_id"),
                "run_state": trial.user_attrs.get("run_state"),
                "summary_path": trial.user_attrs.get("summary_path"),
                "error": trial.user_attrs.get("error"),
                **{f"params_{n}": trial.params.get(n) for n in names},
            }
        )
    columns = [
        "number",
        "state",
        "value",
        "duration_seconds",
        "datetime_start",
        "datetime_complete",
        "last_epoch",
        "last_intermediate_value",
        "run_id",
        "run_state",
        "summary_path",
        "error",
    ] + [f"params_{n}" for n in names]
    return pd.DataFrame(rows, columns=columns)


def write_trials_csv(path: Path, trials: Sequence[FrozenTrial]) -> None:
    atomic_write_text(path, trials_frame(trials).to_csv(index=False))


def write_best_config(path: Path, spec: HpoSpec, best: FrozenTrial) -> None:
    """The best trial's exact run config, usable with ``orchestrator train --config``."""
    header = (
        f"# Best trial of HPO study {spec.study!r}: trial {best.number}, "
        f"{spec.metric} = {best.value!r} ({spec.direction}), run {best.user_attrs.get('run_id')}\n"
        f"# Reproduce it: python -m orchestrator train --config {path}\n"
        f"# Tuned: {json.dumps(best.params)}\n"
    )
    body = yaml.safe_dump(best.user_attrs["config"], sort_keys=False)
    atomic_write_text(path, header + body)


def status_of(study: optuna.Study) -> dict[str, Any]:
    """The trials table and the best trial of a study, JSON-ready (NaN as null)."""
    trials = study.get_trials(deepcopy=False)
    table = json.loads(trials_frame(trials).to_json(orient="records"))
    for row, trial in zip(table, sorted(trials, key=lambda t: t.number), strict=True):
        row["params"] = dict(trial.params)
        for key in [k for k in row if k.startswith("params_")]:
            del row[key]
    best = best_trial(study)
    status: dict[str, Any] = sanitize(
        {
            "study": study.study_name,
            "metric": study.user_attrs.get("metric"),
            "direction": study.direction.name.lower(),
            "trials_done": sum(t.state in FINISHED for t in trials),
            "trials_running": sum(t.state is TrialState.RUNNING for t in trials),
            "best": None
            if best is None
            else {
                "trial": best.number,
                "value": best.value,
                "params": dict(best.params),
                "run_id": best.user_attrs.get("run_id"),
                "summary_path": best.user_attrs.get("summary_path"),
            },
            "trials": table,
        }
    )
    return status


def write_study_files(
    study: optuna.Study,
    spec: HpoSpec,
    *,
    cancelled: bool,
    trials_total: int,
    best_written: int | None,
    selection: StudySelection | None = None,
) -> int | None:
    """Rewrite the study folder's ``trials.csv``, ``selection.json`` and ``selection_matrix.csv``
    (through ``selection``, which keeps the completed trials' rows between calls: pass the same
    one each time) and ``report.html``, and ``best_config.yaml`` when the best trial is not
    ``best_written`` (or the file is missing). Returns the best trial's number."""
    from orchestrator.run.report_html import write_study_report

    trials = study.get_trials(deepcopy=False)
    write_trials_csv(spec.study_dir / "trials.csv", trials)
    report = (selection or StudySelection()).update(study, spec)
    write_study_report(
        spec.study_dir,
        trials_frame(trials).to_dict("records"),
        selection=selection_view(report),
        study=spec.study,
        metric=spec.metric,
        direction=str(spec.direction),
        state="cancelled" if cancelled else None,
        trials_total=trials_total,
    )
    best = best_trial(study)
    if best is None or "config" not in best.user_attrs:
        return best_written
    path = spec.study_dir / "best_config.yaml"
    if best.number != best_written or not path.exists():
        write_best_config(path, spec, best)
    return best.number


def trial_event(
    study: optuna.Study,
    spec: HpoSpec,
    trials_total: int,
    pending: Collection[int],
    number: int,
    state: str,
    params: dict[str, Any],
    *,
    value: float | None = None,
    duration: float | None = None,
    trial_run_id: str | None = None,
    error: str | None = None,
) -> HpoTrial:
    """The ``hpo_trial`` event of trial ``number``. Trials that ended together are announced one
    at a time: a session trial in ``pending`` (its ending not out yet) counts neither in
    ``trials_done`` nor for ``best_value``."""
    done, best = standing(study.get_trials(deepcopy=False), str(spec.direction), pending)
    return HpoTrial.model_validate(
        {
            "study": spec.study,
            "trial": number,
            "state": state,
            "params": params,
            "value": value,
            "duration_seconds": duration,
            "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None,
            "trials_done": done,
            "trials_total": max(trials_total, done),
            "trial_run_id": trial_run_id,
            "error": error,
        }
    )


def trial_outcome(
    run: Run | None, pruned: bool, error: str | None, metric: str
) -> tuple[TrialState, float | None, str | None]:
    """How a trial ended: PRUNED (the pruner stopped its run), COMPLETE with its value, or FAIL
    with why (``error``: its config was refused or the batch crashed; or its run's failure)."""
    if error is None and pruned:
        return TrialState.PRUNED, None, None
    if error is None and run is not None:
        if run.state is RunState.COMPLETED and run.summary_path:
            summary = json.loads(Path(run.summary_path).read_text())
            value, error = objective_value(summary, metric)
            if value is not None:
                return TrialState.COMPLETE, value, None
        elif run.state is RunState.CANCELLED:
            error = "cancelled with the study"
        else:
            error = run.error or f"run ended {run.state.value}"
    return TrialState.FAIL, None, error
