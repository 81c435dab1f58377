"""What the EventHub keeps of its runs: each one's journal, producer order, retries, milestones, and the seqs it started and ended at.

A run is *running* from its first released ``dataset_ready`` or ``training_start`` until its
terminal event (``training_complete``/``training_error``; a study's stream ends with its
``study_complete`` trial message but never starts). ``running_order`` lists the runs running at a
seq, oldest start first: the order a ``/ws`` client that names no run follows them in
(docs/api.md). ``TrackedRuns`` holds them by id and forgets the oldest ended ones past
``max_runs``; ``TrackedRun.replay`` rebuilds one from its recorded events (a hub that Ray
restarted). Pure: the hub calls it under its lock.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from orchestrator.events.journal import RunJournal
from orchestrator.events.milestones import RunMilestones
from orchestrator.events.ordering import RetryFilter, RunOrdering
from orchestrator.events.record import EventRecord, Payload
from orchestrator.messages import START_TYPES, TERMINAL_TYPES, HpoTrial

__all__ = ["TrackedRun", "TrackedRuns", "ends_run", "running_order"]

logger = logging.getLogger(__name__)

_FORGOTTEN_RUNS_KEPT = 1_000


def ends_run(record: EventRecord) -> bool:
    """Whether a released event is the last of its run (a terminal event, or a study's end)."""
    if record.type in TERMINAL_TYPES:
        return True
    message = record.message if record.type == "hpo_trial" else None
    return isinstance(message, HpoTrial) and message.state == "study_complete"


@dataclass
class TrackedRun:
    """The hub's bookkeeping of one run."""

    run_id: str
    journal: RunJournal
    ordering: RunOrdering[tuple[int, Payload]]  # (pseq, payload): a release knows its origin
    registered: bool = False
    first_seq: int | None = None  # of its first released event, whatever its type
    start_seq: int | None = None  # of its first dataset_ready or training_start
    end_seq: int | None = None  # of its terminal event
    retries: RetryFilter = field(default_factory=RetryFilter)
    milestones: RunMilestones = field(default_factory=RunMilestones)

    @property
    def ended(self) -> bool:
        return self.end_seq is not None

    def released(self, record: EventRecord) -> None:
        """Note a record of this run that the hub just released."""
        seq = record.seq
        if self.first_seq is None:
            self.first_seq = seq
        if self.start_seq is None and record.type in START_TYPES:
            self.start_seq = seq
        if self.end_seq is None and ends_run(record):
            self.end_seq = seq

    def replay(self, records: Iterable[EventRecord]) -> None:
        """Take this run's recorded events, in order, as if just released: seqs, retry keys and
        milestones (their notifications are among the records already)."""
        for record in records:
            self.released(record)
            if record.type in _READ_ON_REPLAY:
                self.retries.remember(record.message)
                self.milestones.observe(record.message)

    def running_at(self, seq: int) -> bool:
        """Started at or before ``seq`` and not ended by then."""
        started = self.start_seq is not None and self.start_seq <= seq
        return started and (self.end_seq is None or self.end_seq > seq)


def running_order(runs: Iterable[TrackedRun], seq: int) -> list[str]:
    """The ids of the runs running at ``seq``, oldest start first."""
    running = [(run.start_seq or 0, run.run_id) for run in runs if run.running_at(seq)]
    return [run_id for _, run_id in sorted(running)]


# What ``replay`` reads of a record beyond its envelope (retry keys and milestones).
_READ_ON_REPLAY = frozenset(
    {"training_start", "epoch_metrics", "fold_complete", "prediction_delta", "batch_progress"}
)


class TrackedRuns:
    """The hub's runs by id; past ``max_runs``, the oldest ended ones are forgotten (their held
    events stay in the history; a forgotten run's stragglers are dropped)."""

    def __init__(self, max_runs: int, max_pending: int, on_io_error: Callable[[], None]) -> None:
        self._max_runs = max_runs
        self._max_pending = max_pending
        self._on_io_error = on_io_error
        self._runs: dict[str, TrackedRun] = {}
        self._forgotten: deque[str] = deque(maxlen=_FORGOTTEN_RUNS_KEPT)

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[TrackedRun]:
        return iter(self._runs.values())

    def get(self, run_id: str) -> TrackedRun | None:
        return self._runs.get(run_id)

    def forgotten(self, run_id: str) -> bool:
        return run_id in self._forgotten

    def remember(self, run_id: str) -> TrackedRun:
        """The run, tracked again if it was forgotten, new if unknown."""
        if run_id in self._forgotten:
            self._forgotten.remove(run_id)
        return self._runs.get(run_id) or self.new(run_id)

    def new(self, run_id: str) -> TrackedRun:
        run = TrackedRun(run_id, RunJournal(run_id, None, self._on_io_error), RunOrdering(self._max_pending))
        self._runs[run_id] = run
        self._forget_old()
        return run

    def restore(
        self, run_id: str, run_dir: str | None, records: list[EventRecord], positions: dict[str, int]
    ) -> None:
        """A run rebuilt from its ``records`` in the store, its producers continued at ``positions``
        (next pseqs), its ``events.jsonl`` rewritten to exactly those records: events released but
        not yet stored when the hub died come again from their producers, whose calls were not
        acknowledged."""
        run = self.remember(run_id)
        run.registered = True
        run.journal.run_dir = run_dir
        run.replay(records)
        for producer, next_pseq in positions.items():
            run.ordering.resume(producer, next_pseq)
        if not run.ended:  # an ended run's file is whole; an unfinished one may hold more
            run.journal.rewrite([record.text for record in records])

    def _forget_old(self) -> None:
        excess = len(self._runs) - self._max_runs
        if excess <= 0:
            return
        for run in [r for r in self._runs.values() if r.ended][:excess]:
            run.journal.close()
            del self._runs[run.run_id]
            self._forgotten.append(run.run_id)
        if len(self._runs) > self._max_runs:
            logger.warning(
                "EventHub holds %d runs, more than max_runs=%d, because none more has ended",
                len(self._runs),
                self._max_runs,
            )
