"""What the Ray loop of ``execution.packrun`` keeps of its runs and calls in flight, and the Ray
calls of its end: stopping the packs still training, closing a run's producers in the hub, and
what a failed call says."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray
from ray.exceptions import (
    NodeDiedError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from orchestrator.config import FoldSpec
from orchestrator.errors import OrchestratorError
from orchestrator.execution.base import FoldJob
from orchestrator.execution.cluster import is_placed
from orchestrator.execution.placement import ResourceShape
from orchestrator.execution.pool import Worker, WorkerPool
from orchestrator.execution.scheduler import FoldScheduler, RetryPolicy

__all__ = [
    "CANCEL_GRACE_S",
    "WORKER_DEATH",
    "Member",
    "Call",
    "PackedRun",
    "PackExecutor",
    "stop_packs",
    "close_producers",
    "scale_up_message",
    "drained",
    "cause_text",
    "short",
]

log = logging.getLogger(__name__)

# Seconds a stopped fold gets to finish its epoch and flush its events before its actor is killed.
CANCEL_GRACE_S = 2.0
# What a dead worker process looks like to the caller of one of its methods.
WORKER_DEATH: tuple[type[BaseException], ...] = (
    RayActorError,
    WorkerCrashedError,
    OutOfMemoryError,
    NodeDiedError,
)


@dataclass(frozen=True)
class Member:
    """A fold in a call: its run (an index of the call's runs), fold and attempt."""

    run: int
    fold_id: int
    attempt: int


@dataclass
class Call:
    """A call in flight on a worker: its ``ping`` (it is coming up) or its pack's run, whose
    ``members`` are the folds that have no outcome back yet."""

    worker: Worker
    ping: bool
    members: list[Member]
    since: float = field(default_factory=time.monotonic)

    def take(self, run_id: str, fold_id: int, run_ids: Sequence[str]) -> int:
        """Remove the member that fold ``fold_id`` of run ``run_id`` is (``run_ids``: the call's
        runs' ids, by index) as its outcome has come back; returns its run's index."""
        member = next(m for m in self.members if m.fold_id == fold_id and run_ids[m.run] == run_id)
        self.members.remove(member)
        return member.run


@dataclass
class PackedRun:
    """One run of the call: its job, scheduler, producers, and how it ended."""

    job: FoldJob
    scheduler: FoldScheduler
    specs: dict[int, FoldSpec]
    notices: Any
    features_ref: Any = None
    producers: list[str] = field(default_factory=list)
    delivered: int = 0
    ended: bool = False
    error: Exception | None = None

    @classmethod
    def of(cls, job: FoldJob, order: list[int], shape: ResourceShape, scale_up: Sequence[str]) -> PackedRun:
        """A run of ``job`` whose folds wait for workers in ``order``."""
        return cls(
            job=job,
            scheduler=FoldScheduler(
                job.run_id,
                order,
                limit=len(job.specs),
                policy=RetryPolicy(job.config.max_retries, job.config.placement_timeout_s),
                shape=shape,
                scale_up=scale_up,
            ),
            specs={spec.fold_id: spec for spec in job.specs},
            notices=job.sink.publisher(job.run_id, "executor"),
        )


class PackExecutor(Protocol):
    """What the loop reads and writes of its executor (``execution.ray.RayExecutor``)."""

    pool: WorkerPool
    keep_workers_on_cancel: bool
    current_pids: dict[int, int]
    run_actor_names: set[str]


def stop_packs(calls: dict[Any, Call], pool: WorkerPool) -> list[Worker]:
    """Ask the packs of ``calls`` still training to stop; kill what has not stopped within the
    grace. Returns the workers that are healthy (for the caller to keep or release)."""
    healthy: list[Worker] = []
    # A placed actor still starting is healthy as far as anyone knows (its next user pings it);
    # one still waiting for resources would take them later, unasked: it goes.
    for call in calls.values():
        if call.ping:
            if is_placed(call.worker.actor):
                healthy.append(call.worker)
            else:
                pool.discard(call.worker)
    stopping = {stream: call for stream, call in calls.items() if not call.ping}
    if not stopping:
        return healthy
    for call in stopping.values():
        try:
            call.worker.actor.cancel.remote()
        except Exception:  # its actor is gone already
            pass
    deadline = time.monotonic() + CANCEL_GRACE_S
    for stream, call in stopping.items():
        if drained(stream, deadline):
            healthy.append(call.worker)
        else:
            pool.discard(call.worker)
    return healthy


def drained(stream: Any, deadline: float) -> bool:
    """True when the pack's call (``FoldTrainer.stream_pack``'s generator) ended in its own process
    by ``deadline`` (its outcomes or an exception, read and dropped); False when its worker died or
    it is still going (stopped folds finish their epoch first)."""
    while True:
        ready, _ = ray.wait([stream], timeout=max(0.0, deadline - time.monotonic()), fetch_local=False)
        if not ready:
            return False
        try:
            ray.get(next(stream))
        except StopIteration:
            return True
        except WORKER_DEATH:
            return False
        except Exception:  # the pack's own exception ends its call
            return True


def scale_up_message(shape: ResourceShape, timeout_s: float, types: Sequence[str]) -> str:
    """The ``autoscaling`` notification's text: no live node fits a fold, the autoscaler may add one."""
    return (
        f"no live node can host a fold with {shape.describe()}: waiting up to "
        f"placement_timeout_s={timeout_s:g} for the autoscaler to add a node of type {' or '.join(types)}"
    )


def close_producers(job: FoldJob, producers: list[str], *, wait: bool) -> None:
    """Close ``producers`` of ``job``'s run in the hub: their later events are dropped."""
    close = getattr(job.sink, "close_producers", None)
    if close is None or not producers:
        return
    try:
        close(job.run_id, producers, timeout=10.0 if wait else None)
    except Exception:  # the hub is gone: nothing left to protect
        log.exception("run %s: could not close producers %s", job.run_id, producers)


def cause_text(err: RayTaskError) -> str:
    """The pack's own exception as ``Type: message`` (an OrchestratorError: its message)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, OrchestratorError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return short(err)


def short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__
