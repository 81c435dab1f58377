"""What the terminal shows of events: one progress bar per fold, the events file, a line per trial."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import IO, Any

from pydantic import BaseModel
from tqdm import tqdm

from orchestrator.events.record import EventRecord
from orchestrator.messages import (
    DatasetReady,
    EpochMetrics,
    FoldComplete,
    HpoTrial,
    Notification,
    TrainingComplete,
    TrainingError,
    TrainingStart,
)

__all__ = ["ProgressView", "EventFileWriter", "selection_lines", "trial_line", "trial_text"]

# What the bars and lines read; other types (live detail) are never parsed.
_SHOWN_TYPES = frozenset(
    {
        "dataset_ready",
        "training_start",
        "epoch_metrics",
        "fold_complete",
        "notification",
        "training_complete",
        "training_error",
    }
)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


class ProgressView:
    """Consumes released events (their typed messages) and draws per-fold bars with the key metrics."""

    def __init__(self, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._bars: dict[int, tqdm] = {}
        self._total_epochs = 0
        self.final: TrainingComplete | TrainingError | None = None

    def _write(self, text: str) -> None:
        if self._enabled:
            tqdm.write(text, file=self._stream)

    def _bar(self, fold_id: int) -> tqdm:
        if fold_id not in self._bars:
            self._bars[fold_id] = tqdm(
                total=self._total_epochs,
                desc=f"fold {fold_id}",
                position=fold_id,
                unit="epoch",
                file=self._stream,
                disable=not self._enabled,
                leave=True,
                dynamic_ncols=True,
            )
        return self._bars[fold_id]

    def __call__(self, events: Sequence[EventRecord]) -> None:
        for event in events:
            if event.type in _SHOWN_TYPES:
                self.handle(event.message)

    def handle(self, message: BaseModel) -> None:
        if isinstance(message, DatasetReady):
            self._write(f"dataset ready: {message.size} samples (min_samples {message.min_samples})")
        elif isinstance(message, TrainingStart):
            self._total_epochs = message.total_epochs
            self._write(
                f"training {message.total_folds} fold(s) x {message.total_epochs} epochs"
                f" (cv={'on' if message.use_cv else 'off'}), run {message.run_id}"
            )
            for k in range(message.total_folds):
                self._bar(k)
        elif isinstance(message, EpochMetrics):
            bar = self._bar(message.fold_id)
            bar.update(max(0, message.epoch + 1 - bar.n))
            bar.set_postfix_str(
                f"loss {_fmt(message.train_loss)} val_nll {_fmt(message.val_nll)} "
                f"auc {_fmt(message.val_auc)} cov {_fmt(message.conformal_coverage)}",
                refresh=True,
            )
        elif isinstance(message, FoldComplete):
            bar = self._bar(message.fold_id)
            bar.set_description_str(f"fold {message.fold_id} done ({message.calibration_method})")
            bar.refresh()
        elif isinstance(message, Notification):
            self._write(f"[{message.level}] {message.message}")
        elif isinstance(message, TrainingComplete):
            self.close()
            self.final = message
            self._write(f"training complete: {message.folds_completed} folds, summary {message.summary_path}")
        elif isinstance(message, TrainingError):
            self.close()
            self.final = message
            self._write(f"training error: {message.error}")

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


class EventFileWriter:
    """``--events-out``: every event exactly as sent on /ws (its record's text), one per line."""

    def __init__(self, path: str) -> None:
        self._handle = open(path, "w", encoding="utf-8")

    def __call__(self, events: Sequence[EventRecord]) -> None:
        self.write_texts([event.text for event in events])

    def write_texts(self, texts: Sequence[str]) -> None:
        """Lines as received (a ``/ws`` client's frames)."""
        for text in texts:
            self._handle.write(text + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def trial_line(message: BaseModel) -> str | None:
    """The console line of an ``hpo_trial`` message (None for any other message)."""
    if not isinstance(message, HpoTrial):
        return None
    return trial_text(
        message.state,
        message.trial,
        study=message.study,
        params=message.params,
        value=message.value,
        duration_seconds=message.duration_seconds,
        trials_done=message.trials_done,
        trials_total=message.trials_total,
        best_value=message.best_value,
        error=message.error,
    )


def trial_text(
    state: str,
    trial: int,
    *,
    study: str = "",
    params: dict[str, Any] | None = None,
    value: float | None = None,
    duration_seconds: float | None = None,
    trials_done: int = 0,
    trials_total: int | str = "?",
    best_value: float | None = None,
    error: str | None = None,
) -> str:
    """One trial's console line: started (running), ended (its state) or the study's end."""
    if state == "running":
        return f"trial {trial} started {json.dumps(params or {})}"
    if state == "study_complete":
        return f"study {study} complete: best trial {trial} value {best_value}"
    line = (
        f"trial {trial} {state} value {value} in {duration_seconds or 0:.1f}s "
        f"[{trials_done}/{trials_total}] best {best_value}"
    )
    return f"{line}: {error}" if error else line


def _num(value: Any, digits: int = 4, sign: bool = False) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def selection_lines(report: dict[str, Any] | None) -> list[str]:
    """A study's closing lines on its edge (docs/edge.md): the verdict with the best trial against
    the naive forecast and its deflated Sharpe ratio, then the selection judgement with PBO.
    ``report``: selection.json, or its view in ``GET /hpo/{study}``; None: no completed trial."""
    if report is None:
        return ["edge: no completed trial to judge"]
    if report.get("error"):
        return [f"edge: no selection diagnostics: {report['error']}"]
    naive = report.get("best_vs_naive") or {}
    inputs = report.get("dsr_inputs") or {}
    edge = (
        f"edge: {report.get('verdict')}: best trial {report.get('best_trial')} vs naive: "
        f"nll_diff {_num(naive.get('nll_diff'), sign=True)}, Brier skill "
        f"{_num(naive.get('brier_skill'), sign=True)}, DM p {_num(report.get('best_dm_p'))}; "
        f"deflated Sharpe {_num(report.get('dsr'), 3)} (SR {_num(inputs.get('sr'))} per row vs "
        f"{_num(report.get('sr0'))} expected of the best of {report.get('n_trials')} trials without skill)"
    )
    blocks = int(report.get("blocks") or 0)
    if report.get("pbo") is None:
        notes = "; ".join(n for n in report.get("notes", []) if n.startswith("pbo"))
        return [edge, f"selection: not judged ({notes or 'no PBO'})"]
    splits = math.comb(blocks, blocks // 2)
    selection = (
        f"selection: {report.get('selection')}: PBO {_num(report.get('pbo'), 3)} over {splits} CSCV "
        f"splits ({blocks} blocks of {report.get('rows')} shared rows, {len(report.get('pbo_trials') or [])} trials)"
    )
    return [edge, selection]
