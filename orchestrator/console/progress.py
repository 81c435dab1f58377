"""Terminal progress for a run: one bar per fold, advanced by the run's own events."""

from __future__ import annotations

import json
import math
import sys
from typing import IO, Any

from tqdm import tqdm

from orchestrator.messages import TERMINAL_TYPES

__all__ = ["ProgressView", "EventFileWriter", "selection_lines", "trial_line"]


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


class ProgressView:
    """Consumes wire events (dicts) and draws per-fold bars with the key metrics."""

    def __init__(self, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._bars: dict[int, tqdm] = {}
        self._total_epochs = 0
        self.final: dict[str, Any] | None = None

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

    def __call__(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.handle(event)

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "dataset_ready":
            self._write(f"dataset ready: {event['size']} samples (min_samples {event['min_samples']})")
        elif kind == "training_start":
            self._total_epochs = event["total_epochs"]
            self._write(
                f"training {event['total_folds']} fold(s) x {event['total_epochs']} epochs"
                f" (cv={'on' if event['use_cv'] else 'off'}), run {event.get('run_id')}"
            )
            for k in range(event["total_folds"]):
                self._bar(k)
        elif kind == "epoch_metrics":
            bar = self._bar(event["fold_id"])
            bar.update(max(0, event["epoch"] + 1 - bar.n))
            bar.set_postfix_str(
                f"loss {_fmt(event['train_loss'])} val_nll {_fmt(event['val_nll'])} "
                f"auc {_fmt(event['val_auc'])} cov {_fmt(event['conformal_coverage'])}",
                refresh=True,
            )
        elif kind == "fold_complete":
            bar = self._bar(event["fold_id"])
            bar.set_description_str(f"fold {event['fold_id']} done ({event['calibration_method']})")
            bar.refresh()
        elif kind == "notification":
            self._write(f"[{event['level']}] {event['message']}")
        elif kind in TERMINAL_TYPES:
            self.close()
            self.final = event
            if kind == "training_complete":
                self._write(
                    f"training complete: {event['folds_completed']} folds, summary {event['summary_path']}"
                )
            else:
                self._write(f"training error: {event['error']}")

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


class EventFileWriter:
    """``--events-out``: every event exactly as sent on /ws, one JSON object per line."""

    def __init__(self, path: str) -> None:
        self._handle = open(path, "w", encoding="utf-8")

    def __call__(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self._handle.write(json.dumps(event, allow_nan=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def trial_line(event: dict[str, Any]) -> str | None:
    """The console line of an ``hpo_trial`` event (None for any other event)."""
    if event.get("type") != "hpo_trial":
        return None
    state, best = event["state"], event.get("best_value")
    if state == "running":
        return f"trial {event['trial']} started {json.dumps(event['params'])}"
    if state == "study_complete":
        return f"study {event['study']} complete: best trial {event['trial']} value {best}"
    line = (
        f"trial {event['trial']} {state} value {event.get('value')} in "
        f"{event.get('duration_seconds') or 0:.1f}s "
        f"[{event['trials_done']}/{event['trials_total']}] best {best}"
    )
    return f"{line}: {event['error']}" if event.get("error") else line


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
