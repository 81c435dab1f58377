"""Issue 23's acceptance, on real studies in this process (``executor=local``, seeded, small, no timing).

A study on a planted AR(1) in returns says ``skill`` with ``best_dm_p < 0.01``; a study on a pure
random walk never says ``skill`` and warns when it ends; ``pbo`` and ``dsr`` recomputed from the
study's files by the issue's rules (tests/edge_rules.py) equal selection.json's; every trial's
run summary carries ``baseline`` and ``skill`` per fold; the selection files follow the trials as
they complete, also when the study is resumed in a second session.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from orchestrator.config import config_from_mapping
from orchestrator.hpo import HpoSpec, run_study
from orchestrator.hpo.selection_files import MATRIX_FILE, StudySelection, read_selection
from tests.edge_rules import dsr_by_rule, pbo_by_rule
from tests.synthetic import ar1_ohlcv, random_walk_ohlcv

# Small models that learn an AR(1) of 0.3 in 4 epochs; lr and width are what the trials vary.
SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    "hidden": {"type": "int", "low": 8, "high": 32},
}


def _spec(folder: Path, bars: pd.DataFrame, trials: int) -> HpoSpec:
    data = folder / "bars.csv"
    if not data.exists():
        bars.to_csv(data, index=False)
    config = config_from_mapping(
        {
            "data": str(data),
            "reports_dir": str(folder / "reports"),
            "executor": "local",
            "min_samples": 300,
            "folds": 2,
            "epochs": 4,
            "lookback": 10,
            "batch_size": 128,
        }
    )
    values = {"study": "edge", "trials": trials, "pruner": "none", "sampler": "random", "sampler_seed": 3}
    return HpoSpec.model_validate({**values, "search_space": SPACE, "config": config})


class _Updates:
    """Each selection.json update of the session: the trial numbers it covered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trials: list[list[int]] = []
        real = StudySelection.update

        def update(selection: StudySelection, study: Any, spec: HpoSpec) -> dict[str, Any] | None:
            report = real(selection, study, spec)
            self.trials.append(list(report["trials"]) if report else [])
            return report

        monkeypatch.setattr(StudySelection, "update", update)


def _session(spec: HpoSpec) -> tuple[list[list[int]], list[dict[str, Any]]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        updates = _Updates(monkeypatch)
        events: list[dict[str, Any]] = []
        run_study(spec, listener=events.extend)
    return updates.trials, events


@pytest.fixture(scope="module")
def ar_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HpoSpec, list[dict[str, Any]]]]:
    spec = _spec(tmp_path_factory.mktemp("ar"), ar1_ohlcv(2000, seed=21, phi=0.3), trials=4)
    _, events = _session(spec)
    yield spec, events


@pytest.fixture(scope="module")
def walk_study(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[HpoSpec, list[list[int]], list[list[int]], list[dict[str, Any]]]]:
    folder = tmp_path_factory.mktemp("walk")
    bars = random_walk_ohlcv(2000, seed=22)
    first, _ = _session(_spec(folder, bars, trials=2))
    spec = _spec(folder, bars, trials=2)
    second, events = _session(spec)  # the same study resumed by a second session
    yield spec, first, second, events


def _check_files(spec: HpoSpec) -> dict[str, Any]:
    report = read_selection(spec.study_dir)
    assert report is not None and report["pbo"] is not None and report["dsr"] is not None
    matrix = pd.read_csv(spec.study_dir / MATRIX_FILE)
    assert len(matrix) == report["blocks"] >= 2
    assert abs(pbo_by_rule(matrix, str(spec.direction), report["excluded_trials"]) - report["pbo"]) <= 1e-9
    assert abs(dsr_by_rule(report["dsr_inputs"]) - report["dsr"]) <= 1e-6
    for summary_path in sorted(spec.study_dir.glob("runs/*/summary.json")):
        summary = json.loads(summary_path.read_text())
        for fold in summary["folds"]:
            assert set(fold["baseline"]) == {"val_nll", "val_brier", "DirAcc"}
            assert set(fold["skill"]) == {"nll_diff", "brier_skill", "dm_stat", "dm_p"}
        assert set(summary["aggregate"]["skill"]) == {"nll_diff", "brier_skill", "dm_stat", "dm_p"}
    return report


def test_a_planted_ar1_is_skill_beating_the_naive_forecast(ar_study: tuple[HpoSpec, Any]) -> None:
    spec, events = ar_study
    report = _check_files(spec)
    assert report["n_trials"] == 4 and report["verdict"] == "skill", report
    assert report["best_dm_p"] < 0.01 and report["dsr"] >= 0.95
    assert report["best_vs_naive"]["nll_diff"] < 0 and report["best_vs_naive"]["dm_p"] == report["best_dm_p"]
    warnings = [e for e in events if e["type"] == "notification" and e["kind"] == "selection_warning"]
    assert (len(warnings) == 1) is (report["selection"] == "luck")


def test_a_random_walk_is_never_skill_and_its_end_warns(walk_study: tuple[HpoSpec, Any, Any, Any]) -> None:
    spec, _, _, events = walk_study
    report = _check_files(spec)
    assert report["verdict"] == "no evidence of skill", report
    study_events = [e for e in events if e["run_id"] == spec.study_run_id]
    warnings = [e for e in study_events if e["type"] == "notification"]
    assert [(w["level"], w["kind"]) for w in warnings] == [("warning", "selection_warning")]
    assert warnings[0]["message"].startswith("study edge: no evidence of skill (best trial")
    ends = [i for i, e in enumerate(study_events) if e.get("state") == "study_complete"]
    assert ends == [len(study_events) - 1] and study_events.index(warnings[0]) < ends[0]  # before the end


def test_selection_follows_the_trials_as_they_complete_across_sessions(
    walk_study: tuple[HpoSpec, list[list[int]], list[list[int]], Any],
) -> None:
    spec, first, second, _ = walk_study
    # after each trial's end, then at the session's end
    assert first == [[0], [0, 1], [0, 1]]
    assert second == [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3]]
    report = read_selection(spec.study_dir)
    assert report is not None and report["trials"] == [0, 1, 2, 3] and report["n_trials"] == 4
    assert list(pd.read_csv(spec.study_dir / MATRIX_FILE).columns[3:]) == ["0", "1", "2", "3"]
