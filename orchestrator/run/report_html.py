"""Writes the self-contained ``report.html`` of a run (with its summary) and of a study (after each trial).

Each is one file: the data as inline JSON, the dashboard's own views (``orchestrator/web``) and
the vendored uPlot as inline scripts, the style inline. It opens from ``file://`` with no network:
its Content-Security-Policy allows no request at all. The page templates and scripts are package
files under ``orchestrator/web``; this module only fills them in.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Required, TypedDict, Unpack

from orchestrator.events.journal import EVENTS_FILE
from orchestrator.messages import sanitize
from orchestrator.run.files import diagnostics_of_fold, read_events
from orchestrator.run.reports import atomic_write_text

__all__ = [
    "REPORT_FILE",
    "StudyLabels",
    "render_page",
    "run_report_data",
    "study_status_of_rows",
    "web_asset",
    "write_run_report",
    "write_study_report",
]

REPORT_FILE = "report.html"
SCRIPTS = ("vendor/uPlot.iife.min.js", "charts.js", "edge.js", "views.js", "report.js")
STYLES = ("vendor/uPlot.min.css", "dashboard.css")
RUN_EVENT_TYPES = frozenset(
    {"training_start", "epoch_metrics", "fold_complete", "notification", "training_complete"}
)
_PLACEHOLDER = re.compile(r"\{\{([A-Z]+)\}\}")
_FINISHED = ("complete", "pruned", "fail")


def web_asset(name: str) -> str:
    """The text of a file under ``orchestrator/web`` (a package file: installed with the package)."""
    return (resources.files("orchestrator") / "web" / name).read_text(encoding="utf-8")


def _jsonable(value: Any) -> Any:
    """numpy scalars and other strays as plain JSON values (numpy's float64 is already a float)."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _inline_json(data: Any) -> str:
    text = json.dumps(sanitize(data), allow_nan=False, default=_jsonable, separators=(",", ":"))
    # inside <script>: no "<" may open a tag; \u003c is the same character to JSON.parse
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _inline_script(name: str) -> str:
    text = web_asset(name)
    if re.search(r"</script|<!--", text, re.IGNORECASE):
        raise ValueError(f"web/{name} contains '</script' or '<!--' and cannot be inlined")
    return text


def render_page(title: str, data: Mapping[str, Any]) -> str:
    """The report template filled in: title, style, data and scripts all inline."""
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    values = {
        "TITLE": title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
        "WRITTEN": written,
        "STYLE": "\n".join(web_asset(name) for name in STYLES).replace("</", "<\\/"),
        "DATA": _inline_json(data),
        "SCRIPT": "\n;\n".join(_inline_script(name) for name in SCRIPTS),
    }
    # one pass: text put in is never searched for placeholders again
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], web_asset("report.html"))


def run_report_data(run_dir: str | Path, summary: Mapping[str, Any], state: str) -> dict[str, Any]:
    """What a run's report draws: its events (epoch curves, notifications), fold diagnostics, summary."""
    folder = Path(run_dir)
    alpha = float(summary.get("config", {}).get("alpha", 0.1))
    diagnostics = {}
    for fold in summary.get("folds", []):
        found = diagnostics_of_fold(folder, int(fold["fold_id"]), alpha)
        if found is not None:
            diagnostics[str(fold["fold_id"])] = found
    return {
        "kind": "run",
        "run_id": summary.get("run_id", folder.name),
        "state": state,
        "created_at": summary.get("created_at"),
        "ended_at": time.time(),
        "events": read_events(folder / EVENTS_FILE, RUN_EVENT_TYPES),
        "diagnostics": diagnostics,
        "summary": summary,
    }


def write_run_report(run_dir: str | Path, summary: Mapping[str, Any], *, state: str = "completed") -> Path:
    """``<run_dir>/report.html`` from the summary, the run's events.jsonl and its predictions CSVs."""
    data = run_report_data(run_dir, summary, state)
    html = render_page(f"Run {data['run_id']} · report", data)
    return atomic_write_text(Path(run_dir) / REPORT_FILE, html)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


class StudyLabels(TypedDict, total=False):
    """What a study report says beside its trials: name, objective, state, planned trials."""

    study: Required[str]
    metric: Required[str]
    direction: Required[str]  # "minimize" or "maximize"
    state: str | None  # default: "completed" once trials_total trials finished, else "running"
    trials_total: int | None


def study_status_of_rows(
    study_dir: str | Path, trials_rows: Iterable[Mapping[Any, Any]], **labels: Unpack[StudyLabels]
) -> dict[str, Any]:
    """The trials.csv rows as ``GET /hpo/{study}`` shapes them (``params`` a dict), with the best trial.

    A trial whose run wrote a report gets ``report``, its path relative to the study folder.
    """
    direction = labels["direction"]
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got direction={direction!r}")
    folder = Path(study_dir)
    trials: list[dict[str, Any]] = []
    for raw in trials_rows:
        row = {str(k): v for k, v in raw.items()}
        trial: dict[str, Any] = {
            k: (None if _missing(v) else v) for k, v in row.items() if not k.startswith("params_")
        }
        trial["params"] = {
            k[len("params_") :]: v for k, v in row.items() if k.startswith("params_") and not _missing(v)
        }
        run_id = trial.get("run_id")
        if isinstance(run_id, str) and (folder / "runs" / run_id / REPORT_FILE).is_file():
            trial["report"] = f"runs/{run_id}/{REPORT_FILE}"
        trials.append(trial)
    trials.sort(key=lambda t: int(t["number"]))
    sign = -1.0 if direction == "maximize" else 1.0
    scored = [t for t in trials if t.get("state") == "complete" and _number(t.get("value")) is not None]
    best = min(scored, key=lambda t: (sign * float(t["value"]), int(t["number"])), default=None)
    done = sum(t.get("state") in _FINISHED for t in trials)
    planned = labels.get("trials_total")
    if planned is not None:
        state = "completed" if done >= planned else "running"
    else:
        state = "running" if any(t.get("state") == "running" for t in trials) else "idle"
    return {
        "study": labels["study"],
        "metric": labels["metric"],
        "direction": direction,
        "state": labels.get("state") or state,
        "trials_done": done,
        "trials_total": max(planned or 0, len(trials)),
        "best": None
        if best is None
        else {
            "trial": best["number"],
            "value": best["value"],
            "params": best["params"],
            "run_id": best.get("run_id"),
        },
        "trials": trials,
    }


def write_study_report(
    study_dir: str | Path,
    trials_rows: Iterable[Mapping[Any, Any]],
    *,
    selection: Mapping[str, Any] | None = None,
    **labels: Unpack[StudyLabels],
) -> Path:
    """``<study_dir>/report.html`` from the trials table (the rows of trials.csv, as dicts) and the
    study's selection diagnostics as ``GET /hpo/{study}`` shows them (``selection``, or none yet)."""
    status = {**study_status_of_rows(study_dir, trials_rows, **labels), "selection": selection}
    html = render_page(f"Study {labels['study']} · report", {"kind": "study", "status": status})
    return atomic_write_text(Path(study_dir) / REPORT_FILE, html)
