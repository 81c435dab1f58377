"""Packed training on the session's real Ray instance: a worker trains the folds it holds as one
stacked model, with results equal to one fold at a time; a worker killed mid-pack retries its
folds (identical final metrics); runs of one architecture share packs and end on their own."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from orchestrator.config import TrainConfig, config_from_mapping
from orchestrator.events import publish
from orchestrator.events.publish import RaySink
from orchestrator.execution import pool as pool_module
from orchestrator.execution.packrun import PackRun
from orchestrator.execution.pool import WorkerPool
from orchestrator.execution.ray import RayExecutor
from orchestrator.lifecycle import Run, RunState
from orchestrator.run.driver import RunDriver, execute_runs, new_run
from tests.made_events import bodies
from tests.synthetic import ar1_ohlcv
from workers.fold import FoldTrainer

pytestmark = pytest.mark.usefixtures("ray_session")

Event = dict[str, Any]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bars") / "ar1.csv"
    ar1_ohlcv(2000, seed=12, phi=0.3).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    worker_pool = WorkerPool()
    try:
        yield worker_pool
    finally:
        worker_pool.shutdown()


def make_config(tmp: Path, data: str, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "data": data,
        "reports_dir": str(tmp / "reports"),
        "executor": "ray",
        "min_samples": 500,
        "folds": 4,  # two packs of two on the session's two CPUs
        "lookback": 10,
        "hidden": 16,
        "epochs": 8,
        "patience": 3,
        "dropout": 0.1,
        "cpus_per_fold": 1,
        "prediction_deltas": False,
        "batch_progress_interval_s": 0,
        **overrides,
    }
    return config_from_mapping(values)


class Runs:
    """Runs trained in one executor call on a thread, as an HPO batch is; events from the hub."""

    def __init__(self, hub: Any, executor: RayExecutor, configs: list[TrainConfig]) -> None:
        self.hub = hub
        self.runs: list[Run] = [new_run(config) for config in configs]
        drivers = [RunDriver(run, RaySink(hub)) for run in self.runs]
        self.thread = threading.Thread(target=execute_runs, args=(drivers, executor), daemon=True)
        self.thread.start()

    def events(self, index: int = 0) -> list[Event]:
        return bodies(ray.get(self.hub.run_events.remote(self.runs[index].run_id), timeout=30))

    def epochs(self, fold_id: int, index: int = 0) -> list[int]:
        return [
            e["epoch"] for e in self.events(index) if e["type"] == "epoch_metrics" and e["fold_id"] == fold_id
        ]

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.thread.is_alive(), f"the runs ended before {what}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.05)

    def wait(self, timeout: float = 240) -> list[Run]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"runs still running after {timeout} s"
        return self.runs


def summary_of(run: Run) -> dict[str, Any]:
    assert run.state is RunState.COMPLETED, run.error
    summary: dict[str, Any] = json.loads(Path(str(run.summary_path)).read_text())
    return summary


def assert_same_folds(packed: dict[str, Any], alone: dict[str, Any]) -> None:
    assert len(packed["folds"]) == len(alone["folds"]) == 4
    for a, b in zip(packed["folds"], alone["folds"], strict=True):
        assert (a["fold_id"], a["best_epoch"], a["epochs_run"]) == (
            b["fold_id"],
            b["best_epoch"],
            b["epochs_run"],
        )
        keys = [k for k, v in b["metrics"].items() if v is not None]
        assert len(keys) > 20
        for key in keys:
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=TOLERANCE, abs=TOLERANCE), key


@pytest.fixture(scope="module")
def alone(hub: Any, pool: WorkerPool, bars: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: the same run, one fold at a time per worker (``pack: 1``)."""
    (run,) = Runs(
        hub, RayExecutor(pool), [make_config(tmp_path_factory.mktemp("alone"), bars, pack=1)]
    ).wait()
    return summary_of(run)


@pytest.fixture(scope="module")
def hub(session_hub: Any) -> Any:
    return session_hub


def test_each_worker_trains_its_folds_as_one_stack_with_the_same_results(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path, alone: dict[str, Any]
) -> None:
    executor = RayExecutor(pool)
    (run,) = Runs(hub, executor, [make_config(tmp_path, bars)]).wait()
    summary = summary_of(run)
    assert [f["pack_size"] for f in summary["folds"]] == [2, 2, 2, 2]  # two workers' packs of two
    assert len({f["pack_id"] for f in summary["folds"]}) == 2
    assert {f["pack_size"] for f in alone["folds"]} == {1}
    assert_same_folds(summary, alone)


