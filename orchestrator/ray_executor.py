"""Folds in parallel on Ray: warm fold-trainer actors, retries of dead workers, cancellation.

``FoldTrainer`` is a plain class; ``ray.remote`` is applied here, with the fold's resources from
the config. Actors are kept in a ``WorkerPool`` keyed by their resource shape and reused by later
runs and HPO trials, so a second run does not pay process start and ``import torch`` again.
The dataset is put in the object store once per run; every fold gets a reference.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from orchestrator.config import TrainConfig
from orchestrator.cv import FoldSpec
from orchestrator.errors import (
    ConfigError,
    FoldFailedError,
    OrchestratorError,
    RunCancelledError,
)
from orchestrator.executors import FoldJob, ResultCallback, fold_producer
from orchestrator.hub import NAMESPACE, HubPublisher
from orchestrator.messages import Notification
from workers.fold import FoldContext, FoldTrainer

__all__ = ["ensure_ray", "RaySink", "RayExecutor", "WorkerPool", "ResourceShape"]

log = logging.getLogger(__name__)

# Seconds a cancelled fold gets to stop at its next epoch boundary before its actor is killed.
CANCEL_GRACE_S = 2.0
# How often the driver wakes to check for cancels while folds run.
WAIT_SLICE_S = 0.2


def ensure_ray(address: str | None = None, **init_kwargs: Any) -> None:
    """Join ``address`` (or RAY_ADDRESS), else start a local instance; no-op if connected."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "ignore_reinit_error": True}
    if address is None:
        kwargs["include_dashboard"] = False
    kwargs.update(init_kwargs)
    ray.init(address=address, **kwargs)


class RaySink:
    """Events go to the EventHub actor; each producer gets a fire-and-forget publisher."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub

    def register_run(self, run_id: str, run_dir: str | None) -> None:
        ray.get(self.hub.register_run.remote(run_id, run_dir))

    def publisher(self, run_id: str, producer: str) -> HubPublisher:
        return HubPublisher(self.hub, run_id, producer)


@dataclass(frozen=True)
class ResourceShape:
    num_cpus: float
    num_gpus: float
    memory: int | None

    @classmethod
    def of(cls, config: TrainConfig) -> "ResourceShape":
        memory = config.memory_per_fold_mb * 1024 * 1024 if config.memory_per_fold_mb else None
        return cls(config.cpus_per_fold, config.gpus_per_fold, memory)

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory:
            opts["memory"] = self.memory
        return opts


@dataclass
class _Worker:
    actor: Any
    shape: ResourceShape
    pid: int | None = None
    idle_since: float = field(default_factory=time.monotonic)


class WorkerPool:
    """Warm fold-trainer actors, reused while their resource shape fits.

    ``max_concurrency=2`` lets ``cancel()`` reach an actor while ``run()`` is busy in it.
    Idle actors are released after ``idle_timeout_s`` and on ``shutdown``.
    """

    def __init__(self, idle_timeout_s: float = 600.0) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self.created = 0

    def acquire(self, shape: ResourceShape) -> _Worker:
        self.reap_idle()
        with self._lock:
            for i, worker in enumerate(self._idle):
                if worker.shape == shape:
                    return self._idle.pop(i)
            # Idle actors of another shape hold resources the new one may need: release them.
            others, self._idle = self._idle, []
        for worker in others:
            self.discard(worker)
        remote_cls = ray.remote(FoldTrainer).options(
            **shape.options(), max_concurrency=2, max_restarts=0, max_task_retries=0
        )
        self.created += 1
        return _Worker(actor=remote_cls.remote(), shape=shape)

    def release(self, worker: _Worker) -> None:
        worker.idle_since = time.monotonic()
        with self._lock:
            self._idle.append(worker)

    def discard(self, worker: _Worker) -> None:
        try:
            ray.kill(worker.actor, no_restart=True)
        except Exception:  # already dead
            pass

    def reap_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [w for w in self._idle if now - w.idle_since > self.idle_timeout_s]
            self._idle = [w for w in self._idle if w not in stale]
        for worker in stale:
            self.discard(worker)

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def shutdown(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            self.discard(worker)


@dataclass
class _Attempt:
    spec: FoldSpec
    attempt: int
    worker: _Worker
    ref: Any
    started: float


def _check_feasible(shape: ResourceShape) -> None:
    """Fail at once when no node could ever host one fold (no silent hang)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for node in nodes:
        res = node.get("Resources", {})
        if res.get("CPU", 0) >= shape.num_cpus and res.get("GPU", 0) >= shape.num_gpus and (
            not shape.memory or res.get("memory", 0) >= shape.memory
        ):
            return
    have = [
        {k: node.get("Resources", {}).get(k, 0) for k in ("CPU", "GPU")} for node in nodes
    ]
    raise ConfigError(
        f"no node can host a fold with cpus_per_fold={shape.num_cpus}, "
        f"gpus_per_fold={shape.num_gpus}"
        + (f", memory_per_fold_mb={shape.memory // 2**20}" if shape.memory else "")
        + f"; nodes have {have}"
    )


