"""Notifications derived from a run's own events: progress milestones and a new best val_auc.

A pure tracker: the EventHub feeds it each released event of a run, in order, and releases what
it returns right after. So every client (and ``events.jsonl``) sees the same notifications,
whoever produced the underlying events.
"""

from __future__ import annotations

from typing import Any

from orchestrator.messages import Notification, to_wire, without_envelope

__all__ = ["RunMilestones", "MILESTONES"]

MILESTONES = (25, 50, 75)

Event = dict[str, Any]


def _notification(kind: str, message: str, fold_id: int | None = None) -> Event:
    """An info notification as an unstamped wire dict (the hub adds the envelope)."""
    return without_envelope(
        to_wire(Notification(level="info", kind=kind, message=message, fold_id=fold_id))
    )


class RunMilestones:
    """One run's progress (epochs done of all planned) and best val_auc so far."""

    def __init__(self) -> None:
        self.total_epochs = 0
        self.epochs_per_fold = 0
        self.done: set[tuple[int, int]] = set()
        self.sent: set[int] = set()
        self.best_auc: float | None = None

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
            auc = event.get("val_auc")
            if auc is not None:
                if self.best_auc is not None and auc > self.best_auc:
                    out.append(_notification(
                        "best_val_auc",
                        f"new best val_auc {auc:.4f} (fold {fold}, epoch {epoch}; was {self.best_auc:.4f})",
                        fold,
                    ))  # fmt: skip
                if self.best_auc is None or auc > self.best_auc:
                    self.best_auc = auc
            out += self._progress()
        elif kind == "fold_complete":
            # A fold that stopped early counts as all its epochs done.
            fold = int(event["fold_id"])
            self.done.update((fold, e) for e in range(self.epochs_per_fold))
            out += self._progress()
        return out

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
