"""Studies on the real Ray session: parallel trials, their runs and events, failures, pruning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pytest

from orchestrator.config import config_from_mapping, load_config_file
from orchestrator.hpo import HpoSpec, StudyResult, StudyState, run_study
from orchestrator.hpo.space import DEFAULT_SEARCH_SPACE
from orchestrator.hpo.storage import open_study

pytest.register_assert_rewrite("tests.hpo_fixtures")
from tests.hpo_fixtures import GOOD, VALIDATOR, Collector, base_config, make_spec  # noqa: E402

pytest_plugins = ["tests.hpo_fixtures"]


@pytest.fixture(scope="module")
def four_trials(
    hpo_bars: str, hpo_hub: Any, hpo_pool: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[HpoSpec, StudyResult, Collector]:
    reports = tmp_path_factory.mktemp("hpo_four")
    spec = make_spec(hpo_bars, reports, study="four", trials=4, parallel=2, sampler_seed=3, pruner="none")
    events = Collector()
    result = run_study(spec, hub=hpo_hub, pool=hpo_pool, listener=events)
    return spec, result, events


def test_four_trials_two_at_a_time(four_trials: tuple[HpoSpec, StudyResult, Collector]) -> None:
    spec, result, events = four_trials
    assert result.state is StudyState.COMPLETED
    assert (result.trials_done, result.trials_total, result.session_trials) == (4, 4, [0, 1, 2, 3])
    for event in events.events:
        VALIDATOR.validate(event)
    endings = events.endings()
    assert sorted(e["trial"] for e in endings) == [0, 1, 2, 3]
    assert {e["state"] for e in endings} == {"complete"}
    assert [e["trials_done"] for e in endings] == [1, 2, 3, 4]
    values = [e["value"] for e in endings]
    assert result.best_value == min(values)
    for i, ending in enumerate(endings):  # best so far, as each ending was announced
        assert ending["best_value"] == min(values[: i + 1])
        assert ending["study"] == "four" and ending["trials_total"] == 4
        assert ending["run_id"] == "hpo_four"
    final = events.hpo("study_complete")
    assert len(final) == 1 and final[0] is events.hpo()[-1]
    assert final[0]["best_value"] == result.best_value and final[0]["trial"] == result.best_trial

    # at most two trials trained at once: a trial's run starts after every epoch of the trial two
    # before it (batches are pipelined on Ray: trial 2 is asked, and runs, while trial 0's files
    # are written and it is told, so Optuna may list four trials as running)
    def seqs(trial: int, kind: str) -> list[int]:
        run_id = next(e["trial_run_id"] for e in events.hpo("running") if e["trial"] == trial)
        return [e["seq"] for e in events.of_run(run_id) if e["type"] == kind]

    for n in (2, 3):
        assert min(seqs(n, "training_start")) > max(seqs(n - 2, "epoch_metrics"))
    # pipelined: the second batch was asked before the first was told (Optuna's own times)
    trials = {t.number: t for t in open_study(spec).get_trials(deepcopy=False)}
    asked = [trials[n].datetime_start for n in (2, 3)]
    told = [trials[n].datetime_complete for n in (0, 1)]
    assert None not in asked + told and max(asked) < min(told)


def test_trial_runs_carry_their_run_id_and_trial_number(
    four_trials: tuple[HpoSpec, StudyResult, Collector],
) -> None:
    spec, result, events = four_trials
    starts = events.hpo("running")
    assert sorted(start["trial"] for start in starts) == [0, 1, 2, 3]
    for start in starts:
        run_events = events.of_run(start["trial_run_id"])
        types = [e["type"] for e in run_events]
        assert types[-1] == "training_complete" and types.count("epoch_metrics") == 2 * 3
        training_start = next(e for e in run_events if e["type"] == "training_start")
        assert training_start["hpo_trial"] == start["trial"]
        summary = json.loads(Path(run_events[-1]["summary_path"]).read_text())
        assert summary["hpo"]["trial"] == start["trial"]
        assert summary["hpo"]["params"] == start["params"]
        assert Path(run_events[-1]["summary_path"]).is_relative_to(spec.study_dir / "runs")


def test_results_table_and_best_config(four_trials: tuple[HpoSpec, StudyResult, Collector]) -> None:
    spec, result, events = four_trials
    table = pd.read_csv(result.trials_csv)
    assert list(table["number"]) == [0, 1, 2, 3]
    assert set(table["state"]) == {"complete"}
    ended = {e["trial"]: e["value"] for e in events.endings()}
    assert list(table["value"]) == [ended[n] for n in range(4)]
    assert {f"params_{name}" for name in DEFAULT_SEARCH_SPACE} <= set(table.columns)
    assert result.best_config is not None
    best = config_from_mapping(load_config_file(result.best_config))
    best_row = table[table["number"] == result.best_trial].iloc[0]
    for name in DEFAULT_SEARCH_SPACE:
        assert getattr(best, name) == pytest.approx(best_row[f"params_{name}"], rel=1e-12)
    summary = json.loads(Path(best_row["summary_path"]).read_text())
    assert best.model_dump() == summary["config"]


def test_best_config_reproduces_the_best_trial(
    four_trials: tuple[HpoSpec, StudyResult, Collector], hpo_hub: Any, hpo_pool: Any
) -> None:
    """``orchestrator train --config best_config.yaml``: the train command's own config parsing,
    then the same run it makes (on the warm pool here, to keep the test short)."""
    from orchestrator.console.main import build_parser
    from orchestrator.console.run_flags import config_from_args
    from orchestrator.events.publish import EventSink, RaySink
    from orchestrator.execution.ray import RayExecutor
    from orchestrator.lifecycle import RunState
    from orchestrator.run.driver import execute_run, new_run

    spec, result, _ = four_trials
    assert result.best_config is not None and result.best_value is not None
    config = config_from_args(build_parser().parse_args(["train", "--config", result.best_config]))
    run = execute_run(new_run(config), cast(EventSink, RaySink(hpo_hub)), RayExecutor(hpo_pool))
    assert run.state is RunState.COMPLETED, run.error
    summary = json.loads(Path(str(run.summary_path)).read_text())
    values = [fold["metrics"][spec.metric] for fold in summary["folds"]]
    assert sum(values) / len(values) == pytest.approx(result.best_value, abs=1e-9)


def test_diverging_trial_fails_and_the_study_goes_on(
    hpo_bars: str, hpo_hub: Any, hpo_pool: Any, tmp_path: Path
) -> None:
    spec = make_spec(
        hpo_bars,
        tmp_path,
        study="diverge",
        trials=2,
        parallel=1,
        pruner="none",
        search_space={
            "lr": {"type": "float", "low": 1e-4, "high": 10.0, "log": True},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1.0, "log": True},
        },
        # lr=10 with weight decay 1 blows the weights up: a NaN loss at epoch 1
        enqueue=[{"lr": 10.0, "weight_decay": 1.0}, GOOD],
    )
    events = Collector()
    result = run_study(spec, hub=hpo_hub, pool=hpo_pool, listener=events)
    assert result.state is StudyState.COMPLETED
    assert result.counts == {"fail": 1, "complete": 1}
    failed = events.hpo("failed")
    assert [e["trial"] for e in failed] == [0] and failed[0]["value"] is None
    VALIDATOR.validate(failed[0])
    table = pd.read_csv(result.trials_csv).set_index("number")
    assert "NonFiniteLossError" in table.loc[0, "error"] and table.loc[0, "run_state"] == "failed"
    assert result.best_trial == 1 and table.loc[1, "state"] == "complete"
    assert len(events.hpo("study_complete")) == 1


def test_bad_region_is_pruned_and_its_run_stopped(
    hpo_bars: str, hpo_hub: Any, hpo_pool: Any, tmp_path: Path
) -> None:
    # long enough that the prune (decided at the first epochs) lands before the end even when
    # the machine is loaded: the events travel fold -> hub -> stream -> pruner -> cancel. The two
    # folds train as one stack (about twice as fast as one after the other): 40 epochs once ended
    # before the prune arrived, with another Ray cluster training beside this suite.
    epochs = 120
    config = base_config(hpo_bars, tmp_path, epochs=epochs, patience=epochs)
    spec = make_spec(
        hpo_bars,
        tmp_path,
        config,
        study="prune",
        trials=2,
        parallel=1,
        pruner="median",
        pruner_startup_trials=1,
        pruner_warmup_epochs=0,
        search_space={"lr": {"type": "float", "low": 1e-4, "high": 10.0, "log": True}},
        # one good trial, then one in the terrible region (val_nll ~ +12 against ~ -3)
        enqueue=[{"lr": 3e-3}, {"lr": 10.0}],
    )
    events = Collector()
    idle_before = hpo_pool.idle_count()
    result = run_study(spec, hub=hpo_hub, pool=hpo_pool, listener=events)
    assert result.state is StudyState.COMPLETED
    states = {e["trial"]: e["state"] for e in events.endings()}
    assert states == {0: "complete", 1: "pruned"}
    # the pruned trial's actors stopped at an epoch boundary and stayed warm for later trials
    assert hpo_pool.idle_count() >= max(idle_before, 2)
    for ending in events.endings():
        VALIDATOR.validate(ending)
        run_events = events.of_run(ending["trial_run_id"])
        epochs_run = sum(e["type"] == "epoch_metrics" for e in run_events)
        if ending["state"] == "pruned":
            assert ending["best_value"] < ending["value"]  # pruned at a worse value
            # the run was cancelled before its 2 x 40 epochs
            assert run_events[-1]["type"] == "training_error"
            assert epochs_run < 2 * epochs
        else:
            assert epochs_run == 2 * epochs
    table = pd.read_csv(result.trials_csv)
    assert list(table["run_state"]) == ["completed", "cancelled"]
    assert table.loc[1, "last_epoch"] < epochs - 1
