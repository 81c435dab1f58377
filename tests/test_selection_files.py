"""A study's selection.json and selection_matrix.csv from its trials' run folders (no training: the
folders are written here), recomputed by the issue's rules; the cache, the API view, the warning."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import statsmodels.api as sm
from optuna.trial import create_trial
from scipy import stats

import orchestrator.hpo.selection_files as selection_files
from orchestrator.config import config_from_mapping
from orchestrator.hpo.results import write_study_files
from orchestrator.hpo.selection_files import (
    HISTOGRAM_BINS,
    MATRIX_FILE,
    SELECTION_FILE,
    StudySelection,
    read_selection,
    report_text,
    selection_notification,
    selection_view,
)
from orchestrator.hpo.service import study_status
from orchestrator.hpo.spec import HpoSpec
from orchestrator.run.reports import PREDICTION_COLUMNS
from tests.edge_rules import dsr_by_rule, pbo_by_rule

N_VAL = 400  # validation rows of every trial, in 2 folds
TIMES = np.datetime64("2018-01-01T00:00:00") + np.arange(N_VAL + 40) * np.timedelta64(1, "D")
Y = np.random.default_rng(0).normal(0.0002, 0.01, N_VAL + 40)
NAIVE = [
    {"mu": 0.0003, "sigma": 0.0101, "p_up": 0.52, "n_train": 300},
    {"mu": 0.0001, "sigma": 0.0098, "p_up": 0.5, "n_train": 500},
]


def _spec(tmp_path: Path, metric: str = "val_nll") -> HpoSpec:
    config = config_from_mapping({"reports_dir": str(tmp_path / "reports")})
    return HpoSpec.model_validate({"study": "s", "metric": metric, "config": config})


def _run(spec: HpoSpec, number: int, seed: int, y: np.ndarray = Y) -> tuple[str, str]:
    """A completed trial's run folder: 2 folds of 20 calibration and 200 validation rows each;
    the summary names each CSV by a path relative to some other directory (only its name counts)."""
    rng = np.random.default_rng(seed)
    run_id = f"hpo_s_t{number:04d}_{seed:06x}"
    folder = spec.study_dir / "runs" / run_id
    (folder / "predictions").mkdir(parents=True)
    folds = []
    for k in range(2):
        index = np.r_[np.arange(k * 20, k * 20 + 20), 40 + np.arange(k * 200, k * 200 + 200)]
        n = index.size
        mu = rng.normal(0.0, 0.002 * (1 + number % 3), n)
        sigma = np.full(n, 0.01)
        p_up = stats.norm.sf(0.0, mu, sigma)
        frame = pd.DataFrame(
            {
                "timestamp": pd.to_datetime(TIMES[index]).strftime("%Y-%m-%dT%H:%M:%S"),
                "fold_id": k,
                "segment": ["calibration"] * 20 + ["validation"] * 200,
                "y": y[index],
                "mu": mu,
                "sigma": sigma,
                "p_up_raw": p_up,
                "p_up_cal": np.clip(p_up + rng.normal(0.0, 0.01, n), 0.01, 0.99),
                "conformal_lo": mu - 0.016,
                "conformal_hi": mu + 0.016,
                "conformal_p": 0.5,
                "pit_z": (y[index] - mu) / sigma,
            },
            columns=list(PREDICTION_COLUMNS),
        )
        name = f"predictions_fold_{k}_20260101_000000.csv"
        frame.to_csv(folder / "predictions" / name, index=False)
        folds.append(
            {"fold_id": k, "predictions_path": f"elsewhere/{run_id}/predictions/{name}", "naive": NAIVE[k]}
        )
    summary = {
        "folds": folds,
        "config": {"w_nll": 1.0, "w_bce": 0.5, "w_brier": 0.25},
        "aggregate": {"skill": {"nll_diff": 0.01 * number, "brier_skill": None, "dm_stat": 1.0, "dm_p": 0.8}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return run_id, str(folder / "summary.json")


def _add_trials(study: optuna.Study, spec: HpoSpec, numbers: range, values: list[float]) -> None:
    for number, value in zip(numbers, values, strict=True):
        run_id, summary = _run(spec, number, seed=100 + number)
        study.add_trial(create_trial(value=value, user_attrs={"run_id": run_id, "summary_path": summary}))


def _study(spec: HpoSpec, values: list[float]) -> optuna.Study:
    study = optuna.create_study(study_name="s", direction="minimize")
    _add_trials(study, spec, range(len(values)), values)
    return study


VALUES = [-3.1, -3.3, -3.2, -3.0, -3.25]


def test_both_files_are_written_and_the_issue_s_rules_recompute_pbo_and_dsr(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    report = StudySelection().update(_study(spec, VALUES), spec)
    assert report is not None and read_selection(spec.study_dir) == json.loads(json.dumps(report))
    assert report["trials"] == [0, 1, 2, 3, 4] and report["n_trials"] == 5
    assert report["best_trial"] == 1 and report["best_vs_naive"]["nll_diff"] == pytest.approx(0.01)
    assert report["rows"] == N_VAL and report["blocks"] == 16  # validation rows only, 20+ a block
    matrix = pd.read_csv(spec.study_dir / MATRIX_FILE)
    assert list(matrix.columns) == ["block", "first_timestamp", "last_timestamp", "0", "1", "2", "3", "4"]
    assert len(matrix) == 16 and matrix["first_timestamp"].iloc[0] == "2018-02-10T00:00:00"
    assert report["pbo"] == pytest.approx(pbo_by_rule(matrix, "minimize"), abs=1e-9)
    assert report["dsr"] is not None and report["dsr"] == pytest.approx(
        dsr_by_rule(report["dsr_inputs"]), abs=1e-6
    )
    # the best trial's rows against each fold's naive forecast, tested by statsmodels directly
    frames = sorted((spec.study_dir / "runs").glob("hpo_s_t0001_*/predictions/*.csv"))
    val = pd.concat([pd.read_csv(p) for p in frames]).query("segment == 'validation'")
    naive_mu = np.where(val["fold_id"] == 0, NAIVE[0]["mu"], NAIVE[1]["mu"])
    naive_sigma = np.where(val["fold_id"] == 0, NAIVE[0]["sigma"], NAIVE[1]["sigma"])
    d = -stats.norm.logpdf(val["y"], val["mu"], val["sigma"]) + stats.norm.logpdf(
        val["y"], naive_mu, naive_sigma
    )
    lags = math.floor(4 * (len(d) / 100) ** (2 / 9))
    fit = sm.OLS(np.asarray(d), np.ones(len(d))).fit(cov_type="HAC", cov_kwds={"maxlags": lags})
    assert report["best_dm_p"] == pytest.approx(stats.norm.cdf(fit.tvalues[0]), rel=1e-9)


def test_a_trial_s_rows_are_read_once_and_a_resumed_session_reads_them_again_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real = selection_files.read_trial_rows

    def counting(number: int, path: Path) -> Any:
        reads.append(number)
        return real(number, path)

    monkeypatch.setattr(selection_files, "read_trial_rows", counting)
    spec = _spec(tmp_path)
    study = _study(spec, VALUES[:3])
    session = StudySelection()
    assert session.update(study, spec)["trials"] == [0, 1, 2]  # type: ignore[index]
    _add_trials(study, spec, range(3, 5), VALUES[3:])
    assert session.update(study, spec)["trials"] == [0, 1, 2, 3, 4]  # type: ignore[index]
    assert sorted(reads) == [0, 1, 2, 3, 4]  # each once
    assert read_selection(spec.study_dir)["n_trials"] == 5  # type: ignore[index]
    reads.clear()
    assert StudySelection().update(study, spec)["trials"] == [0, 1, 2, 3, 4]  # type: ignore[index]
    assert sorted(reads) == [0, 1, 2, 3, 4]


def test_a_completed_trial_without_files_is_named_and_left_out(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    study = _study(spec, VALUES[:3])
    study.add_trial(
        create_trial(value=-9.0, user_attrs={"run_id": "gone", "summary_path": "gone/summary.json"})
    )
    report = StudySelection().update(study, spec)
    assert report is not None and report["trials_without_rows"] == [3]
    assert report["trials"] == [0, 1, 2] and report["best_trial"] == 1  # the best with rows
    assert StudySelection().update(_study(_spec(tmp_path / "none"), []), _spec(tmp_path / "none")) is None
    assert not (tmp_path / "none" / "reports" / "hpo" / "s" / SELECTION_FILE).exists()


def test_trials_over_different_data_give_an_error_and_no_matrix(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    study = _study(spec, VALUES[:2])
    session = StudySelection()
    session.update(study, spec)
    assert (spec.study_dir / MATRIX_FILE).exists()
    run_id, summary = _run(spec, 2, seed=7, y=Y + 0.001)
    study.add_trial(create_trial(value=-3.0, user_attrs={"run_id": run_id, "summary_path": summary}))
    report = session.update(study, spec)
    assert report is not None and "different y" in report["error"]
    assert not (spec.study_dir / MATRIX_FILE).exists()
    warning = selection_notification(report, "s")
    assert warning is not None and warning.level == "warning" and "different y" in warning.message


def test_the_view_bins_the_logits_and_thins_the_scatter(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    report = StudySelection().update(_study(spec, VALUES), spec)
    assert report is not None
    view = selection_view(report, max_points=500)
    assert view is not None and not {"logits", "is_performance", "oos_performance"} & set(view)
    histogram = view["logit_histogram"]
    assert len(histogram["counts"]) == HISTOGRAM_BINS and sum(histogram["counts"]) == 12870
    assert histogram["edges"][HISTOGRAM_BINS // 2] == pytest.approx(0.0, abs=1e-12)
    at_or_below_zero = sum(histogram["counts"][: HISTOGRAM_BINS // 2]) / 12870
    assert at_or_below_zero == pytest.approx(report["pbo"], abs=1e-12)  # (lower, upper] bins
    performance = view["performance"]
    assert performance["splits"] == 12870 and performance["stride"] == 26
    assert performance["in_sample"] == report["is_performance"][::26]
    assert len(performance["out_of_sample"]) == len(performance["in_sample"]) <= 500
    slope, intercept = np.polyfit(report["is_performance"], report["oos_performance"], 1)
    assert view["performance_fit"] == pytest.approx({"slope": slope, "intercept": intercept})
    assert selection_view(None) is None
    json.dumps(view, allow_nan=False)


@pytest.mark.parametrize(
    ("verdict", "selection", "warned"),
    [
        ("skill", "informative", False),
        ("skill", None, False),
        ("skill", "luck", True),
        ("no evidence of skill", "informative", True),
        ("no evidence of skill", None, True),
    ],
)
def test_a_study_ends_with_a_warning_unless_skill_and_not_luck(
    verdict: str, selection: str | None, warned: bool
) -> None:
    report = {
        "verdict": verdict,
        "selection": selection,
        "best_trial": 3,
        "best_dm_p": 0.2,
        "dsr": 0.4,
        "n_trials": 9,
        "pbo": 0.6,
    }
    note = selection_notification(report, "s1")
    assert (note is not None) is warned
    if note is not None:
        assert (note.level, note.kind) == ("warning", "selection_warning")
        assert note.message.startswith(f"study s1: {verdict} (best trial 3")
    assert selection_notification(None, "s1") is None


def test_the_study_files_report_and_status_carry_the_selection(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    study = _study(spec, VALUES)
    write_study_files(study, spec, cancelled=False, trials_total=5, best_written=None)
    html = (spec.study_dir / "report.html").read_text()
    data = json.loads(html.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    shown = data["status"]["selection"]
    assert shown["verdict"] == read_selection(spec.study_dir)["verdict"]  # type: ignore[index]
    assert sum(shown["logit_histogram"]["counts"]) == 12870 and "logits" not in shown
    storage = optuna.storages.InMemoryStorage()
    copy = optuna.create_study(study_name="s", storage=storage, direction="minimize")
    copy.add_trials(study.get_trials())
    status = study_status("s", storage, spec.study_dir)
    assert status["selection"] == shown
    assert "selection" not in study_status("s", storage)


def test_the_report_text_reads_back_with_one_line_per_key_and_null_for_non_finite() -> None:
    report = {"pbo": 0.25, "logits": [0.5, -1.25, 2.0], "nested": {"a": [1, 2]}, "error": "NaN"}
    text = report_text(report)
    assert json.loads(text) == report
    assert text.splitlines()[1:-1] == [
        '  "pbo": 0.25,',
        '  "logits": [0.5, -1.25, 2.0],',
        '  "nested": {"a": [1, 2]},',
        '  "error": "NaN"',
    ]
    odd = report_text({"logits": [0.5, math.nan, -math.inf], "best": {"dsr": math.inf}})
    assert json.loads(odd) == {"logits": [0.5, None, None], "best": {"dsr": None}}
