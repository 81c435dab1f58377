"""orchestrator.run.report_html: one self-contained file per run and study, its data intact and inert."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.run.report_html import (
    REPORT_FILE,
    render_page,
    study_status_of_rows,
    write_run_report,
    write_study_report,
)
from orchestrator.run.reports import write_predictions_csv
from tests.test_run_files import fake_predictions


def inline_data(html: str) -> Any:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_a_page_is_self_contained_and_its_data_cannot_close_the_script() -> None:
    hostile = "</script><script>alert(1)</script><!-- & more"
    html = render_page("Run <x>", {"kind": "run", "error": hostile, "value": math.nan})
    assert inline_data(html) == {"kind": "run", "error": hostile, "value": None}
    assert "<script>alert(1)" not in html and "<title>Run &lt;x&gt;" in html
    # everything inline: no file or address the page would fetch
    assert not re.search(r"""<(script|link|img|iframe)[^>]*\s(src|href)=["'](?!data:)""", html, re.I)
    assert 'http-equiv="Content-Security-Policy"' in html and "connect-src 'none'" in html
    for name in ("uPlot", "Views", "RunView", "StudyView"):
        assert name in html
    assert re.search(r"\{\{[A-Z]+\}\}", html) is None  # every placeholder filled


def test_study_rows_become_the_status_the_dashboard_draws(tmp_path: Path) -> None:
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / REPORT_FILE).write_text("<html></html>")
    rows = [
        {
            "number": 1,
            "state": "complete",
            "value": 0.62,
            "run_id": "r1",
            "params_lr": 0.01,
            "params_depth": 2,
        },
        {
            "number": 0,
            "state": "complete",
            "value": 0.70,
            "run_id": "r0",
            "params_lr": 0.001,
            "params_depth": math.nan,
        },
        {
            "number": 2,
            "state": "pruned",
            "value": math.nan,
            "run_id": None,
            "params_lr": 0.1,
            "params_depth": 3,
        },
        {"number": 3, "state": "fail", "value": None, "error": "boom", "params_lr": 0.2, "params_depth": 1},
    ]
    status = study_status_of_rows(tmp_path, rows, study="s", metric="val_auc", direction="maximize")
    assert [t["number"] for t in status["trials"]] == [0, 1, 2, 3]
    first = status["trials"][0]
    assert first["params"] == {"lr": 0.001} and "params_lr" not in first
    assert status["trials"][1]["report"] == "runs/r1/report.html" and "report" not in first
    assert status["trials"][2]["value"] is None
    assert status["best"] == {"trial": 0, "value": 0.70, "params": {"lr": 0.001}, "run_id": "r0"}
    assert status["trials_done"] == 4 and status["state"] == "idle"
    minimized = study_status_of_rows(tmp_path, rows, study="s", metric="val_nll", direction="minimize")
    assert minimized["best"]["trial"] == 1
    with pytest.raises(ValueError, match="direction='up'"):
        study_status_of_rows(tmp_path, rows, study="s", metric="m", direction="up")


def test_write_study_report_replaces_the_file(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"number": 0, "state": "running", "value": None}]
    path = write_study_report(
        tmp_path, rows, study="s", metric="val_nll", direction="minimize", trials_total=4
    )
    first = inline_data(path.read_text())["status"]
    assert first["state"] == "running" and first["trials_total"] == 4
    rows = [{"number": 0, "state": "complete", "value": 1.5}]
    write_study_report(tmp_path, rows, study="s", metric="val_nll", direction="minimize", trials_total=1)
    second = inline_data(path.read_text())["status"]
    assert second["state"] == "completed" and second["best"]["value"] == 1.5
    write_study_report(
        tmp_path, rows, study="s", metric="val_nll", direction="minimize", trials_total=3, state="cancelled"
    )
    assert inline_data(path.read_text())["status"]["state"] == "cancelled"
    assert sorted(p.name for p in tmp_path.iterdir()) == [REPORT_FILE]  # no temporary file left


def test_run_report_has_curves_notifications_diagnostics_and_summary(tmp_path: Path) -> None:
    for fold in (0, 1):
        write_predictions_csv(tmp_path, fold, fake_predictions(seed=fold, fold_id=fold))
    events = [
        {"type": "dataset_ready", "seq": 1, "size": 200, "min_samples": 100},
        {"type": "training_start", "seq": 2, "total_folds": 2, "total_epochs": 2, "use_cv": True},
        {"type": "epoch_metrics", "seq": 3, "fold_id": 0, "epoch": 0, "val_loss": 1.0},
        {"type": "batch_progress", "seq": 4, "fold_id": 0},
        {"type": "notification", "seq": 5, "level": "info", "kind": "progress", "message": "50%"},
        {"type": "fold_complete", "seq": 6, "fold_id": 0, "calibration_method": "raw"},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    summary = {
        "run_id": "run_x",
        "created_at": 1.0,
        "config": {"alpha": 0.2},
        "folds": [{"fold_id": 0}, {"fold_id": 1}],
    }
    path = write_run_report(tmp_path, summary)
    assert path == tmp_path / REPORT_FILE
    data = inline_data(path.read_text())
    assert data["kind"] == "run" and data["run_id"] == "run_x" and data["state"] == "completed"
    assert [e["seq"] for e in data["events"]] == [2, 3, 5, 6]  # no dataset_ready, no heavy types
    assert sorted(data["diagnostics"]) == ["0", "1"]
    assert data["diagnostics"]["1"]["coverage"]["target"] == pytest.approx(0.8)
    assert data["summary"] == summary
