"""Folds on the session's real Ray instance: parallelism, retries, cancel, warm workers.

The module shares one ``WorkerPool`` whose first two actors are warmed by a first (cold) run.
Every test starts with two idle actors in it, whatever the test before did (a kill or a cancel
takes actors away): the ``pool`` fixture starts the missing ones, so the tests pass in any order.
Runs go through ``execute_run`` on a thread, exactly as the API's RunManager drives them, and the
tests read the events from the EventHub actor. Kills go only to the pids of this session's fold
workers (``RayExecutor.current_pids``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import ray

from orchestrator.config import TrainConfig, config_from_mapping
from orchestrator.data import cache as datacache
from orchestrator.events.publish import RaySink
from orchestrator.execution.cluster import free_resources
from orchestrator.execution.placement import ResourceShape
from orchestrator.execution.pool import WorkerPool
from orchestrator.execution.ray import RayExecutor
from orchestrator.lifecycle import Run, RunState
from orchestrator.messages import message_json_schema
from orchestrator.run.driver import execute_run, new_run
from tests.made_events import bodies
from tests.ray_helpers import CpuHolder, free_cpus
from tests.synthetic import ar1_ohlcv
from workers.features import FeatureSet, build_features

pytestmark = pytest.mark.usefixtures("ray_session")

SCHEMA = message_json_schema()
# Compiled once: jsonschema.validate checks the schema itself on every call (0.2 s per event).
VALIDATOR = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
Event = dict[str, Any]


# ---- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(session_hub: Any) -> Any:
    return session_hub


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bars") / "ar1.csv"
    ar1_ohlcv(2000, seed=11, phi=0.3).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def module_pool(hub: Any, bars: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    """Two warm fold actors: a first, cold run (one epoch) starts them and pays the first fit."""
    worker_pool = WorkerPool()
    executor = RayExecutor(worker_pool)
    started = RayRun(hub, executor, make_config(tmp_path_factory.mktemp("warmup"), bars, epochs=1))
    run = started.wait(timeout=120)
    assert run.state is RunState.COMPLETED, run.error
    assert worker_pool.created == 2 and worker_pool.idle_count() == 2
    try:
        yield worker_pool
    finally:
        worker_pool.shutdown()


@pytest.fixture
def pool(module_pool: WorkerPool, bars: str, tmp_path: Path) -> WorkerPool:
    """The module's pool with two idle fold actors of the tests' shape that are up, as many as
    run at once on the session's 2 CPUs. Those an earlier test killed are started again and
    waited for: a fold would not wait for a cold actor (its process start and ``import torch``
    take seconds under load) but move to the other fold's actor once that is done, one after
    the other instead of together."""
    RayExecutor(module_pool).prestart(make_config(tmp_path, bars))
    names = module_pool.idle_actor_names()
    assert len(names) == 2, names
    ray.get([ray.get_actor(name).ping.remote() for name in names], timeout=120)
    return module_pool


def make_config(tmp: Path, data: str, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "data": data,
        "reports_dir": str(tmp / "reports"),
        "executor": "ray",
        "min_samples": 500,
        "folds": 2,
        "lookback": 10,
        "epochs": 6,
        "patience": 1000,  # every epoch runs: the tests count them
        "cpus_per_fold": 1,
        # The heavy live detail (tested with the hub) would make every event read here 100 KB.
        "prediction_deltas": False,
        "batch_progress_interval_s": 0,
        **overrides,
    }
    return config_from_mapping(values)


class RayRun:
    """One run on a thread, as the API runs it; its events are read back from the hub."""

    def __init__(self, hub: Any, executor: RayExecutor, config: TrainConfig) -> None:
        self.hub = hub
        self.executor = executor
        self.run: Run = new_run(config)
        self.submitted = time.monotonic()
        self.thread = threading.Thread(
            target=execute_run, args=(self.run, RaySink(hub), executor), daemon=True
        )
        self.thread.start()

    def events(self) -> list[Event]:
        """The run's events as the JSON of the records the hub holds."""
        return bodies(ray.get(self.hub.run_events.remote(self.run.run_id), timeout=30))

    def epochs(self, fold_id: int) -> list[int]:
        return [e["epoch"] for e in self.events() if e["type"] == "epoch_metrics" and e["fold_id"] == fold_id]

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.thread.is_alive(), f"the run ended before {what}: {self.run.error}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.05)

    def wait(self, timeout: float = 120) -> Run:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run {self.run.run_id} still running after {timeout} s"
        return self.run


