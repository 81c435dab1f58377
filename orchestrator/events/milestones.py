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

from pydantic import BaseModel

from orchestrator.messages import EpochMetrics, FoldComplete, Notification, TrainingStart

__all__ = ["RunMilestones", "MILESTONES"]

MILESTONES = (25, 50, 75)


def _notification(kind: str, message: str, fold_id: int | None = None) -> Notification:
    """An info notification, unstamped (the hub adds the envelope)."""
    return Notification(level="info", kind=kind, message=message, fold_id=fold_id)


class RunMilestones:
    """One run's progress (epochs done of all planned) and best val_auc so far."""

    def __init__(self) -> None:
        self.total_epochs = 0
        self.epochs_per_fold = 0
        self.done: set[tuple[int, int]] = set()
        self.sent: set[int] = set()
        self.best_finished_auc: float | None = None  # over the folds finished so far
        self.folds_finished = 0

    def observe(self, message: BaseModel) -> list[Notification]:
        """The notifications ``message`` (the run's next released one) gives rise to."""
        out: list[Notification] = []
        if isinstance(message, TrainingStart):
            self.epochs_per_fold = message.total_epochs
            self.total_epochs = message.total_folds * self.epochs_per_fold
        elif isinstance(message, EpochMetrics):
            self.done.add((message.fold_id, message.epoch))
            out += self._progress()
        elif isinstance(message, FoldComplete):
            # A fold that stopped early counts as all its epochs done.
            self.done.update((message.fold_id, e) for e in range(self.epochs_per_fold))
            out += self._best_fold(message.fold_id, message.val_auc)
            out += self._progress()
        return out

    def _best_fold(self, fold: int, auc: float | None) -> list[Notification]:
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

    def _progress(self) -> list[Notification]:
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
