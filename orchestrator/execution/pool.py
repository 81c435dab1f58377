"""Warm fold-trainer actors kept between runs and HPO trials, keyed by their resource shape.

``FoldTrainer`` is a plain class; ``ray.remote`` is applied here, with the fold's resources from
the config. A second run takes the actors the first one left, so it does not pay process start
and ``import torch`` again.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray

from orchestrator.execution.placement import ResourceShape
from workers.fold import FoldTrainer

__all__ = ["Worker", "WorkerPool"]

# Fold-trainer actors are named this plus a random suffix.
ACTOR_NAME_PREFIX = "fold-trainer-"


@dataclass
class Worker:
    """One fold-trainer actor and what is known of it."""

    actor: Any
    name: str  # the actor's name: `ray list actors` and ray.util.list_named_actors show it
    shape: ResourceShape
    pid: int | None = None  # known once the actor answered its first ping
    idle_since: float = field(default_factory=time.monotonic)


_remote_trainer: Any = None


def _trainer_class() -> Any:
    """``ray.remote(FoldTrainer)``, made once: each call of ``ray.remote`` exports the class."""
    global _remote_trainer
    if _remote_trainer is None:
        _remote_trainer = ray.remote(FoldTrainer)
    return _remote_trainer


class WorkerPool:
    """Warm fold-trainer actors, reused while their resource shape fits.

    ``max_concurrency=2`` lets ``cancel()`` reach an actor while ``run()`` is busy in it.
    Idle actors are released after ``idle_timeout_s`` (a daemon thread checks) and on
    ``shutdown``. ``created`` and ``reused`` count acquisitions, for tests and benchmarks.
    """

    def __init__(self, idle_timeout_s: float = 600.0) -> None:
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, got idle_timeout_s={idle_timeout_s!r}")
        self.idle_timeout_s = idle_timeout_s
        self.created = 0
        self.reused = 0
        self._idle: list[Worker] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None
        self._features: tuple[object, Any] | None = None  # the last FeatureSet put, its ObjectRef

    def put_features(self, features: object) -> Any:
        """The object-store copy of ``features``: put once while runs pass the same object (the
        driver's cached run data, ``orchestrator.data.cache``), so trials of a study share it."""
        with self._lock:
            if self._features is not None and self._features[0] is features:
                return self._features[1]
        ref = ray.put(features)
        with self._lock:
            self._features = (features, ref)
        return ref

    def acquire(self, shape: ResourceShape) -> Worker:
        """An idle actor of ``shape``, else a new one (still starting: ping it before use)."""
        self.reap_idle()
        with self._lock:
            for i, worker in enumerate(self._idle):
                if worker.shape == shape:
                    self.reused += 1
                    return self._idle.pop(i)
            # Idle actors of another shape hold resources the new one may need: release them.
            others, self._idle = self._idle, []
            self.created += 1
        for worker in others:
            self.discard(worker)
        return self._start(shape)

    def _start(self, shape: ResourceShape) -> Worker:
        name = f"{ACTOR_NAME_PREFIX}{uuid.uuid4().hex[:12]}"
        actor = (
            _trainer_class()
            .options(**shape.options(), name=name, max_concurrency=2, max_restarts=0, max_task_retries=0)
            .remote()
        )
        return Worker(actor=actor, name=name, shape=shape)

    def prestart(self, shape: ResourceShape, count: int) -> int:
        """Start actors of ``shape`` now, up to ``count`` idle ones, without waiting for them: their
        process start and imports overlap the driver's own set-up. How many were started."""
        with self._lock:
            missing = max(count - sum(w.shape == shape for w in self._idle), 0)
            self.created += missing
        for _ in range(missing):
            self.release(self._start(shape))
        return missing

    def release(self, worker: Worker) -> None:
        """Keep a healthy actor for later runs."""
        if self._closed.is_set():
            self.discard(worker)
            return
        worker.idle_since = time.monotonic()
        with self._lock:
            self._idle.append(worker)
        self._start_reaper()

    def discard(self, worker: Worker) -> None:
        """Kill an actor (dead already is fine)."""
        try:
            ray.kill(worker.actor, no_restart=True)
        except Exception:  # already dead, or Ray shut down
            pass

    def reap_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [w for w in self._idle if now - w.idle_since > self.idle_timeout_s]
            self._idle = [w for w in self._idle if w not in stale]
        for worker in stale:
            self.discard(worker)

    def discard_idle(self) -> int:
        """Kill every idle actor now, giving its resources back to the cluster (a run placed by
        another process needs them); how many went."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            self.discard(worker)
        return len(idle)

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def idle_actor_names(self) -> set[str]:
        with self._lock:
            return {w.name for w in self._idle}

    def shutdown(self) -> None:
        """Kill the idle actors; actors released later are killed too."""
        self._closed.set()
        self._features = None
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            self.discard(worker)

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None:
                return
            self._reaper = threading.Thread(
                target=self._reap_until_closed, name="worker-pool-reaper", daemon=True
            )
        self._reaper.start()

    def _reap_until_closed(self) -> None:
        interval = min(max(self.idle_timeout_s / 4, 0.05), 30.0)
        while not self._closed.wait(interval):
            if ray.is_initialized():
                self.reap_idle()
