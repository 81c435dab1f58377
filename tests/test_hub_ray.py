"""The EventHub as a Ray actor, on the session's real single-node Ray instance."""

from __future__ import annotations

from typing import Any, cast

import pytest
import ray

from orchestrator.hub import HubPublisher, get_hub, get_or_create_hub
from orchestrator.messages import EPOCH_METRIC_FIELDS, EpochMetrics
from tests.ray_helpers import CpuHolder, free_cpus

pytestmark = pytest.mark.usefixtures("ray_session")

N_EVENTS = 200


@ray.remote(num_cpus=0)
def publish_from_task(publisher: HubPublisher, first: int, count: int) -> bool:
    for i in range(first, first + count):
        publisher.publish(
            {"type": "notification", "level": "info", "kind": "test", "message": str(i)}
        )
    return publisher.flush(timeout=30)


@ray.remote(num_cpus=0)
class FoldLikeActor:
    def run(self, publisher: HubPublisher, epochs: int) -> bool:
        for n in range(epochs):
            metrics = dict.fromkeys(EPOCH_METRIC_FIELDS, float("nan"))
            publisher.publish(
                EpochMetrics.model_validate(
                    {"fold_id": 0, "epoch": n, "elapsed_seconds": float(n), **metrics}
                )
            )
        return publisher.flush(timeout=30)


def session_namespace() -> str:
    return str(ray.get_runtime_context().namespace)


def test_get_or_create_hub_twice_returns_the_same_actor_on_the_driver_node() -> None:
    first = get_or_create_hub(namespace=session_namespace())
    second = get_or_create_hub(namespace=session_namespace())
    infos: list[dict[str, Any]] = ray.get(
        [first.runtime_info.remote(), second.runtime_info.remote()], timeout=60
    )
    info_first, info_second = infos
    assert info_first["actor_id"] == info_second["actor_id"]
    assert info_first["pid"] == info_second["pid"]
    assert get_hub(session_namespace())._actor_id == first._actor_id
    assert info_first["node_id"] == ray.get_runtime_context().get_node_id()


def test_hub_needs_no_cpu() -> None:
    # An actor with the default num_cpus needs 1 CPU to be scheduled, so it could not start
    # while CpuHolder holds every free CPU; the hub (num_cpus=0) must. Other modules' actors
    # (warm fold workers, API hubs) may hold CPUs already: hold only what is free, so the holder
    # itself can always be placed.
    holder = CpuHolder.options(num_cpus=free_cpus()).remote()  # type: ignore[attr-defined]
    hub = None
    try:
        assert ray.get(holder.ready.remote(), timeout=60) is True
        assert ray.available_resources().get("CPU", 0) < 1  # nothing left for a 1-CPU actor
        hub = get_or_create_hub(namespace="test-hub-cpu")
        info = cast(dict[str, Any], ray.get(hub.runtime_info.remote(), timeout=30))
        assert info["assigned_resources"].get("CPU", 0) == 0
    finally:
        ray.kill(holder)
        if hub is not None:
            ray.kill(hub)


def test_publisher_in_a_task_is_released_in_order() -> None:
    hub = get_or_create_hub(namespace=session_namespace())
    run_id = "ray-task-run"
    ray.get(hub.register_run.remote(run_id, None), timeout=60)
    publisher = HubPublisher(hub, run_id, "task-0")
    assert ray.get(publish_from_task.remote(publisher, 0, N_EVENTS), timeout=60) is True
    events: list[dict[str, Any]] = ray.get(hub.run_events.remote(run_id), timeout=60)
    assert [int(e["message"]) for e in events] == list(range(N_EVENTS))
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + N_EVENTS))
    assert publisher.next_pseq == 0  # the task numbered its own pickled copy


def test_publisher_in_an_actor_sends_models_and_a_poller_sees_them() -> None:
    hub = get_or_create_hub(namespace=session_namespace())
    run_id = "ray-actor-run"
    ray.get(hub.register_run.remote(run_id, None), timeout=60)
    start = ray.get(hub.last_seq.remote(), timeout=60)
    waiting = hub.poll.remote(start, 30, run_id)  # a long-poll already waiting when events come
    actor = FoldLikeActor.remote()  # type: ignore[attr-defined]
    publisher = HubPublisher(hub, run_id, "driver").for_producer("fold-0-attempt-0")
    assert ray.get(actor.run.remote(publisher, 20), timeout=60) is True
    answer = ray.get(waiting, timeout=60)
    assert answer["events"] and answer["events"][0]["epoch"] == 0
    events = ray.get(hub.run_events.remote(run_id), timeout=60)
    assert [e["epoch"] for e in events] == list(range(20))
    assert all(e["val_auc"] is None and e["run_id"] == run_id for e in events)
    ray.kill(actor)
