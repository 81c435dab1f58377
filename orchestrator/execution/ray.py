"""Trains the folds of one or several runs in parallel on warm Ray actors, a pack per actor, carrying
out each run's scheduler's decisions.

The dataset is put in the object store once; every pack gets a reference. Each run has its own
``FoldScheduler`` (which fold may start, what a failure means, when the run ends); the loop here
only talks to Ray. It takes as many workers as the cluster holds at a time (``concurrency_limit``),
splits the folds waiting for a worker into packs (``packing.plan_packs``: the folds of one
architecture share a stacked model), pings a new worker until it is up, runs the pack on it,
waits, and feeds back what came of each call. A worker whose pack returned takes the next pack.

A run ends on its own: its last fold's result, a fold that failed for good, or its cancel, which
stops its models in a shared pack at their next epoch (the others go on) and closes its
producers in the hub, so no fold event of it can arrive after its terminal event. When every
run has ended, the folds still training are asked to stop, given ``CANCEL_GRACE_S``, then killed.
Healthy actors go back to the pool; when every run was cancelled, every actor that worked on them
is killed (``keep_workers_on_cancel`` keeps them warm).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from orchestrator.config import TrainConfig
from orchestrator.errors import ConfigError
from orchestrator.execution.base import EndCallback, FoldJob, ResultCallback, raise_for
from orchestrator.execution.cluster import cluster_view
from orchestrator.execution.packrun import CANCEL_GRACE_S, PackRun
from orchestrator.execution.placement import (
    ResourceShape,
    combined_fold_cap,
    concurrency_limit,
    fold_placement,
    reachable_resources,
)
from orchestrator.execution.pool import WorkerPool

__all__ = ["RayExecutor", "CANCEL_GRACE_S"]

log = logging.getLogger(__name__)


class RayExecutor:
    """Trains runs' folds concurrently on fold-trainer actors from ``pool``, a pack per actor.

    ``current_pids`` maps fold_id to the worker pid of its latest attempt in the current (or
    last) call, and ``run_actor_names`` holds the names of every actor that worked on it.

    After a cancel of every run of a call, its actors are killed (a user's cancel leaves nothing
    of the run behind); ``keep_workers_on_cancel=True`` keeps the ones that stopped cleanly warm
    instead, for callers that cancel as a matter of course (HPO pruning).
    """

    name = "ray"

    def __init__(self, pool: WorkerPool | None = None, *, keep_workers_on_cancel: bool = False) -> None:
        self.pool = pool or WorkerPool()
        self.keep_workers_on_cancel = keep_workers_on_cancel
        self.current_pids: dict[int, int] = {}
        self.run_actor_names: set[str] = set()

    def shutdown(self) -> None:
        self.pool.shutdown()

    def prestart(self, config: TrainConfig, runs: int = 1) -> int:
        """Start the fold actors ``runs`` runs of ``config`` trained in one call will use (as many
        as run at once), now."""
        shape = ResourceShape.of(config)
        cap = combined_fold_cap([config.max_concurrent_folds] * runs)
        limit = concurrency_limit(shape, reachable_resources(cluster_view()), config.total_folds * runs, cap)
        return self.pool.prestart(shape, limit)

    def run_folds(self, job: FoldJob, on_result: ResultCallback) -> None:
        raise_for(job.run_id, self.run_jobs([job], on_result))

    def run_jobs(
        self,
        jobs: Sequence[FoldJob],
        on_result: ResultCallback,
        on_end: EndCallback | None = None,
    ) -> dict[str, Exception]:
        if not jobs:
            return {}
        shapes = {ResourceShape.of(job.config) for job in jobs}
        if len(shapes) > 1:
            raise ConfigError(
                "the runs of one call must ask for the same resources per fold, got "
                + ", ".join(sorted(shape.describe() for shape in shapes))
            )
        (shape,) = shapes
        view = cluster_view()
        # Fails at once when no node, live or one the autoscaler may add, could host a fold.
        placement = fold_placement(shape, view)
        self.current_pids.clear()
        self.run_actor_names.clear()
        return PackRun(self, jobs, shape, view, placement, on_result, on_end).execute()
