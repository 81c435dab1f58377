"""Where a study's trials run: on Ray (the hub actor, warm fold workers) or in this process, without Ray.

A study needs four things of its place: a sink for its events, a ``HubClient`` for the one
follower of the hub, the cluster's resources (to pack parallel trials) and an executor per
trial. ``RayBackend`` gives the namespace's EventHub actor and a ``WorkerPool`` shared by the
trials; ``LocalBackend`` an ``EventHub`` in this process and a ``LocalExecutor`` (folds one after
the other, trials one at a time), the in-process baseline of the HPO benchmark. Ray is imported
only by the Ray backend.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from orchestrator.config import TrainConfig
from orchestrator.events.hub import EventHub
from orchestrator.events.publish import EventSink, InProcessSink
from orchestrator.events.stream import HubClient, LocalHubClient
from orchestrator.execution.base import FoldExecutor
from orchestrator.lifecycle import Run

__all__ = ["TrialBackend", "TrialGate", "RayBackend", "LocalBackend", "backend_for"]


class TrialGate(Protocol):
    """Where a trial's run waits for its turn (``orchestrator.jobs.manager.RunManager``'s job queue)."""

    def wait_turn(self, run: Run, *, study: str, cancel: threading.Event | None = None) -> bool: ...

    def done(self, run: Run) -> None: ...


class TrialBackend(Protocol):
    name: str

    @property
    def sink(self) -> EventSink:
        """Where the study's and its trials' events go."""

    def hub_client(self) -> HubClient: ...

    def cluster_resources(self) -> dict[str, float] | None:
        """What parallel trials share (``pack_resources``); None: nothing to pack."""

    def executor(self) -> FoldExecutor:
        """The executor of one trial's run."""

    def prestart(self, config: TrainConfig, runs: int) -> None:
        """Start the workers a batch of ``runs`` trials of ``config`` will train on, now."""

    def end_trial(self, executor: FoldExecutor) -> None: ...

    def close(self) -> None: ...


class RayBackend:
    """Trials on Ray: the hub actor, and one warm ``WorkerPool`` for all trials (``reuse_workers``
    False gives each trial a fresh pool: the cold baseline of the benchmark)."""

    name = "ray"

    def __init__(self, hub: Any, pool: Any | None = None, reuse_workers: bool = True) -> None:
        from orchestrator.events.publish import RaySink
        from orchestrator.execution.pool import WorkerPool

        self.hub = hub
        self.sink = RaySink(hub)
        self.reuse_workers = reuse_workers
        self._own_pool = pool is None and reuse_workers
        self.pool: Any = WorkerPool() if self._own_pool else pool

    def hub_client(self) -> HubClient:
        from orchestrator.events.stream import RayHubClient

        return RayHubClient(self.hub)

    def cluster_resources(self) -> dict[str, float] | None:
        from orchestrator.execution.cluster import cluster_resources

        return cluster_resources()

    def executor(self) -> FoldExecutor:
        from orchestrator.execution.pool import WorkerPool
        from orchestrator.execution.ray import RayExecutor

        pool = self.pool if self.reuse_workers and self.pool is not None else WorkerPool()
        # a pruned trial is a cancel as a matter of course: its actors stop at their next epoch
        # and stay warm for the next trial (the pool releases idle ones later)
        return RayExecutor(pool=pool, keep_workers_on_cancel=True)

    def prestart(self, config: TrainConfig, runs: int) -> None:
        from orchestrator.execution.ray import RayExecutor

        if self.reuse_workers:  # their start and torch's import overlap the study's set-up
            RayExecutor(pool=self.pool).prestart(config, runs)

    def end_trial(self, executor: FoldExecutor) -> None:
        if not self.reuse_workers:
            executor.shutdown()

    def close(self) -> None:
        if self._own_pool and self.pool is not None:
            self.pool.shutdown()


class LocalBackend:
    """Trials in this process, one at a time: an in-process hub, folds one after the other."""

    name = "local"

    def __init__(self, hub: EventHub | None = None) -> None:
        self.hub = hub or EventHub()
        self.sink = InProcessSink(self.hub)
        self._executor: FoldExecutor | None = None

    def hub_client(self) -> HubClient:
        return LocalHubClient(self.hub)

    def cluster_resources(self) -> dict[str, float] | None:
        return None

    def executor(self) -> FoldExecutor:
        from orchestrator.execution.local import LocalExecutor

        # one executor for the session: its fold trainer (torch imported, warm) serves every trial
        self._executor = self._executor or LocalExecutor()
        return self._executor

    def prestart(self, config: TrainConfig, runs: int) -> None:
        pass  # one fold trainer, in this process

    def end_trial(self, executor: FoldExecutor) -> None:
        pass

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()


def backend_for(
    executor: str, hub: Any | None = None, pool: Any | None = None, reuse_workers: bool = True
) -> TrialBackend:
    """The backend of a study whose base config says ``executor`` (``local`` or ``ray``)."""
    if executor == "local":
        return LocalBackend(hub)
    if hub is None:
        from orchestrator.events.actor import get_or_create_hub

        hub = get_or_create_hub()
    return RayBackend(hub, pool, reuse_workers)
