"""Ray helpers shared by the tests: actors that fill the session's Ray instance on purpose, and
Ray's autoscaler config message built from plain values."""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.core.generated import autoscaler_pb2

from orchestrator.execution.cluster import free_resources


@ray.remote
class CpuHolder:
    """Holds the CPUs it was created with (``.options(num_cpus=...)``) while it lives."""

    def ready(self) -> bool:
        return True


def free_cpus(settle_s: float = 10.0) -> float:
    """The CPUs free now, once the resource view stopped changing (killed actors release theirs
    a moment after ``ray.kill``)."""
    deadline = time.monotonic() + settle_s
    last = free_resources().get("CPU", 0.0)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = free_resources().get("CPU", 0.0)
        if now == last:
            break
        last = now
    return float(last)


def cluster_config(groups: list[tuple[str, dict[str, int], int]]) -> Any:
    """Ray's ``autoscaler_pb2.ClusterConfig`` with these (name, resources, max_count) groups."""
    config = autoscaler_pb2.ClusterConfig()  # type: ignore[attr-defined]  # generated, no stubs
    for name, resources, max_count in groups:
        group = config.node_group_configs.add()
        group.name = name
        group.max_count = max_count
        for key, amount in resources.items():
            group.resources[key] = amount
    return config