def assert_legal_stream(events: list[Event], run: Run, folds: int, epochs: int) -> None:
    """Schema-valid events in the order of DESIGN 3, each (fold, epoch) exactly once."""
    types = [e["type"] for e in events]
    assert types[:2] == ["dataset_ready", "training_start"], types[:5]
    assert types[-1] == "training_complete" and types.count("training_complete") == 1
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for event in events:
        VALIDATOR.validate(event)
        assert event["run_id"] == run.run_id
    for fold in range(folds):
        indexed = [
            (i, e["epoch"])
            for i, e in enumerate(events)
            if e["type"] == "epoch_metrics" and e["fold_id"] == fold
        ]
        assert [epoch for _, epoch in indexed] == list(range(epochs)), f"fold {fold}"
        completes = [i for i, e in enumerate(events) if e["type"] == "fold_complete" and e["fold_id"] == fold]
        assert len(completes) == 1 and completes[0] > indexed[-1][0], f"fold {fold}"


def live_actor_names() -> set[str]:
    """Names of the actors that are alive or still being created, in every namespace.

    (``ray.util.state.list_actors`` needs the dashboard's state API, which a Ray started with
    ``include_dashboard=False`` does not serve; the GCS lists named actors without it.)
    """
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}


def retry_notices(events: list[Event]) -> list[Event]:
    return [e for e in events if e["type"] == "notification" and e["kind"] == "fold_retry"]


# ---- tests -----------------------------------------------------------------------------------


