"""Issue 24, kinds 3 and 4: a study continued with a changed search space, or on data replaced
under the same path, is refused before any trial starts, naming old and new.

Before, ``space_a.yaml`` then ``space_b.yaml`` (a categorical gained a choice) ended in Optuna's
``ValueError`` traceback and added a failed trial per attempt (optuna#2199, #2671); a study's data
file replaced by ``hpo_data_v2.csv`` was accepted silently and old and new trials mixed
(optuna#3306).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator.config import config_from_mapping
from orchestrator.console.main import main
from orchestrator.errors import ConfigError
from orchestrator.hpo.resume import DATA_ATTR
from orchestrator.hpo.space import suggest
from orchestrator.hpo.spec import HpoSpec
from orchestrator.hpo.storage import journal_storage, open_study
from tests.synthetic import random_walk_ohlcv

CASES = Path(__file__).parent / "data" / "cases"


def _hpo(tmp_path: Path, data: Path, study: str, *extra: str) -> int:
    return main(
        [
            "hpo",
            "--executor",
            "local",
            "--quiet",
            "--data",
            str(data),
            "--folds",
            "2",
            "--epochs",
            "1",
            "--trials",
            "1",
            "--pruner",
            "none",
            "--study",
            study,
            "--reports-dir",
            str(tmp_path / "reports"),
            "--storage",
            str(tmp_path / f"{study}.journal"),
            *extra,
        ]
    )


def _trials(tmp_path: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = journal_storage(tmp_path / f"{study}.journal")
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_case_space_b_after_space_a_is_refused_before_any_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = CASES / "base.csv"
    assert _hpo(tmp_path, data, "cat1", "--search-space", str(CASES / "space_a.yaml")) == 0
    capsys.readouterr()
    code = _hpo(tmp_path, data, "cat1", "--search-space", str(CASES / "space_b.yaml"))
    line = _error_line(capsys)
    assert code == 2
    assert (
        "study 'cat1' has tried hidden as {type: categorical, choices: [16, 32]}, got hidden: "
        "{type: categorical, choices: [16, 32, 64]}" in line
    )
    assert "--study cat1-2" in line
    assert [t.state for t in _trials(tmp_path, "cat1")] == [TrialState.COMPLETE]  # no failed trial


def _spec(tmp_path: Path, data: Path, space: dict[str, Any]) -> HpoSpec:
    config = config_from_mapping({"data": str(data), "reports_dir": str(tmp_path), "min_samples": 100})
    return HpoSpec.model_validate(
        {"study": "s", "config": config, "search_space": space, "storage": str(tmp_path / "s.journal")}
    )


def _one_trial(study: optuna.Study, spec: HpoSpec) -> None:
    trial = study.ask()
    suggest(trial, spec.distributions)
    study.tell(trial, 1.0)


LR = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
HIDDEN = {"type": "int", "low": 16, "high": 64}


@pytest.fixture
def bars(tmp_path: Path) -> Path:
    path = tmp_path / "bars.csv"
    random_walk_ohlcv(300, seed=5).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("name", "new", "needle"),
    [
        (
            "lr",
            {**LR, "log": False},
            "tried lr as {type: float, low: 0.0001, high: 0.01, log: true}, got lr: ",
        ),
        (
            "hidden",
            {"type": "float", "low": 16.0, "high": 64.0},
            "tried hidden as {type: int, low: 16, high: 64}",
        ),
        ("hidden", {"type": "categorical", "choices": [16, 32]}, "got hidden: {type: categorical"),
    ],
)
def test_a_changed_log_scale_or_kind_is_refused(
    tmp_path: Path, bars: Path, name: str, new: dict[str, Any], needle: str
) -> None:
    first = _spec(tmp_path, bars, {"lr": LR, "hidden": HIDDEN})
    _one_trial(open_study(first), first)
    changed = _spec(tmp_path, bars, {"lr": LR, "hidden": HIDDEN, name: new})
    with pytest.raises(ConfigError, match="search space: study 's' has") as caught:
        open_study(changed)
    assert needle in str(caught.value) and "start a new study (e.g. --study s-2)" in str(caught.value)
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path / "s.journal"))
    assert len(study.trials) == 1


def test_ranges_may_change_and_parameters_come_and_go(tmp_path: Path, bars: Path) -> None:
    first = _spec(tmp_path, bars, {"lr": LR, "hidden": HIDDEN})
    _one_trial(open_study(first), first)
    wider = _spec(
        tmp_path,
        bars,
        {"lr": {**LR, "low": 1e-5, "high": 1e-1}, "dropout": {"type": "float", "low": 0.0, "high": 0.3}},
    )
    study = open_study(wider)  # lr widened, hidden removed, dropout added
    _one_trial(study, wider)
    assert [sorted(t.params) for t in study.trials] == [["hidden", "lr"], ["dropout", "lr"]]


def test_the_case_data_replaced_under_the_same_path_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bars_latest.csv"
    shutil.copy(CASES / "base.csv", data)
    assert _hpo(tmp_path, data, "nightly") == 0
    capsys.readouterr()
    shutil.copy(CASES / "hpo_data_v2.csv", data)
    code = _hpo(tmp_path, data, "nightly")
    line = _error_line(capsys)
    recorded = optuna.load_study(
        study_name="nightly", storage=journal_storage(tmp_path / "nightly.journal")
    ).user_attrs[DATA_ATTR]
    assert code == 2
    assert f"with fingerprint {recorded['fingerprint'][:16]} (2200 bars)" in line
    assert "now has fingerprint " in line and "(2400 bars)" in line and "--study nightly-2" in line
    assert len(_trials(tmp_path, "nightly")) == 1


def test_a_parquet_edited_in_place_is_refused_and_the_same_bars_pass(tmp_path: Path) -> None:
    # Another member of the kind: one close changed in a Parquet file, the row count the same.
    path = tmp_path / "bars.parquet"
    bars = random_walk_ohlcv(300, seed=6)
    bars.to_parquet(path)
    spec = _spec(tmp_path, path, {"lr": LR})
    first = open_study(spec).user_attrs[DATA_ATTR]
    assert first["bars"] == 300 and len(first["fingerprint"]) == 64
    bars.to_parquet(path)  # rewritten with the same bars: a new mtime, the same fingerprint
    open_study(spec)
    bars.loc[150, "close"] = float(bars.loc[150, "close"]) * 1.0001
    bars.loc[150, "high"] = max(float(bars.loc[150, "high"]), float(bars.loc[150, "close"]))
    bars.to_parquet(path)
    with pytest.raises(ConfigError) as caught:
        open_study(spec)
    message = str(caught.value)
    assert (
        f"fingerprint {first['fingerprint'][:16]} (300 bars)" in message and "(300 bars): the data" in message
    )
