"""What a run asks of the job queue (``ask_of``), the priority check, and the capacity the queue plans
against (the Ray cluster's view, else this machine)."""

from __future__ import annotations

import os
import sys

from orchestrator.config import TrainConfig
from orchestrator.errors import ConfigError, brief
from orchestrator.execution.placement import ClusterView, ResourceShape
from orchestrator.jobs.policy import PRIORITY_MAX, PRIORITY_MIN, Ask

__all__ = [
    "ask_of",
    "check_priority",
    "default_capacity",
    "machine_view",
]


def check_priority(value: object) -> int:
    """``value`` as a run's priority; ``ConfigError`` naming it unless an integer from
    ``PRIORITY_MIN`` to ``PRIORITY_MAX`` (a bool or a float is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ConfigError(
            f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} (higher "
            f"first), got priority={brief(value)}"
        )
    return value


def ask_of(config: TrainConfig) -> Ask:
    """What a run of ``config`` asks of the queue: an in-process run (``executor: local``) trains
    one fold at a time on this machine."""
    cap = 1 if config.executor == "local" else config.max_concurrent_folds
    return Ask(ResourceShape.of(config), config.total_folds, cap)


def machine_view() -> ClusterView:
    """This machine as a one-node cluster: its CPUs and memory (no GPU is counted)."""
    import psutil

    return ClusterView(
        ({"CPU": float(os.cpu_count() or 1), "GPU": 0.0, "memory": float(psutil.virtual_memory().total)},)
    )


def default_capacity() -> ClusterView:
    """The Ray cluster's view (live nodes, autoscaler node types) when Ray is up, else this machine."""
    ray = sys.modules.get("ray")  # never imported for this: an in-process server does without Ray
    if ray is not None and ray.is_initialized():
        from orchestrator.execution.cluster import cluster_view

        return cluster_view()
    return machine_view()
