"""``RunManager`` with its job queue, in process (no Ray): a restart's queue order, a run that could
not start, shutdown leaving queued runs queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import config_from_mapping
from orchestrator.events.hub import EventHub
from orchestrator.events.publish import InProcessSink
from orchestrator.execution.placement import ClusterView
from orchestrator.jobs.manager import RunManager
from orchestrator.jobs.queue import JobQueue
from orchestrator.lifecycle import RunState


def one_cpu() -> ClusterView:
    return ClusterView(({"CPU": 1.0},))


class StoredQueue:
    """The part of a JobStore ``restore_queue`` reads: queued rows in submit order."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def queued_runs(self) -> list[dict[str, Any]]:
        return self.rows


def row(run_id: str, priority: int, created_at: float, tmp_path: Path, **config: Any) -> dict[str, Any]:
    values = {
        "folds": 2,
        "epochs": 1,
        "cpus_per_fold": 1,
        "max_concurrent_folds": 1,
        "reports_dir": str(tmp_path),
        **config,
    }
    return {
        "run_id": run_id,
        "priority": priority,
        "created_at": created_at,
        "run_dir": str(tmp_path / run_id),
        "config": values,
    }


@pytest.fixture
def hub() -> EventHub:
    return EventHub()


def quiet_manager(hub: EventHub, **kwargs: Any) -> RunManager:
    """A manager on one CPU whose admitted runs go through all of admission but train nothing."""
    manager = RunManager(InProcessSink(hub), queue=JobQueue(one_cpu, aging_s=None, tick_s=3600), **kwargs)
    manager._execute = lambda run, extra_summary: None  # type: ignore[method-assign]
    return manager


def test_a_restart_queues_every_stored_run_before_admitting_in_priority_order(
    hub: EventHub, tmp_path: Path
) -> None:
    started: list[str] = []  # admissions, as the job store is told of them
    manager = quiet_manager(hub, record_admission=lambda run_id, config: started.append(run_id))
    restored = manager.restore_queue(
        StoredQueue(
            [
                row("older", 0, 1.0, tmp_path),
                row("urgent", 3, 2.0, tmp_path),
                row("hpo_s_t0001_abc", 0, 3.0, tmp_path),  # a trial: its study's session is gone
                row("huge", 0, 4.0, tmp_path, cpus_per_fold=8),  # this cluster can never hold it
            ]
        )
    )
    assert restored == ["older", "urgent"]
    assert started == ["urgent"] and manager.queue.queued_ids() == ["older"]
    assert manager.get("urgent").state is RunState.PENDING and manager.get("older").state is RunState.QUEUED
    trial, huge = manager.get("hpo_s_t0001_abc"), manager.get("huge")
    assert trial.state is RunState.INTERRUPTED and "resume the study" in (trial.error or "")
    assert huge.state is RunState.FAILED and "cpus_per_fold" in (huge.error or "")
    ended = [e for e in hub.events_since(0, None, None, None)[0] if e.type == "training_error"]
    assert {e.run_id for e in ended} == {"hpo_s_t0001_abc", "huge"}
    manager.shutdown()


def test_a_run_that_cannot_be_marked_admitted_fails_and_gives_its_cpu_back(
    hub: EventHub, tmp_path: Path
) -> None:
    def store_down(run_id: str, config_json: str) -> None:
        raise ConnectionError("the hub is unreachable")

    manager = RunManager(
        InProcessSink(hub), queue=JobQueue(one_cpu, aging_s=None, tick_s=3600), record_admission=store_down
    )
    config = config_from_mapping({"folds": 2, "epochs": 1, "executor": "local", "reports_dir": str(tmp_path)})
    run = manager.submit(config)
    assert manager.wait(run.run_id, timeout=5).state is RunState.FAILED
    assert run.error == f"run {run.run_id} could not start: ConnectionError: the hub is unreachable"
    assert manager.queue.running_ids() == [] and manager.queue.queued_ids() == []
    manager.shutdown()


def test_shutdown_leaves_queued_runs_queued(hub: EventHub, tmp_path: Path) -> None:
    manager = quiet_manager(hub)
    config = config_from_mapping({"folds": 2, "epochs": 1, "reports_dir": str(tmp_path)})
    first, second = manager.submit(config), manager.submit(config)
    assert manager.queue.running_ids() == [first.run_id] and first.state is RunState.PENDING
    assert second.state is RunState.QUEUED
    manager.shutdown()
    manager.queue.release(first.run_id)  # the first run's thread ending during the shutdown
    assert second.state is RunState.QUEUED and manager.queue.queued_ids() == [second.run_id]