def test_a_worker_killed_mid_pack_retries_its_folds_with_the_same_final_metrics(
    hub: Any,
    pool: WorkerPool,
    bars: str,
    tmp_path: Path,
    alone: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # each epoch goes to the hub at once, so the kill lands while the pack trains: with the
    # default window the events of this small pack's first epochs arrive together, near its end
    monkeypatch.setattr(publish, "BATCH_WINDOW_S", 0.0)
    executor = RayExecutor(pool)
    started = Runs(hub, executor, [make_config(tmp_path, bars, epochs=8, max_retries=1)])
    started.wait_until("fold 3's second epoch", lambda: len(started.epochs(3)) >= 2)
    victim = executor.current_pids[3]
    packed_with = sorted(fold for fold, pid in executor.current_pids.items() if pid == victim)
    assert len(packed_with) == 2 and 3 in packed_with
    os.kill(victim, signal.SIGKILL)

    (run,) = started.wait()
    summary = summary_of(run)
    attempts = {f["fold_id"]: f["attempt"] for f in summary["folds"]}
    assert attempts == {fold: (1 if fold in packed_with else 0) for fold in range(4)}
    notices = [e for e in started.events() if e["type"] == "notification" and e["kind"] == "fold_retry"]
    assert sorted(n["fold_id"] for n in notices) == packed_with
    assert all(str(victim) in n["message"] for n in notices)
    for fold in range(4):  # each (fold, epoch) once: the retried folds' repeats were dropped
        epochs = started.epochs(fold)
        assert epochs == list(range(len(epochs))) and len(epochs) >= 1
    assert_same_folds(summary, alone)


def test_runs_of_one_architecture_share_packs_and_a_cancelled_one_leaves_them(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path, alone: dict[str, Any]
) -> None:
    executor = RayExecutor(pool, keep_workers_on_cancel=True)  # as an HPO batch prunes a trial
    going = make_config(tmp_path, bars)
    stopping = make_config(tmp_path, bars, epochs=400, patience=400)
    started = Runs(hub, executor, [going, stopping])
    # every fold of the second run has trained an epoch: both packs run, each with both runs' folds
    started.wait_until(
        "the second run's first epochs", lambda: all(started.epochs(fold, index=1) for fold in range(4))
    )
    assert started.runs[1].request_cancel() is True
    kept, cancelled = started.wait()
    assert cancelled.state is RunState.CANCELLED
    assert started.events(1)[-1]["type"] == "training_error"
    summary = summary_of(kept)
    assert [f["pack_size"] for f in summary["folds"]] == [4, 4, 4, 4]  # two of each run per stack
    assert_same_folds(summary, alone)


def test_a_worker_that_dies_after_streaming_one_fold_retries_only_the_rest(
    hub: Any,
    pool: WorkerPool,
    bars: str,
    tmp_path: Path,
    alone: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pack's outcomes stream back one by one: a worker that dies once the driver has its first
    fold (that fold's CSV is written) retries the pack's other fold only, with the same metrics."""

    class DiesAfterItsFirstFold(FoldTrainer):
        def stream_pack(self, features: Any, members: Any) -> Iterator[Any]:
            outcomes = super().stream_pack(features, members)
            first = next(outcomes)
            yield first
            if len(members) > 1 and all(m.context.attempt == 0 for m in members):
                written = Path(members[0].config.reports_dir) / members[0].context.run_id / "predictions"
                deadline = time.monotonic() + 60
                while not list(written.glob(f"predictions_fold_{first.fold_id}_*.csv")):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                os._exit(1)  # as kill -9 would, once the driver holds the first fold
            yield from outcomes

    pool.discard_idle()  # the session's two CPUs for the dying workers
    monkeypatch.setattr(pool_module, "_remote_trainer", ray.remote(DiesAfterItsFirstFold))
    dying_pool = WorkerPool()
    try:
        (run,) = Runs(hub, RayExecutor(dying_pool), [make_config(tmp_path, bars, max_retries=1)]).wait()
    finally:
        dying_pool.shutdown()
    summary = summary_of(run)
    attempts = {f["fold_id"]: f["attempt"] for f in summary["folds"]}
    first_packs = {f["pack_id"] for f in summary["folds"] if f["attempt"] == 0}
    assert sorted(attempts.values()) == [0, 0, 1, 1] and len(first_packs) == 2  # one kept per pack
    events = bodies(ray.get(hub.run_events.remote(run.run_id), timeout=30))
    retried = sorted(
        e["fold_id"] for e in events if e["type"] == "notification" and e["kind"] == "fold_retry"
    )
    assert retried == sorted(fold for fold, attempt in attempts.items() if attempt == 1)
    assert_same_folds(summary, alone)


def test_runs_still_going_when_the_executor_s_loop_breaks_fail_with_its_error(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the driver's loop (here its placement check) ends the call: a run it leaves
    behind fails with that error, never ends as completed with folds missing."""

    def broken(self: PackRun) -> None:
        raise RuntimeError("the loop's own bug")

    monkeypatch.setattr(PackRun, "_check_placement", broken)
    (run,) = Runs(hub, RayExecutor(pool), [make_config(tmp_path, bars)]).wait()
    assert run.state is RunState.FAILED
    assert "the loop's own bug" in str(run.error)
