"""``JobQueue`` over a fixed cluster view (no Ray): admission calls, release, cancel, describe, checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestrator.errors import ConfigError
from orchestrator.execution.placement import ClusterView, NodeGroup, ResourceShape
from orchestrator.jobs.policy import Ask
from orchestrator.jobs.queue import JobQueue, ResourceError

CPU1 = ResourceShape(1.0, 0.0, None)


def two_cpus() -> ClusterView:
    return ClusterView(({"CPU": 2.0, "GPU": 0.0},))


class Started:
    """Records the admissions, in call order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, run_id: str) -> Callable[[int], None]:
        return lambda slots: self.calls.append((run_id, slots))


@pytest.fixture
def make_queue() -> Iterator[Callable[..., JobQueue]]:
    """Queues over a fixed cluster view (default: two CPUs), without aging or ticker passes,
    closed after the test whatever happens."""
    made: list[JobQueue] = []

    def make(view: ClusterView | None = None, **kwargs: Any) -> JobQueue:
        fixed = view or two_cpus()
        made.append(JobQueue(lambda: fixed, aging_s=None, tick_s=3600, **kwargs))
        return made[-1]

    yield make
    for opened in made:
        opened.close()


@pytest.fixture
def queue(make_queue: Callable[..., JobQueue]) -> JobQueue:
    return make_queue()


@pytest.fixture
def started() -> Started:
    return Started()


def test_runs_start_as_resources_free_up_in_priority_order(queue: JobQueue, started: Started) -> None:
    for i, (run_id, priority) in enumerate([("a", 0), ("b", 0), ("c", 0), ("d", 0)]):
        queue.put(run_id, priority, Ask(CPU1, 5, 1), started(run_id), submitted_at=float(i))
    queue.put("urgent", 5, Ask(CPU1, 5, 1), started("urgent"), submitted_at=9.0)
    assert started.calls == [("a", 1), ("b", 1)]
    assert queue.queued_ids() == ["urgent", "c", "d"]
    assert [queue.position(r) for r in ("urgent", "c", "d", "a")] == [1, 2, 3, None]
    queue.release("a")
    assert started.calls[-1] == ("urgent", 1)
    queue.release("a")  # twice: nothing more
    assert len(started.calls) == 3
    assert queue.remove("c") is True and queue.remove("c") is False
    queue.release("b")
    assert started.calls[-1] == ("d", 1)
    assert queue.queued_ids() == [] and sorted(queue.running_ids()) == ["d", "urgent"]


def test_a_run_asks_for_all_its_folds_when_the_cluster_is_free(queue: JobQueue, started: Started) -> None:
    queue.put("wide", 0, Ask(CPU1, 5, None), started("wide"))
    queue.put("next", 0, Ask(CPU1, 5, None), started("next"))
    assert started.calls == [("wide", 2)]
    body = queue.describe()
    assert [q["run_id"] for q in body["queue"]] == ["next"]
    assert body["queue"][0]["reason"] == "waiting for CPU: a fold needs cpus_per_fold=1, 0 CPU free"
    assert body["queue"][0]["resources"] == {
        "cpus_per_fold": 1.0,
        "gpus_per_fold": 0.0,
        "memory_per_fold_mb": None,
        "folds": 5,
        "max_concurrent_folds": None,
    }
    assert body["running"] == [
        {"run_id": "wide", "slots": 2, "holds": {"CPU": 2.0, "GPU": 0.0, "memory": 0.0}}
    ]
    assert body["capacity"]["free"]["CPU"] == 0.0


def test_the_cap_on_running_runs_applies(make_queue: Callable[..., JobQueue], started: Started) -> None:
    queue = make_queue(ClusterView(({"CPU": 16.0},)), max_running=1)
    queue.put("a", 0, Ask(CPU1, 2, 1), started("a"))
    queue.put("b", 0, Ask(CPU1, 2, 1), started("b"))
    assert started.calls == [("a", 1)]
    assert queue.describe()["queue"][0]["reason"].startswith("--max-concurrent-runs=1")


def test_a_run_held_from_before_a_restart_counts(queue: JobQueue, started: Started) -> None:
    queue.hold("adopted", CPU1, 2)
    queue.put("a", 0, Ask(CPU1, 1, 1), started("a"))
    assert started.calls == []
    queue.release("adopted")
    assert started.calls == [("a", 1)]


def test_an_autoscaler_node_type_counts_for_admission_and_for_the_check(
    make_queue: Callable[..., JobQueue], started: Started
) -> None:
    queue = make_queue(ClusterView(({"CPU": 2.0},), (NodeGroup("gpu.1x", {"CPU": 4.0, "GPU": 1.0}, 2),)))
    gpu = Ask(ResourceShape(1.0, 1.0, None), 5, None)
    queue.check(gpu)
    queue.put("gpu-run", 0, gpu, started("gpu-run"))
    assert started.calls == [("gpu-run", 2)]  # two GPU nodes can still be added
    with pytest.raises(ConfigError) as refused:
        queue.check(Ask(ResourceShape(1.0, 4.0, None), 5, None))
    text = str(refused.value)
    assert isinstance(refused.value, ResourceError) and refused.value.field == "gpus_per_fold"
    assert text.startswith("gpus_per_fold: the node with the most GPU (node type gpu.1x) has CPU 4, GPU 1")
    assert "gpus_per_fold=4" in text


def test_a_failing_start_gives_its_resources_back(queue: JobQueue, started: Started) -> None:
    def broken(slots: int) -> None:
        raise RuntimeError("no thread")

    queue.put("bad", 0, Ask(CPU1, 2, 2), broken)
    assert queue.running_ids() == []
    queue.put("next", 0, Ask(CPU1, 2, 2), started("next"))  # both CPUs are free again
    assert started.calls == [("next", 2)] and queue.describe()["capacity"]["free"]["CPU"] == 0.0


def test_a_closed_queue_admits_nothing_more(queue: JobQueue, started: Started) -> None:
    queue.put("a", 0, Ask(CPU1, 5, None), started("a"))
    queue.put("b", 0, Ask(CPU1, 5, None), started("b"))
    queue.close()  # a server shutting down: b stays queued (in the store) for the next server
    queue.release("a")
    assert started.calls == [("a", 2)] and queue.queued_ids() == ["b"]


def test_runs_put_without_a_pass_are_admitted_in_priority_order_by_the_next_one(
    make_queue: Callable[..., JobQueue], started: Started
) -> None:
    queue = make_queue(ClusterView(({"CPU": 1.0},)))
    queue.put("older", 0, Ask(CPU1, 2, 1), started("older"), submitted_at=1.0, admit=False)
    queue.put("urgent", 3, Ask(CPU1, 2, 1), started("urgent"), submitted_at=2.0, admit=False)
    assert started.calls == [] and queue.queued_ids() == ["older", "urgent"]  # listed at once
    queue.admit()
    assert started.calls == [("urgent", 1)] and queue.queued_ids() == ["older"]
