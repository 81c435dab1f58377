"""Which fold runs next and what a failure means: fold attempt states and a pure policy, no Ray.

The Ray executor tells a ``FoldScheduler`` what happened and carries out what it returns, in the
manner of Ray Train v2's controller and ``FailurePolicy``:

- folds wait in a queue (``PENDING``) and get a worker in order, at most ``limit`` in flight
  (``launches`` returns ``Launch``); a worker first has to come up (``PLACING``), then the fold
  trains on it (``started`` returns ``Train``; ``RUNNING``) until it ``SUCCEEDED``;
- a worker that gets no place within ``placement_timeout_s`` (a placed one that is still
  starting gets ``start_timeout_s``) ends the run, unless the run's own folds hold what the
  cluster has left (a node was lost): then the fold goes back to the queue (``Requeue``) and the
  run runs fewer folds at a time from then on. A worker that dies before its first call is
  replaced, at most ``max_start_failures`` times per fold; this is not a new attempt;
- a worker process that dies while training (kill -9, OOM, node loss) ends its attempt as
  ``FAILED_RETRYABLE``: the fold goes to the front of the queue as the next attempt, from the
  start, and the same state change makes the ``fold_retry`` notification (``Retry``). Past
  ``max_retries`` the attempt is ``FAILED`` and the run ends naming the fold (``EndRun``). A
  Python exception inside a fold is not retried: it ends the run with its message;
- whatever ends the run early, ``stop`` marks the attempts still live ``CANCELLED``.
"""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.config import FoldSpec
from orchestrator.errors import (
    FoldFailedError,
    OrchestratorError,
    RunCancelledError,
)
from orchestrator.execution.placement import ResourceShape, placement_timeout_message
from orchestrator.messages import Notification
from orchestrator.states import StateTable

__all__ = [
    "AttemptState",
    "FoldAttempt",
    "RetryPolicy",
    "FoldScheduler",
    "fold_cost",
    "launch_order",
    "longest_first",
    "Launch",
    "Train",
    "Requeue",
    "Retry",
    "EndRun",
    "START_TIMEOUT_S",
    "MAX_START_FAILURES",
]

log = logging.getLogger(__name__)

# Seconds a placed worker may take to start (process, imports) before the run fails.
START_TIMEOUT_S = 600.0
# Workers of one fold that may die before their first call; these are not fold attempts.
MAX_START_FAILURES = 3


class AttemptState(str, enum.Enum):
    PENDING = "pending"  # in the queue, waiting for a worker
    PLACING = "placing"  # has a worker that is not up yet (no place, or its process starting)
    RUNNING = "running"  # training on its worker
    SUCCEEDED = "succeeded"
    FAILED_RETRYABLE = "failed_retryable"  # its worker died; the fold goes on as the next attempt
    FAILED = "failed"
    CANCELLED = "cancelled"


ATTEMPT_STATES = StateTable(
    "fold attempt",
    {
        AttemptState.PENDING: {AttemptState.PLACING, AttemptState.CANCELLED},
        AttemptState.PLACING: {
            AttemptState.PENDING,  # its worker died starting, or found no place: back in the queue
            AttemptState.RUNNING,
            AttemptState.FAILED,
            AttemptState.CANCELLED,
        },
        AttemptState.RUNNING: {
            AttemptState.SUCCEEDED,
            AttemptState.FAILED_RETRYABLE,
            AttemptState.FAILED,
            AttemptState.CANCELLED,
        },
        AttemptState.SUCCEEDED: (),
        AttemptState.FAILED_RETRYABLE: (),
        AttemptState.FAILED: (),
        AttemptState.CANCELLED: (),
    },
)
_LIVE = frozenset({AttemptState.PENDING, AttemptState.PLACING, AttemptState.RUNNING})


@dataclass
class FoldAttempt:
    """One try of one fold; ``number`` is 0 for the first."""

    fold_id: int
    number: int = 0
    state: AttemptState = AttemptState.PENDING

    def transition(self, new: AttemptState) -> None:
        self.state = ATTEMPT_STATES.check(self.state, new, f"fold {self.fold_id} attempt {self.number}")


@dataclass(frozen=True)
class RetryPolicy:
    """What a run allows: retries of dead workers, and how long a worker may take to come up."""

    max_retries: int
    placement_timeout_s: float
    start_timeout_s: float = START_TIMEOUT_S
    max_start_failures: int = MAX_START_FAILURES

    def overdue(self, waited: float, placed: Callable[[], bool]) -> bool:
        """True when a worker that waited ``waited`` s is not coming up in time; ``placed`` (it
        has a process, maybe still importing torch) is asked only past the placement timeout."""
        if waited <= self.placement_timeout_s:
            return False
        return not (waited <= self.start_timeout_s and placed())


