"""``execute_runs``' phases: when the HPO finisher may go on (``on_prepared``), and a deferred
finish's training time (``DeferredDriver`` stamps the end of training, ``RunDriver`` uses it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from orchestrator.config import config_from_mapping
from orchestrator.events.publish import InProcessSink
from orchestrator.execution.local import LocalExecutor
from orchestrator.hpo.finisher import DeferredDriver, Finisher
from orchestrator.lifecycle import RunState
from orchestrator.run.driver import RunDriver, execute_runs, new_run
from tests.synthetic import ar1_ohlcv


class LoggedDriver:
    def __init__(self, name: str, log: list[str], job: Any) -> None:
        self.name, self.log, self.job = name, log, job

    def prepare(self) -> Any:
        self.log.append(f"prepare {self.name}")
        return self.job

    def on_result(self, result: Any) -> None:
        self.log.append(f"result {self.name}")

    def finish(self, executor_name: str, error: BaseException | None) -> Any:
        self.log.append(f"finish {self.name}")


class LoggedExecutor:
    name = "fake"

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def run_jobs(self, jobs: list[Any], on_result: Any, on_end: Any) -> dict[str, Exception]:
        self.log.append(f"run_jobs {len(jobs)}")
        for job in jobs:
            on_end(job.run_id, None)
        return {}


def test_on_prepared_comes_once_after_every_prepare_and_before_the_executor_call() -> None:
    log: list[str] = []
    jobs = [type("Job", (), {"run_id": f"r{i}"})() for i in range(2)]
    drivers = [LoggedDriver(f"d{i}", log, job) for i, job in enumerate(jobs)]
    execute_runs(drivers, LoggedExecutor(log), lambda: log.append("prepared"))
    assert log == ["prepare d0", "prepare d1", "prepared", "run_jobs 2", "finish d0", "finish d1"]
    log.clear()
    execute_runs([LoggedDriver("none", log, None)], LoggedExecutor(log), lambda: log.append("prepared"))
    assert log == ["prepare none", "prepared"]  # nothing to train: the finisher still goes on


def test_a_deferred_finish_counts_the_training_stage_to_the_folds_end_not_to_its_turn(tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    ar1_ohlcv(1500, seed=3).to_csv(data, index=False)
    values = {"data": str(data), "reports_dir": str(tmp_path / "reports"), "executor": "local"}
    run = new_run(
        config_from_mapping({**values, "min_samples": 500, "folds": 2, "epochs": 2, "lookback": 10})
    )
    finisher = Finisher("test-finish")
    finisher.hold()  # the finish waits for its turn: a batch being asked and prepared
    execute_runs([DeferredDriver(RunDriver(run, InProcessSink()), finisher)], LocalExecutor())
    time.sleep(1.0)
    finisher.close()
    assert run.state is RunState.COMPLETED and run.summary_path
    timings = json.loads(Path(run.summary_path).read_text())["timings"]
    # the second of waiting for the turn is in the run's total, not in its training stage
    assert timings["total_seconds"] - timings["training_seconds"] >= 1.0
