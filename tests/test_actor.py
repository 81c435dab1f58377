"""The EventHub as a Ray actor (one per namespace, on the driver's node, no CPU), on the session's real Ray instance."""

from __future__ import annotations

from typing import Any, cast

import pytest
import ray

from orchestrator.events.actor import get_hub, get_or_create_hub
from tests.ray_helpers import CpuHolder, free_cpus

pytestmark = pytest.mark.usefixtures("ray_session")


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
        # nothing left for a 1-CPU actor
        assert ray.available_resources().get("CPU", 0) < 1  # type: ignore[no-untyped-call]
        hub = get_or_create_hub(namespace="test-hub-cpu")
        info = cast(dict[str, Any], ray.get(hub.runtime_info.remote(), timeout=30))
        assert info["assigned_resources"].get("CPU", 0) == 0
    finally:
        ray.kill(holder)
        if hub is not None:
            ray.kill(hub)