@dataclass(frozen=True)
class Launch:
    """Give the fold a worker (a free one of the run, else one from the pool) and ping it."""

    fold_id: int
    attempt: int


@dataclass(frozen=True)
class Train:
    """The fold's worker is up: run the fold on it."""

    fold_id: int
    attempt: int


@dataclass(frozen=True)
class Requeue:
    """The fold's worker found no place in time: let it go; the fold waits in the queue."""

    fold_id: int


@dataclass(frozen=True)
class Retry:
    """The fold's worker died: publish ``notice``; the fold waits at the front of the queue."""

    fold_id: int
    attempt: int
    notice: Notification


@dataclass(frozen=True)
class EndRun:
    """The run ends now with ``error`` (a fold failed for good, no place in time, a cancel)."""

    error: OrchestratorError


def fold_cost(spec: FoldSpec) -> int:
    """A fold's epoch cost in forward-pass units: about 3 per train sample (forward and the
    backward pass, about twice a forward) and 1 per calibration or validation sample."""
    return 3 * len(spec.train) + len(spec.calibration) + len(spec.validation)


def longest_first(specs: Iterable[FoldSpec]) -> list[int]:
    """Fold ids by cost, the most first (ties: lower id): list scheduling's LPT order. With
    expanding windows the last fold is the largest; launched last it would train alone after
    the others (a wave of one)."""
    return [spec.fold_id for spec in sorted(specs, key=lambda s: (-fold_cost(s), s.fold_id))]


# Up to this many folds every launch order is tried; beyond, longest first.
_EXHAUSTIVE_FOLDS = 7


def launch_order(specs: Iterable[FoldSpec], workers: int) -> list[int]:
    """The order to launch folds in so that, each worker taking the next fold when it frees up,
    the last fold ends soonest (the makespan, with ``fold_cost`` as each fold's time).

    Longest first is not always best: five folds of costs 8, 7, 7, 6, 5 on 2 workers end at 19 in
    that order, at 18 in the order 8, 7, 6, 7, 5 (one worker takes 8 and 7, the other 7, 6 and 5).
    Up to 7 folds every order is tried (longest first wins ties); beyond, longest first. Cost:
    Graham, "Bounds on multiprocessing timing anomalies" (1969) for list scheduling and LPT.
    """
    specs = list(specs)
    lpt = longest_first(specs)
    if workers <= 1 or len(specs) <= workers or len(specs) > _EXHAUSTIVE_FOLDS:
        return lpt
    cost = {spec.fold_id: fold_cost(spec) for spec in specs}
    best, best_span = lpt, _makespan(lpt, cost, workers)
    for order in itertools.permutations(lpt):
        span = _makespan(order, cost, workers)
        if span < best_span:
            best, best_span = list(order), span
    return best


def _makespan(order: Sequence[int], cost: Mapping[int, int], workers: int) -> int:
    """When the last fold ends if each of ``workers`` takes the next fold of ``order`` when free."""
    free = [0] * workers
    for fold_id in order:
        heapq.heapreplace(free, free[0] + cost[fold_id])
    return max(free)