def test_two_folds_train_at_the_same_time(hub: Any, pool: WorkerPool, bars: str, tmp_path: Path) -> None:
    # Overlap is proven from the events: each fold's first epoch comes before the other's last.
    # Enough epochs (and no early stop) that the two folds' start skew cannot separate them: it
    # was 0.65 s with two test suites beside this one (load average 28), where 30 epochs of a
    # fold took 0.6 s; 150 take about 3 s alone.
    epochs = 150
    started = RayRun(hub, RayExecutor(pool), make_config(tmp_path, bars, epochs=epochs, patience=epochs))
    run = started.wait()
    assert run.state is RunState.COMPLETED, run.error
    events = started.events()
    assert_legal_stream(events, run, folds=2, epochs=epochs)

    epoch_events = [e for e in events if e["type"] == "epoch_metrics"]
    order = [e["fold_id"] for e in epoch_events]
    switches = sum(1 for a, b in pairwise(order) if a != b)
    assert switches >= 1, f"epoch events do not interleave: {order}"
    spans = {
        fold: (
            min(e["ts"] for e in epoch_events if e["fold_id"] == fold),
            max(e["ts"] for e in epoch_events if e["fold_id"] == fold),
        )
        for fold in (0, 1)
    }
    assert max(s[0] for s in spans.values()) < min(s[1] for s in spans.values()), spans

    lines = (Path(run.run_dir) / "events.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == events
    summary = json.loads(Path(str(run.summary_path)).read_text())
    assert summary["executor"] == "ray"
    assert [f["attempt"] for f in summary["folds"]] == [0, 0]


def test_second_run_reuses_the_warm_workers(hub: Any, pool: WorkerPool, bars: str, tmp_path: Path) -> None:
    executor = RayExecutor(pool)
    first = RayRun(hub, executor, make_config(tmp_path / "a", bars, epochs=2)).wait()
    assert first.state is RunState.COMPLETED, first.error
    first_pids = dict(executor.current_pids)
    first_actors = set(executor.run_actor_names)
    created, reused = pool.created, pool.reused

    second_run = RayRun(hub, executor, make_config(tmp_path / "b", bars, epochs=2))
    second = second_run.wait()
    assert second.state is RunState.COMPLETED, second.error
    assert set(executor.current_pids.values()) == set(first_pids.values())
    assert executor.run_actor_names == first_actors
    assert len(set(first_pids.values())) == 2  # two processes, one per fold
    assert pool.created == created  # no new actor
    assert pool.reused == reused + 2
    assert pool.idle_count() == 2


def test_prestarted_workers_are_the_ones_a_run_uses(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path
) -> None:
    config = make_config(tmp_path, bars, epochs=1)
    shape = ResourceShape.of(config)
    while pool.idle_count():  # the module's warm actors hold both CPUs: let them go first
        pool.discard(pool.acquire(shape))
    executor = RayExecutor(pool)
    created, reused = pool.created, pool.reused
    assert executor.prestart(config) == 2  # two folds at a time on the session's 2 CPUs
    assert executor.prestart(config) == 0  # idle ones are there already
    assert pool.created == created + 2 and pool.idle_count() == 2
    run = RayRun(hub, executor, config).wait()
    assert run.state is RunState.COMPLETED, run.error
    assert pool.created == created + 2 and pool.reused == reused + 2  # the run took them


@pytest.mark.parametrize("pack", [1, "auto"])
def test_max_concurrent_folds_caps_the_workers(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path, pack: int | str
) -> None:
    executor = RayExecutor(pool)
    config = make_config(tmp_path, bars, folds=3, epochs=3, max_concurrent_folds=1, pack=pack)
    started = RayRun(hub, executor, config)
    run = started.wait()
    assert run.state is RunState.COMPLETED, run.error
    events = started.events()
    assert_legal_stream(events, run, folds=3, epochs=3)
    order = [e["fold_id"] for e in events if e["type"] == "epoch_metrics"]
    assert len(set(executor.current_pids.values())) == 1  # one worker did it all
    if pack == 1:
        assert order == [2, 2, 2, 1, 1, 1, 0, 0, 0]  # one fold after the other, the largest first
    else:  # one stack of the three folds on the one worker
        summary = json.loads(Path(str(run.summary_path)).read_text())
        assert [(f["fold_id"], f["pack_size"], f["attempt"]) for f in summary["folds"]] == [
            (0, 3, 0),
            (1, 3, 0),
            (2, 3, 0),
        ]


def test_python_error_in_a_fold_fails_the_run_without_retry(
    hub: Any,
    pool: WorkerPool,
    bars: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """A NaN in one feature of the train segments makes the training loss NaN."""

    def features_with_a_nan(frame: Any, lookback: int) -> FeatureSet:
        features = build_features(frame, lookback)
        X = features.X.copy()
        X[100, 0] = np.nan  # early: in every fold's train segment
        return FeatureSet(features.timestamps, X, features.y, features.bar_index)

    monkeypatch.setattr(datacache, "build_features", features_with_a_nan)
    datacache.clear()  # the bars' features may be cached from an earlier test
    request.addfinalizer(datacache.clear)  # and the NaN ones must not serve a later one
    created = pool.created
    started = RayRun(hub, RayExecutor(pool), make_config(tmp_path, bars, epochs=4, max_retries=2))
    run = started.wait()

    assert run.state is RunState.FAILED
    assert run.error is not None
    assert re.fullmatch(
        r"fold [01] failed: NonFiniteLossError: training loss is not finite at epoch 0 .*", run.error
    ), run.error
    events = started.events()
    assert events[-1]["type"] == "training_error" and events[-1]["error"] == run.error
    assert not retry_notices(events)
    assert pool.created == created  # no actor was replaced: nothing was retried
    assert pool.idle_count() == 2  # and the healthy workers stay warm


def test_impossible_resource_request_fails_at_once(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path
) -> None:
    created = pool.created
    started = RayRun(hub, RayExecutor(pool), make_config(tmp_path, bars, gpus_per_fold=1))
    run = started.wait(timeout=30)
    assert run.state is RunState.FAILED
    assert run.error is not None and "gpus_per_fold=1" in run.error
    assert "no node" in run.error and "'GPU': 0" in run.error
    assert run.ended_at is not None and run.ended_at - run.created_at < 10
    types = [e["type"] for e in started.events()]
    assert types == ["dataset_ready", "training_start", "training_error"]
    assert pool.created == created and pool.idle_count() == 2  # the warm workers were kept


def test_worker_that_cannot_be_placed_fails_the_run_after_the_timeout(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path
) -> None:
    holder = CpuHolder.options(num_cpus=free_cpus()).remote()  # type: ignore[attr-defined]
    other_pool = WorkerPool()
    try:
        ray.get(holder.ready.remote(), timeout=60)
        assert free_resources().get("CPU", 0) < 1  # no CPU left for a fold
        config = make_config(tmp_path, bars, placement_timeout_s=1)
        started = RayRun(hub, RayExecutor(other_pool), config)
        run = started.wait(timeout=30)
        assert run.state is RunState.FAILED
        assert run.error is not None and "was not up after" in run.error, run.error
        assert "placement_timeout_s=1" in run.error and "cpus_per_fold=1" in run.error
        assert run.ended_at is not None and run.ended_at - run.created_at < 15
        assert other_pool.idle_count() == 0  # the unplaced actors were not kept
    finally:
        other_pool.shutdown()
        ray.kill(holder)


def test_cancel_can_keep_the_workers_warm(hub: Any, pool: WorkerPool, bars: str, tmp_path: Path) -> None:
    executor = RayExecutor(pool, keep_workers_on_cancel=True)  # how HPO prunes a trial
    started = RayRun(hub, executor, make_config(tmp_path, bars, epochs=1000))
    started.wait_until(
        "both folds' first epoch",
        lambda: bool(started.epochs(0)) and bool(started.epochs(1)),
    )
    created = pool.created
    assert started.run.request_cancel() is True
    run = started.wait(timeout=30)
    assert run.state is RunState.CANCELLED
    assert started.events()[-1]["type"] == "training_error"
    assert pool.idle_actor_names() == executor.run_actor_names
    assert executor.run_actor_names <= live_actor_names()
    assert pool.created == created


def test_killed_worker_is_retried_and_the_run_completes(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path
) -> None:
    epochs = 60
    dropped_before = ray.get(hub.stats.remote(), timeout=30)["dropped_retry"]
    executor = RayExecutor(pool)
    started = RayRun(hub, executor, make_config(tmp_path, bars, epochs=epochs, max_retries=1))
    started.wait_until("fold 0's second epoch", lambda: len(started.epochs(0)) >= 2)
    victim = executor.current_pids[0]
    os.kill(victim, signal.SIGKILL)
    epochs_before_kill = len(started.epochs(0))
    assert epochs_before_kill < epochs, "fold 0 ended before it could be killed"

    run = started.wait(timeout=150)
    assert run.state is RunState.COMPLETED, run.error
    events = started.events()
    assert_legal_stream(events, run, folds=2, epochs=epochs)  # no duplicate (fold, epoch)
    notices = retry_notices(events)
    assert len(notices) == 1 and notices[0]["fold_id"] == 0 and notices[0]["attempt"] == 2
    assert "fold 0" in notices[0]["message"] and "attempt 2 of 2" in notices[0]["message"]
    assert str(victim) in notices[0]["message"]
    assert executor.current_pids[0] != victim
    summary = json.loads(Path(str(run.summary_path)).read_text())
    assert [f["attempt"] for f in summary["folds"]] == [1, 0]
    # The retry started from epoch 0: its repeats of the epochs seen before the kill were dropped.
    dropped = ray.get(hub.stats.remote(), timeout=30)["dropped_retry"] - dropped_before
    assert dropped >= epochs_before_kill >= 2


def test_killed_worker_without_retries_fails_the_run(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path
) -> None:
    executor = RayExecutor(pool)
    started = RayRun(hub, executor, make_config(tmp_path, bars, epochs=60, max_retries=0))
    started.wait_until("fold 1's first epoch", lambda: len(started.epochs(1)) >= 1)
    victim = executor.current_pids[1]
    os.kill(victim, signal.SIGKILL)

    run = started.wait(timeout=60)
    assert run.state is RunState.FAILED
    events = started.events()
    assert events[-1]["type"] == "training_error"
    error = events[-1]["error"]
    assert error == run.error
    assert "fold 1" in error and "max_retries=0" in error and str(victim) in error
    assert "Traceback" not in error
    assert not retry_notices(events)
    assert "training_complete" not in {e["type"] for e in events}
    assert not (Path(run.run_dir) / "summary.json").exists()


def test_cancel_mid_run_stops_and_kills_the_run_actors(
    hub: Any, pool: WorkerPool, bars: str, tmp_path: Path
) -> None:
    executor = RayExecutor(pool)
    started = RayRun(hub, executor, make_config(tmp_path, bars, epochs=1000))
    started.wait_until(
        "both folds' first epoch",
        lambda: bool(started.epochs(0)) and bool(started.epochs(1)),
    )
    live_before = set(executor.run_actor_names)
    assert len(live_before) == 2 and live_before <= live_actor_names()
    requested = time.monotonic()
    assert started.run.request_cancel() is True

    run = started.wait(timeout=30)
    assert time.monotonic() - requested < 10
    assert run.state is RunState.CANCELLED
    events = started.events()
    assert events[-1]["type"] == "training_error" and "cancelled" in events[-1]["error"]
    assert [e for e in events if e["type"] == "fold_complete"] == []
    run_actors = set(executor.run_actor_names)
    assert len(run_actors) == 2
    assert not run_actors & pool.idle_actor_names()
    deadline = time.monotonic() + 10
    while run_actors & live_actor_names():
        assert time.monotonic() < deadline, f"still alive: {run_actors & live_actor_names()}"
        time.sleep(0.2)
