"""What a study produced: trial values from summaries, the standing, trials.csv, best config, status."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from orchestrator.config import config_from_mapping
from orchestrator.hpo.results import (
    objective_value,
    session_result,
    standing,
    status_of,
    trials_frame,
    write_best_config,
    write_trials_csv,
)
from orchestrator.hpo.spec import HpoSpec
from orchestrator.hpo.state import StudyState


def summary(*values: float | None) -> dict[str, object]:
    return {"folds": [{"fold_id": i, "metrics": {"val_nll": v}} for i, v in enumerate(values)]}


def test_objective_is_the_mean_over_folds_or_says_why_not() -> None:
    assert objective_value(summary(1.0, 2.0), "val_nll") == (1.5, None)
    assert objective_value(summary(1.0, None), "val_nll") == (
        None,
        "val_nll is undefined (null) in fold 1",
    )
    assert objective_value(summary(float("nan")), "val_nll")[0] is None
    assert objective_value(summary(), "val_nll") == (None, "the run has no folds")


def small_study() -> optuna.Study:
    """Trials 0..4: complete 2.0, pruned (last value 9.0), failed, complete 1.0, running."""
    study = optuna.create_study()
    outcomes: list[float | str] = [2.0, "pruned", "fail", 1.0]
    for number, outcome in enumerate(outcomes):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        trial.set_user_attr("run_id", f"run{number}")
        trial.set_user_attr("config", {"lr": trial.params["lr"], "epochs": 3})
        if outcome == "pruned":
            trial.report(9.0, 0)
            study.tell(trial, state=TrialState.PRUNED)
        elif outcome == "fail":
            trial.set_user_attr("error", "NonFiniteLossError: loss is nan")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(outcome))
    study.ask()
    return study


def test_standing_counts_finished_trials_and_leaves_out_the_hidden_ones() -> None:
    trials = small_study().get_trials()
    done, best = standing(trials, "minimize")
    assert done == 4 and best is not None and best.number == 3
    done, best = standing(trials, "minimize", hidden={3})
    assert done == 3 and best is not None and best.number == 0
    done, best = standing(trials, "maximize")
    assert best is not None and best.number == 0
    assert standing(trials, "minimize", hidden={0, 3}) == (2, None)


def test_trials_frame_has_a_row_per_trial(tmp_path: Path) -> None:
    study = small_study()
    frame = trials_frame(study.get_trials())
    assert list(frame["number"]) == [0, 1, 2, 3, 4]
    assert list(frame["state"]) == ["complete", "pruned", "fail", "complete", "running"]
    assert frame.loc[1, "value"] == 9.0 and frame.loc[1, "last_epoch"] == 0
    assert pd.isna(frame.loc[2, "value"]) and "NonFiniteLossError" in frame.loc[2, "error"]
    assert list(frame.columns)[-1] == "params_lr"
    write_trials_csv(tmp_path / "trials.csv", study.get_trials())
    table = pd.read_csv(tmp_path / "trials.csv")
    assert list(table["run_id"][:4]) == [f"run{n}" for n in range(4)] and pd.isna(table["run_id"][4])


def test_best_config_is_the_trial_s_config_with_a_header(tmp_path: Path) -> None:
    study = small_study()
    spec = HpoSpec.model_validate(
        {"study": "s", "config": config_from_mapping({"reports_dir": str(tmp_path)})}
    )
    path = tmp_path / "best_config.yaml"
    write_best_config(path, spec, study.best_trial)
    text = path.read_text()
    assert text.startswith("# Best trial of HPO study 's': trial 3, val_nll = 1.0 (minimize), run run3")
    assert yaml.safe_load(text) == study.best_trial.user_attrs["config"]


def test_status_and_session_result(tmp_path: Path) -> None:
    study = small_study()
    status = status_of(study)
    assert (status["trials_done"], status["trials_running"]) == (4, 1)
    assert status["best"]["trial"] == 3 and status["best"]["run_id"] == "run3"
    assert set(status["trials"][0]["params"]) == {"lr"} and "params_lr" not in status["trials"][0]
    json.dumps(status, allow_nan=False)
    spec = HpoSpec.model_validate(
        {"study": "s", "config": config_from_mapping({"reports_dir": str(tmp_path)})}
    )
    result = session_result(study, spec, StudyState.COMPLETED, 3, [2, 3, 4])
    assert (result.trials_done, result.trials_total, result.best_trial) == (4, 4, 3)
    assert result.counts == {"complete": 2, "pruned": 1, "fail": 1, "running": 1}
    assert result.best_config is None and result.trials_csv.endswith("hpo/s/trials.csv")
