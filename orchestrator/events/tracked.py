"""What the EventHub keeps of one run: its journal, producer order, retries, milestones, and the seqs it started and ended at.

A run is *running* from its first released ``dataset_ready`` or ``training_start`` until its
terminal event (``training_complete``/``training_error``; a study's stream ends with its
``study_complete`` trial message but never starts). ``running_order`` lists the runs running at a
seq, oldest start first: the order a ``/ws`` client that names no run follows them in
(docs/api.md). Pure: the hub calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.events.journal import RunJournal
from orchestrator.events.milestones import RunMilestones
from orchestrator.events.ordering import RetryFilter, RunOrdering
from orchestrator.events.record import EventRecord, Payload
from orchestrator.messages import START_TYPES, TERMINAL_TYPES, HpoTrial

__all__ = ["TrackedRun", "ends_run", "running_order"]


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
    ordering: RunOrdering[Payload]
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

    def running_at(self, seq: int) -> bool:
        """Started at or before ``seq`` and not ended by then."""
        started = self.start_seq is not None and self.start_seq <= seq
        return started and (self.end_seq is None or self.end_seq > seq)


def running_order(runs: Iterable[TrackedRun], seq: int) -> list[str]:
    """The ids of the runs running at ``seq``, oldest start first."""
    running = [(run.start_seq or 0, run.run_id) for run in runs if run.running_at(seq)]
    return [run_id for _, run_id in sorted(running)]
