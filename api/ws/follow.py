"""Which run a ``/ws`` client that names none follows: the oldest running run, then the next, by the rule of docs/api.md.

Pure: ``RunFollow`` is fed the events in seq order (``judge``) and says of each whether the
client gets it; the connection carries that out, asks the hub which runs are running when the
followed run ends, and replays the next one's history (``enter``).

The rule. A *training run* is one that released a ``dataset_ready`` or ``training_start``; it is
*running* from that event until its terminal event, and runs are ordered by that first seq.

- A training run's events (the types of ``messages.RUN_TYPES``, and ``notification`` under a
  training run's id) reach the client for the run it follows only. It follows the oldest
  running run; when that one's terminal event has been sent, the oldest run still running then
  (its history replayed first); when none runs, the next run that starts.
- Every other message goes to the client as it comes: ``chart_update``, ``hpo_trial``, a
  notification of no training run (``data_feed``, a study), ``history_gap``. So does, while the
  client follows no run, the terminal event of a run that never started (refused before its
  data loaded, cancelled while queued).
- Resuming (``?since=N``, N the seq of the last message received) rebuilds where the client was
  from that message (``resume``): after a run's terminal event, the next run is replayed again;
  after an event of a run replayed ahead of older runs still running then (the client got its
  history after a switch), the rest of that run's history comes while the messages up to where
  the older runs ended, which the client already had, are left out.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from orchestrator.events.record import EventRecord
from orchestrator.messages import RUN_TYPES, START_TYPES, TERMINAL_TYPES

__all__ = ["RunFollow", "Verdict"]


class Verdict(enum.Enum):
    SEND = "send"
    SKIP = "skip"
    END = "end"  # the followed run's terminal event: send it, then follow the next run


class RunFollow:
    """The run a client follows (``following``, None while none runs) and the runs it knows
    are training runs (a notification under one of those is that run's event)."""

    def __init__(self) -> None:
        self.following: str | None = None
        # older runs still running that the followed run's history was sent ahead of (resume)
        self.ahead: set[str] = set()
        self._training: set[str] = set()

    def enter(self, running: Sequence[str]) -> str | None:
        """Follow the oldest of ``running`` (ids, oldest first), or none; returns it."""
        self._training.update(running)
        self.following = running[0] if running else None
        self.ahead = set()
        return self.following

    def resume(self, running: Sequence[str], last: EventRecord | None) -> bool:
        """Where a client resuming after ``last`` (the event with its ``since`` as seq; None if
        unknown) was, given the runs running at that seq. True when ``last`` ended a run: the
        followed run's history up to that seq is to be replayed first."""
        self.enter(running)
        if last is None:
            return False
        kind, run_id = last.type, last.run_id
        if kind in TERMINAL_TYPES:
            return self.following is not None
        if run_id in running[1:] and self.is_run_event(kind, run_id):
            self.following = run_id
            self.ahead = set(running[: list(running).index(run_id)])
        return False

    def is_run_event(self, kind: str, run_id: str | None) -> bool:
        """Whether a message of this type and run belongs to a training run."""
        return kind in RUN_TYPES or (kind == "notification" and run_id in self._training)

    def judge(self, kind: str, run_id: str | None) -> Verdict:
        """What to do with the next event in seq order (``kind`` its type)."""
        if kind in START_TYPES and run_id is not None:
            self._training.add(run_id)
        if not self.is_run_event(kind, run_id):
            return Verdict.SKIP if self.ahead else Verdict.SEND
        if run_id in self.ahead:
            if kind in TERMINAL_TYPES:
                self.ahead.discard(run_id)
            return Verdict.SKIP
        if self.following is None:
            if kind in START_TYPES:
                self.following = run_id
                return Verdict.SEND
            return Verdict.SEND if kind in TERMINAL_TYPES else Verdict.SKIP
        if run_id != self.following:
            return Verdict.SKIP
        if kind in TERMINAL_TYPES:
            self.following = None
            self.ahead = set()
            return Verdict.END
        return Verdict.SEND