class FoldScheduler:
    """The attempts of one run's folds, and what to do after each thing that happens.

    Folds are launched in the order of ``fold_ids`` (``longest_first`` gives the usual order).
    """

    def __init__(
        self,
        run_id: str,
        fold_ids: Iterable[int],
        *,
        limit: int,
        policy: RetryPolicy,
        shape: ResourceShape,
        scale_up: Iterable[str] = (),
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got limit={limit!r}")
        self.run_id = run_id
        self.limit = limit
        self.policy = policy
        self.shape = shape
        self.scale_up = tuple(scale_up)
        self._attempts = {fold_id: FoldAttempt(fold_id) for fold_id in fold_ids}
        self._queue: deque[int] = deque(self._attempts)
        self._start_failures = dict.fromkeys(self._attempts, 0)

    @property
    def finished(self) -> bool:
        """True when every fold succeeded."""
        return all(a.state is AttemptState.SUCCEEDED for a in self._attempts.values())

    def _count(self, *states: AttemptState) -> int:
        return sum(a.state in states for a in self._attempts.values())

    def _requeue(self, attempt: FoldAttempt) -> None:
        attempt.transition(AttemptState.PENDING)
        self._queue.appendleft(attempt.fold_id)

    def launches(self) -> list[Launch]:
        """The queued folds that get a worker now, front of the queue first, up to ``limit``."""
        decisions = []
        while self._queue and self._count(AttemptState.PLACING, AttemptState.RUNNING) < self.limit:
            attempt = self._attempts[self._queue.popleft()]
            attempt.transition(AttemptState.PLACING)
            decisions.append(Launch(attempt.fold_id, attempt.number))
        return decisions

    def queued(self) -> list[int]:
        """The folds waiting for a worker, front of the queue first."""
        return list(self._queue)

    def launch(self, fold_id: int) -> Launch:
        """Give ``fold_id`` (queued) a worker now, whatever ``limit`` says: the packed executor
        counts workers itself and launches several folds on one."""
        self._queue.remove(fold_id)
        attempt = self._attempts[fold_id]
        attempt.transition(AttemptState.PLACING)
        return Launch(attempt.fold_id, attempt.number)

    def started(self, fold_id: int) -> Train:
        attempt = self._attempts[fold_id]
        attempt.transition(AttemptState.RUNNING)
        return Train(fold_id, attempt.number)

    def start_failed(self, fold_id: int, error: str) -> EndRun | None:
        """The fold's worker died before its first call: a new worker, unless too many died."""
        attempt = self._attempts[fold_id]
        self._start_failures[fold_id] += 1
        failures = self._start_failures[fold_id]
        if failures > self.policy.max_start_failures:
            attempt.transition(AttemptState.FAILED)
            return EndRun(FoldFailedError(fold_id, f"{failures} workers died while starting ({error})"))
        self._requeue(attempt)
        return None

    def check_placement(
        self,
        waits: Mapping[int, float],
        placed: Callable[[int], bool],
        free: Callable[[], Mapping[str, float]],
    ) -> list[Requeue | EndRun]:
        """``waits``: the seconds each PLACING fold's worker has waited to come up; ``placed``
        and ``free`` (what the cluster has free) are asked only about a worker past its time."""
        decisions: list[Requeue | EndRun] = []
        for fold_id, waited in waits.items():
            if not self.policy.overdue(waited, functools.partial(placed, fold_id)):
                continue
            attempt = self._attempts[fold_id]
            training = self._count(AttemptState.RUNNING)
            if not training:
                attempt.transition(AttemptState.FAILED)
                decisions.append(
                    EndRun(
                        OrchestratorError(
                            placement_timeout_message(
                                fold_id,
                                waited,
                                self.policy.placement_timeout_s,
                                self.shape,
                                free(),
                                self.scale_up,
                            )
                        )
                    )
                )
                return decisions
            self._requeue(attempt)
            self.limit = max(1, self._count(AttemptState.PLACING, AttemptState.RUNNING))
            log.warning(
                "fold %d: no room for its worker after %.0f s; it waits for one of the run's "
                "%d folds in flight (at most %d at a time from now on)",
                fold_id,
                waited,
                training,
                self.limit,
            )
            decisions.append(Requeue(fold_id))
        return decisions

    def succeeded(self, fold_id: int) -> None:
        self._attempts[fold_id].transition(AttemptState.SUCCEEDED)

    def worker_died(self, fold_id: int, pid: int | None, error: str, capacity: int) -> Retry | EndRun:
        """The fold's worker process died while training; ``capacity``: how many folds the
        cluster can hold now (a lost node takes its resources with it)."""
        attempt = self._attempts[fold_id]
        self.limit = min(self.limit, capacity)
        tries, max_retries = attempt.number + 1, self.policy.max_retries
        cause = f"its worker process (pid {pid}) died: {error}"
        if tries > max_retries:
            attempt.transition(AttemptState.FAILED)
            return EndRun(
                FoldFailedError(
                    fold_id,
                    f"{cause}; no retry left after {tries} attempt(s) (max_retries={max_retries})",
                )
            )
        attempt.transition(AttemptState.FAILED_RETRYABLE)
        self._attempts[fold_id] = FoldAttempt(fold_id, tries)
        self._queue.appendleft(fold_id)
        log.warning("fold %d: %s; retrying, attempt %d", fold_id, cause, tries + 1)
        return Retry(
            fold_id,
            tries,
            Notification(
                level="warning",
                kind="fold_retry",
                fold_id=fold_id,
                attempt=tries + 1,
                message=f"fold {fold_id}: {cause}; retrying from the start, "
                f"attempt {tries + 1} of {max_retries + 1}",
            ),
        )

    def fold_raised(self, fold_id: int, message: str, *, cancelled: bool) -> EndRun:
        """A Python exception inside the fold: a retry would fail again. ``cancelled``: it was
        the fold stopping on the run's cancel."""
        attempt = self._attempts[fold_id]
        if cancelled:
            attempt.transition(AttemptState.CANCELLED)
            return EndRun(RunCancelledError(message))
        attempt.transition(AttemptState.FAILED)
        return EndRun(FoldFailedError(fold_id, message))

    def cancel_requested(self) -> EndRun:
        return EndRun(RunCancelledError(f"run {self.run_id} was cancelled"))

    def stop(self) -> None:
        """The run ends early: every attempt still live is cancelled."""
        self._queue.clear()
        for attempt in self._attempts.values():
            if attempt.state in _LIVE:
                attempt.transition(AttemptState.CANCELLED)
