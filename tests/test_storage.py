"""Opening a study in its storage: continuing it, refusing incomparable sessions, stale trials."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from orchestrator.config import config_from_mapping
from orchestrator.errors import ConfigError
from orchestrator.hpo.space import DEFAULT_SEARCH_SPACE
from orchestrator.hpo.spec import HpoSpec
from orchestrator.hpo.storage import LIVE_SESSIONS, fail_stale_trials, journal_storage, open_study

pytest_plugins = ["tests.hpo_fixtures"]


def _spec(tmp_path: Path, **values: Any) -> HpoSpec:
    config = config_from_mapping({"reports_dir": str(tmp_path), **values.pop("config", {})})
    return HpoSpec.model_validate({"study": "s", "config": config, **values})


def test_a_study_continues_only_with_the_same_metric_direction_and_data(tmp_path: Path) -> None:
    study = open_study(_spec(tmp_path, enqueue=[{"lr": 1e-3}]))
    assert (tmp_path / "hpo" / "s" / "study.journal").is_file()
    assert study.user_attrs["metric"] == "val_nll" and len(study.trials) == 1  # the queued one
    again = open_study(_spec(tmp_path, enqueue=[{"lr": 1e-3}]))
    assert len(again.trials) == 1  # an enqueued set already there is skipped
    with pytest.raises(ConfigError, match="exists with direction=minimize"):
        open_study(_spec(tmp_path, metric="val_auc"))
    with pytest.raises(ConfigError, match="was run with folds=5, got folds=3"):
        open_study(_spec(tmp_path, config={"folds": 3}))


def _running_trial(study: optuna.Study, session: str, **attrs: Any) -> int:
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    trial.set_user_attr("session", session)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial.number


def test_stale_trials_of_dead_processes_here_are_failed_and_retried_once() -> None:
    study = optuna.create_study()
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    gone = _running_trial(study, f"{host}:{dead_pid}:aaaaaa")
    gone_retry = _running_trial(study, f"{host}:{dead_pid}:aaaaaa", retry_of=0)
    alive = _running_trial(study, f"{host}:{os.getppid()}:bbbbbb")
    live_here = _running_trial(study, f"{host}:{os.getpid()}:cccccc")
    elsewhere = _running_trial(study, f"{host}-other:{dead_pid}:dddddd")
    LIVE_SESSIONS.add(f"{host}:{os.getpid()}:cccccc")
    try:
        fail_stale_trials(study)
    finally:
        LIVE_SESSIONS.discard(f"{host}:{os.getpid()}:cccccc")
    trials = {t.number: t for t in study.get_trials()}
    for number in (gone, gone_retry):
        assert trials[number].state is TrialState.FAIL
        assert trials[number].user_attrs["error"].startswith("interrupted: the process running it")
    for number in (alive, live_here, elsewhere):
        assert trials[number].state is TrialState.RUNNING
    queued = [t for t in study.get_trials() if t.state is TrialState.WAITING]
    assert len(queued) == 1 and queued[0].user_attrs["retry_of"] == gone


def _journal_trials(path: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=journal_storage(path)).get_trials(deepcopy=True)


def test_killed_study_resumes_where_it_stopped(hpo_bars: str, tmp_path: Path, ray_session: None) -> None:
    import ray

    command = [
        sys.executable,
        "-m",
        "orchestrator",
        "hpo",
        "--data",
        hpo_bars,
        "--min-samples",
        "300",
        "--folds",
        "2",
        "--epochs",
        "20",
        "--set",
        "patience=20",
        "--set",
        "lookback=10",
        "--reports-dir",
        str(tmp_path),
        "--study",
        "resume",
        "--pruner",
        "none",
        "--sampler-seed",
        "0",
        "--parallel",
        "1",
        "--quiet",
        "--address",
        ray.get_runtime_context().gcs_address,
        "--storage",
        str(tmp_path / "hpo" / "resume" / "study.journal"),  # a journal path still works
    ]
    journal = tmp_path / "hpo" / "resume" / "study.journal"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(
        command + ["--trials", "10"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 150
        while True:  # kill it once a trial is complete and the next one runs with its parameters
            assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
            assert time.monotonic() < deadline, "the first hpo process made no progress"
            trials = _journal_trials(journal, "resume") if journal.exists() else []
            states = [t.state for t in trials]
            if (
                TrialState.COMPLETE in states
                and states[-1] is TrialState.RUNNING
                and set(trials[-1].params) == set(DEFAULT_SEARCH_SPACE)
            ):
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

    second = subprocess.run(command + ["--trials", "2"], env=env, capture_output=True, text=True, timeout=240)
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
