"""HPO over whole CV runs: search space, intermediate values, studies on the real Ray session.

Trials run on tiny synthetic AR(1) bars (1200 bars, 2 folds) so a warm trial takes about a second.
All Ray tests share one ``WorkerPool`` whose per-fold share (0.5 CPU) fits 2 trials x 2 folds on
the session's 2 CPUs, so its fold actors stay warm from one study to the next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema
import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from orchestrator.config import config_from_mapping, load_config_file
from orchestrator.errors import ConfigError
from orchestrator.hpo import (
    EpochTracker,
    HpoService,
    HpoSpec,
    StudyResult,
    StudyState,
    default_direction,
    pack_resources,
    run_study,
    spec_from_mapping,
)
from orchestrator.messages import message_json_schema
from orchestrator.search_space import DEFAULT_SEARCH_SPACE, parse_search_space
from tests.synthetic import ar1_ohlcv

VALIDATOR = jsonschema.Draft202012Validator(message_json_schema())  # compiled once: validate() re-checks the schema
GOOD = {"lr": 3e-3, "weight_decay": 1e-4}


def spec(**values: Any) -> HpoSpec:
    return HpoSpec.model_validate(values)


# ---- pure parts ------------------------------------------------------------------------------


def test_default_search_space_is_valid_and_typed() -> None:
    space = parse_search_space(DEFAULT_SEARCH_SPACE)
    assert list(space) == [
        "lr", "hidden", "depth", "dropout", "weight_decay", "w_bce", "w_brier", "lookback",
    ]
    assert space["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["hidden"] == IntDistribution(16, 128)
    assert space["lookback"] == IntDistribution(10, 40)


def test_search_space_reads_yaml_exponents_and_categoricals() -> None:
    space = parse_search_space(yaml.safe_load(
        "lr: {type: float, low: 1e-5, high: 1e-1, log: true}\n"
        "window: {type: categorical, choices: [expanding, rolling]}\n"
        "hidden: {type: int, low: 16, high: 64, step: 16}\n"
    ))
    assert space["lr"] == FloatDistribution(1e-5, 1e-1, log=True)
    assert space["window"] == CategoricalDistribution(["expanding", "rolling"])
    assert space["hidden"] == IntDistribution(16, 64, step=16)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"lr2": {"type": "float", "low": 0.1, "high": 1.0}}, "'lr2' is not a TrainConfig field"),
        ({"folds": {"type": "int", "low": 2, "high": 5}}, "'folds' cannot be tuned"),
        ({"dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "dropout=1.5 is not a valid value"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "search space: lr:"),
        ({"depth": {"type": "int", "low": 1}}, "depth needs high"),
        ({"depth": {"type": "gauss", "low": 1, "high": 2}}, "depth.type must be one of"),
        ({"depth": {"type": "int", "low": 1, "high": 3, "choices": [1]}}, "unknown keys ['choices']"),
        ({"hidden": {"type": "int", "low": 1.5, "high": 3}}, "hidden.low must be an integer"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_search_space_names_the_parameter(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_search_space(spec)
    assert needle in str(info.value)


def test_direction_follows_the_metric() -> None:
    assert default_direction("val_nll") == "minimize"
    assert default_direction("ECE") == "minimize"
    assert default_direction("val_auc") == "maximize"
    assert default_direction("DirAcc") == "maximize"
    assert default_direction("PIT_KS_p") is None
    assert spec(metric="val_auc").direction == "maximize"
    with pytest.raises(ValueError, match="direction cannot be inferred for metric='PIT_KS_p'"):
        spec(metric="PIT_KS_p")
    with pytest.raises(ValueError, match="metric must be an epoch_metrics field"):
        spec(metric="auc")


def test_spec_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="study must be"):
        spec(study="../etc")
    with pytest.raises(ValueError, match=r"enqueue\[0\]: \['depth'\] not in the search space"):
        spec(search_space={"lr": DEFAULT_SEARCH_SPACE["lr"]}, enqueue=[{"depth": 2}])
    with pytest.raises(ValueError, match=r"enqueue\[0\]: lr=5.0 is outside"):
        spec(enqueue=[{"lr": 5.0}])
    flat = spec_from_mapping({"study": "s", "trials": 3, "epochs": 4, "config": {"folds": 3}})
    assert (flat.trials, flat.config.epochs, flat.config.folds) == (3, 4, 3)
    with pytest.raises(ConfigError, match="epochs"):
        spec_from_mapping({"study": "s", "epochs": 0})


def test_pack_resources_fits_parallel_trials_of_folds() -> None:
    config = config_from_mapping(dict(folds=2, cpus_per_fold=1.0))
    assert pack_resources(config, 1, {"CPU": 2.0}) == {}
    assert pack_resources(config, 2, {"CPU": 2.0}) == {"cpus_per_fold": 0.5}
    assert pack_resources(config, 3, {"CPU": 2.0}) == {"cpus_per_fold": 0.3333}
    limited = config_from_mapping(dict(folds=4, max_concurrent_folds=1, cpus_per_fold=1.0))
    assert pack_resources(limited, 2, {"CPU": 2.0}) == {}
    gpu = config_from_mapping(dict(folds=4, gpus_per_fold=0.5, cpus_per_fold=1.0))
    assert pack_resources(gpu, 2, {"CPU": 16.0, "GPU": 2.0}) == {"gpus_per_fold": 0.25}


def _epoch(fold: int, epoch: int, value: float | None) -> dict[str, Any]:
    return {"type": "epoch_metrics", "fold_id": fold, "epoch": epoch, "val_nll": value}


def test_epoch_tracker_settles_each_epoch_once_all_folds_reported_it() -> None:
    tracker = EpochTracker("val_nll")
    assert tracker.observe({"type": "training_start", "total_folds": 2}) == []
    assert tracker.observe(_epoch(0, 0, 1.0)) == []
    assert tracker.observe(_epoch(0, 1, 0.5)) == []
    assert tracker.observe(_epoch(1, 0, 3.0)) == [(0, 2.0)]
    assert tracker.observe(_epoch(1, 1, None)) == [(1, 0.5)]  # undefined values are left out
    # fold 0 stopped early: its last value carries forward once it completed
    assert tracker.observe(_epoch(1, 2, 1.5)) == []
    assert tracker.observe({"type": "fold_complete", "fold_id": 0}) == [(2, 1.0)]
    assert tracker.observe({"type": "training_complete"}) == []


def test_epoch_tracker_flushes_what_it_has_when_the_run_ends() -> None:
    tracker = EpochTracker("val_nll")
    tracker.observe({"type": "training_start", "total_folds": 3})
    tracker.observe(_epoch(0, 0, 2.0))
    tracker.observe(_epoch(0, 1, 1.0))
    assert tracker.observe({"type": "training_error", "error": "x"}) == [(0, 2.0), (1, 1.0)]


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("hpo_data") / "bars.csv"
    ar1_ohlcv(1200, seed=11, phi=0.3).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def hub(ray_session: None) -> Any:
    from orchestrator.events.actor import get_or_create_hub

    return get_or_create_hub()


@pytest.fixture(scope="module")
def pool(ray_session: None) -> Iterator[Any]:
    from orchestrator.execution.pool import WorkerPool

    shared = WorkerPool()
    yield shared
    shared.shutdown()


def base_config(bars: str, reports: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "data": bars, "reports_dir": str(reports), "min_samples": 300, "folds": 2, "epochs": 3,
        "lookback": 10, "cpus_per_fold": 0.5, **overrides,
    }


def make_spec(bars: str, reports: Path, config: dict[str, Any] | None = None, **values: Any) -> HpoSpec:
    return spec(config=config_from_mapping(config or base_config(bars, reports)), **values)


class Collector:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            self.events.extend(events)

    def hpo(self, state: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.events
            if e["type"] == "hpo_trial" and (state is None or e["state"] == state)
        ]

    def endings(self) -> list[dict[str, Any]]:
        return [e for e in self.hpo() if e["state"] in ("complete", "pruned", "failed")]

    def of_run(self, run_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["run_id"] == run_id]


@pytest.fixture(scope="module")
def four_trials(
    bars: str, hub: Any, pool: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[HpoSpec, StudyResult, Collector]:
    reports = tmp_path_factory.mktemp("hpo_four")
    spec = make_spec(bars, reports, study="four", trials=4, parallel=2, sampler_seed=3, pruner="none")
    events = Collector()
    result = run_study(spec, hub=hub, pool=pool, listener=events)
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
    # at most two trials ran at once: each start comes after the end of the trial two before it
    order = [(e["state"], e["trial"]) for e in events.hpo() if e["state"] != "study_complete"]
    for n in (2, 3):
        assert order.index(("running", n)) > min(
            order.index(("complete", k)) for k in range(n)
        )


def test_trial_runs_carry_their_run_id_and_trial_number(
    four_trials: tuple[HpoSpec, StudyResult, Collector],
) -> None:
    spec, result, events = four_trials
    for start in events.hpo("running"):
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
    four_trials: tuple[HpoSpec, StudyResult, Collector], hub: Any, pool: Any
) -> None:
    """``orchestrator train --config best_config.yaml``: the train command's own config parsing,
    then the same run it makes (on the warm pool here, to keep the test short)."""
    from orchestrator.cli import build_parser, config_from_args
    from orchestrator.driver import execute_run, new_run
    from orchestrator.lifecycle import RunState
    from orchestrator.execution.ray import RayExecutor
    from orchestrator.events.publish import RaySink
    from orchestrator.events.publish import EventSink

    spec, result, _ = four_trials
    assert result.best_config is not None and result.best_value is not None
    config = config_from_args(build_parser().parse_args(["train", "--config", result.best_config]))
    run = execute_run(new_run(config), cast(EventSink, RaySink(hub)), RayExecutor(pool))
    assert run.state is RunState.COMPLETED, run.error
    summary = json.loads(Path(str(run.summary_path)).read_text())
    values = [fold["metrics"][spec.metric] for fold in summary["folds"]]
    assert sum(values) / len(values) == pytest.approx(result.best_value, abs=1e-9)


def test_diverging_trial_fails_and_the_study_goes_on(
    bars: str, hub: Any, pool: Any, tmp_path: Path
) -> None:
    spec = make_spec(
        bars, tmp_path, study="diverge", trials=2, parallel=1, pruner="none",
        search_space={
            "lr": {"type": "float", "low": 1e-4, "high": 10.0, "log": True},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1.0, "log": True},
        },
        # lr=10 with weight decay 1 blows the weights up: a NaN loss at epoch 1
        enqueue=[{"lr": 10.0, "weight_decay": 1.0}, GOOD],
    )
    events = Collector()
    result = run_study(spec, hub=hub, pool=pool, listener=events)
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
    bars: str, hub: Any, pool: Any, tmp_path: Path
) -> None:
    epochs = 12
    config = base_config(bars, tmp_path, epochs=epochs, patience=epochs)
    spec = make_spec(
        bars, tmp_path, config, study="prune", trials=2, parallel=1, pruner="median",
        pruner_startup_trials=1, pruner_warmup_epochs=0,
        search_space={"lr": {"type": "float", "low": 1e-4, "high": 10.0, "log": True}},
        # one good trial, then one in the terrible region (val_nll ~ +12 against ~ -3)
        enqueue=[{"lr": 3e-3}, {"lr": 10.0}],
    )
    events = Collector()
    idle_before = pool.idle_count()
    result = run_study(spec, hub=hub, pool=pool, listener=events)
    assert result.state is StudyState.COMPLETED
    states = {e["trial"]: e["state"] for e in events.endings()}
    assert states == {0: "complete", 1: "pruned"}
    # the pruned trial's actors stopped at an epoch boundary and stayed warm for later trials
    assert pool.idle_count() >= max(idle_before, 2)
    for ending in events.endings():
        VALIDATOR.validate(ending)
        run_events = events.of_run(ending["trial_run_id"])
        epochs_run = sum(e["type"] == "epoch_metrics" for e in run_events)
        if ending["state"] == "pruned":
            assert ending["best_value"] < ending["value"]  # pruned at a worse value
            # the run was cancelled long before its 2 x 12 epochs
            assert run_events[-1]["type"] == "training_error"
            assert epochs_run < 2 * epochs
        else:
            assert epochs_run == 2 * epochs
    table = pd.read_csv(result.trials_csv)
    assert list(table["run_state"]) == ["completed", "cancelled"]
    assert table.loc[1, "last_epoch"] < epochs - 1


def test_service_start_status_cancel(bars: str, hub: Any, pool: Any, tmp_path: Path) -> None:
    service = HpoService(hub, pool=pool, reports_dir=str(tmp_path))
    config = base_config(bars, tmp_path, epochs=40, patience=40)
    spec = make_spec(bars, tmp_path, config, study="svc", trials=5, parallel=1, pruner="none")
    handle = service.start(spec)
    with pytest.raises(Exception, match="already running"):
        service.start(spec)
    deadline = time.monotonic() + 120
    while service.status("svc").get("trials_running", 0) < 1:
        assert time.monotonic() < deadline and not handle.done
        time.sleep(0.2)
    service.cancel("svc")
    result = handle.wait(60)
    assert result is not None and result.state is StudyState.CANCELLED
    status = service.status("svc")
    assert status["state"] == "cancelled" and status["trials_done"] == 1
    assert status["trials"][0]["state"] == "fail"
    assert status["trials"][0]["error"] == "cancelled with the study"
    json.dumps(status, allow_nan=False)
    # a study known only from its storage (e.g. after a server restart) can still be read
    fresh = HpoService(hub, pool=pool, reports_dir=str(tmp_path))
    assert fresh.status("svc")["state"] == "idle"
    assert fresh.status("svc")["trials"] == status["trials"]


def _journal_trials(path: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=True)


def test_killed_study_resumes_where_it_stopped(
    bars: str, pool: Any, tmp_path: Path, ray_session: None
) -> None:
    import ray

    pool.shutdown()  # the hpo processes start their own fold workers on the session's CPUs
    command = [
        sys.executable, "-m", "orchestrator", "hpo", "--data", bars, "--min-samples", "300",
        "--folds", "2", "--epochs", "20", "--set", "patience=20", "--set", "lookback=10",
        "--reports-dir", str(tmp_path), "--study", "resume", "--pruner", "none",
        "--sampler-seed", "0", "--parallel", "1", "--quiet",
        "--address", ray.get_runtime_context().gcs_address,
    ]
    journal = tmp_path / "hpo" / "resume" / "study.journal"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(command + ["--trials", "10"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while True:  # kill it once a trial is complete and the next one is running
            assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
            assert time.monotonic() < deadline, "the first hpo process made no progress"
            trials = _journal_trials(journal, "resume") if journal.exists() else []
            states = [t.state for t in trials]
            if TrialState.COMPLETE in states and states[-1] is TrialState.RUNNING:
                break
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        if first.stderr:
            first.stderr.close()
    before = _journal_trials(journal, "resume")
    interrupted = [t for t in before if t.state is TrialState.RUNNING]
    assert len(interrupted) == 1

    second = subprocess.run(command + ["--trials", "2"], env=env, capture_output=True, text=True,
                            timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    after = {t.number: t for t in _journal_trials(journal, "resume")}
    # nothing lost: every trial that had ended is kept as it was
    for trial in before:
        if trial.state is not TrialState.RUNNING:
            assert after[trial.number].state is trial.state
            assert after[trial.number].value == trial.value
    stale = after[interrupted[0].number]
    assert stale.state is TrialState.FAIL and "interrupted" in stale.user_attrs["error"]
    # numbering goes on; the interrupted parameters are tried again first
    new = sorted(set(after) - {t.number for t in before})
    assert new == [len(before), len(before) + 1]
    assert after[new[0]].params == interrupted[0].params
    assert after[new[0]].user_attrs["retry_of"] == interrupted[0].number
    assert all(after[n].state is TrialState.COMPLETE for n in new)
    table = pd.read_csv(tmp_path / "hpo" / "resume" / "trials.csv")
    assert list(table["number"]) == sorted(after)
    assert "study resume: completed" in second.stdout
