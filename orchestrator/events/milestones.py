"""Notifications derived from a run's own events: progress milestones and a fold's new best val_auc.

A pure tracker: the EventHub feeds it each released event of a run, in order, and releases what
it returns right after. So every client (and ``events.jsonl``) sees the same notifications,
whoever produced the underlying events.

A notification interrupts a person, so each says something worth it (docs/api.md, rule):

- ``progress``: once each when 25, 50 and 75 % of the run's planned epochs are done;
- ``best_val_auc``: when a fold finishes (``fold_complete``) and the validation AUC of its final
  model beats 0.5 (chance) and every fold finished before it. At most one per fold, never during
  a fold's epochs: per-epoch AUCs of different folds score different validation segments, and a
  fold's epoch-to-epoch wiggles are noise, not news.
"""

from __future__ import annotations

from typing import Any

from orchestrator.messages import Notification, to_wire, without_envelope

__all__ = ["RunMilestones", "MILESTONES"]

MILESTONES = (25, 50, 75)

Event = dict[str, Any]


def _notification(kind: str, message: str, fold_id: int | None = None) -> Event:
    """An info notification as an unstamped wire dict (the hub adds the envelope)."""
    return without_envelope(to_wire(Notification(level="info", kind=kind, message=message, fold_id=fold_id)))


class RunMilestones:
    """One run's progress (epochs done of all planned) and best val_auc so far."""

    def __init__(self) -> None:
        self.total_epochs = 0
        self.epochs_per_fold = 0
        self.done: set[tuple[int, int]] = set()
        self.sent: set[int] = set()
        self.best_finished_auc: float | None = None  # over the folds finished so far
        self.folds_finished = 0

    def observe(self, event: Event) -> list[Event]:
        """The notifications ``event`` (the run's next released one) gives rise to."""
        kind = event.get("type")
        out: list[Event] = []
        if kind == "training_start":
            self.epochs_per_fold = int(event["total_epochs"])
            self.total_epochs = int(event["total_folds"]) * self.epochs_per_fold
        elif kind == "epoch_metrics":
            fold, epoch = int(event["fold_id"]), int(event["epoch"])
            self.done.add((fold, epoch))
            out += self._progress()
        elif kind == "fold_complete":
            # A fold that stopped early counts as all its epochs done.
            fold = int(event["fold_id"])
            self.done.update((fold, e) for e in range(self.epochs_per_fold))
            out += self._best_fold(fold, event.get("val_auc"))
            out += self._progress()
        return out

    def _best_fold(self, fold: int, auc: float | None) -> list[Event]:
        self.folds_finished += 1
        previous = self.best_finished_auc
        if auc is None:
            return []
        if previous is None or auc > previous:
            self.best_finished_auc = auc
        if auc <= 0.5 or (previous is not None and auc <= previous):
            return []
        was = f"best before {previous:.4f}" if previous is not None else "the first above 0.5"
        return [
            _notification(
                "best_val_auc",
                f"fold {fold} finished with val_auc {auc:.4f}, the best of {self.folds_finished} "
                f"folds finished ({was}; chance is 0.5)",
                fold,
            )
        ]

    def _progress(self) -> list[Event]:
        if not self.total_epochs:
            return []
        done = min(len(self.done), self.total_epochs)
        out = []
        for pct in MILESTONES:
            if pct not in self.sent and done * 100 >= pct * self.total_epochs:
                self.sent.add(pct)
                out.append(
                    _notification("progress", f"run {pct}% complete ({done}/{self.total_epochs} epochs)")
                )
        return out