def _concurrency(config: TrainConfig, shape: ResourceShape, n_folds: int) -> int:
    total = ray.cluster_resources()
    fits = int(total.get("CPU", 0) // shape.num_cpus) if shape.num_cpus else n_folds
    if shape.num_gpus:
        fits = min(fits, int(total.get("GPU", 0) // shape.num_gpus + 1e-9))
    limit = max(1, min(n_folds, fits))
    if config.max_concurrent_folds:
        limit = min(limit, config.max_concurrent_folds)
    return limit


def _cause_text(err: BaseException) -> str:
    if isinstance(err, RayTaskError):
        cause = err.cause if hasattr(err, "cause") else None
        if cause is not None:
            return str(cause) if isinstance(cause, OrchestratorError) else f"{type(cause).__name__}: {cause}"
    return f"{type(err).__name__}: {err}"


class RayExecutor:
    name = "ray"

    def __init__(self, pool: WorkerPool | None = None) -> None:
        self.pool = pool or WorkerPool()
        self.current_pids: dict[int, int] = {}  # fold_id -> worker pid of the running attempt

    def shutdown(self) -> None:
        self.pool.shutdown()

    def run_folds(self, job: FoldJob, on_result: ResultCallback) -> None:
        config = job.config
        shape = ResourceShape.of(config)
        _check_feasible(shape)
        features_ref = ray.put(job.features)  # once per run; every fold gets the reference
        driver = job.sink.publisher(job.run_id, "executor")
        pending = list(job.specs)
        running: dict[Any, _Attempt] = {}
        attempts: dict[int, int] = {spec.fold_id: 0 for spec in job.specs}
        limit = _concurrency(config, shape, len(job.specs))
        self.current_pids.clear()

        def launch(specs: list[FoldSpec]) -> None:
            """Start (or reuse) one actor per fold, wait for all of them at once, submit."""
            starting = {}
            for spec in specs:
                worker = self.pool.acquire(shape)
                starting[worker.actor.ping.remote()] = (spec, worker)
            ready, late = ray.wait(
                list(starting), num_returns=len(starting), timeout=config.placement_timeout_s
            )
            for ref in late:
                self.pool.discard(starting[ref][1])
            if late:
                for ref in ready:
                    self.pool.release(starting[ref][1])
                raise OrchestratorError(
                    f"{len(late)} fold(s) could not be placed within placement_timeout_s="
                    f"{config.placement_timeout_s} s (each needs {shape.options()}; the cluster "
                    f"has {ray.available_resources()} available)"
                )
            for ref in ready:
                spec, worker = starting[ref]
                try:
                    worker.pid = ray.get(ref)
                except RayActorError:  # died while starting: put the fold back in the queue
                    self.pool.discard(worker)
                    pending.insert(0, spec)
                    continue
                attempt = attempts[spec.fold_id]
                self.current_pids[spec.fold_id] = worker.pid or 0
                context = FoldContext(job.run_id, job.training_started_at, attempt)
                publisher = job.sink.publisher(job.run_id, fold_producer(spec.fold_id, attempt))
                run_ref = worker.actor.run.remote(features_ref, spec, config, context, publisher)
                running[run_ref] = _Attempt(spec, attempt, worker, run_ref, time.monotonic())

        try:
            while pending or running:
                if pending and len(running) < limit:
                    free = limit - len(running)
                    batch, pending[:] = pending[:free], pending[free:]
                    launch(batch)
                if job.cancel_event.is_set():
                    raise RunCancelledError(f"run {job.run_id} was cancelled")
                done, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_SLICE_S)
                for ref in done:
                    item = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayActorError as err:  # the worker process died: retry the fold
                        self.pool.discard(item.worker)
                        fold_id = item.spec.fold_id
                        attempts[fold_id] += 1
                        if attempts[fold_id] > config.max_retries:
                            raise FoldFailedError(
                                fold_id,
                                f"its worker died {attempts[fold_id]} time(s), more than "
                                f"max_retries={config.max_retries} ({_short(err)})",
                            ) from err
                        driver.publish(Notification(
                            level="warning", kind="fold_retry", fold_id=fold_id,
                            message=f"fold {fold_id}: worker process (pid {item.worker.pid}) died; "
                            f"retrying, attempt {attempts[fold_id] + 1} of {config.max_retries + 1}",
                        ))
                        pending.insert(0, item.spec)
                        continue
                    except RayTaskError as err:
                        self.pool.release(item.worker)
                        cause = getattr(err, "cause", None)
                        if isinstance(cause, RunCancelledError):
                            raise RunCancelledError(str(cause)) from err
                        raise FoldFailedError(item.spec.fold_id, _cause_text(err)) from err
                    self.pool.release(item.worker)
                    on_result(result)
        except BaseException:
            self._stop(running)
            raise
        finally:
            driver.flush()

    def _stop(self, running: dict[Any, _Attempt]) -> None:
        """Ask running folds to stop; kill the actors that have not within the grace period."""
        if not running:
            return
        for item in running.values():
            try:
                item.worker.actor.cancel.remote()
            except Exception:
                pass
        ray.wait(list(running), num_returns=len(running), timeout=CANCEL_GRACE_S)
        # The run's actors do not outlive a failed or cancelled run: none go back to the pool.
        for item in running.values():
            self.pool.discard(item.worker)
        running.clear()


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
