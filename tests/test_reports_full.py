"""Issue 24, kind 8: the reports folder's disk fills up mid-run. One line naming the folder, the run
failed with that reason, nothing half-written left as if complete.

Before, the run ended with ``OSError: [Errno 28] No space left on device`` naming no file, a
traceback, and a ``summary.json`` left behind by a run that failed at ``report.html`` (as NNI
users saw, microsoft/nni#2317). The disk is made full by wrapping ``os.fdopen`` so that writing
one chosen file raises ENOSPC (or EDQUOT) the way the kernel would, through the real writer; and,
where this process may mount one, by a real tmpfs too small for a fold's predictions.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import config_from_mapping
from orchestrator.events.hub import EventHub
from orchestrator.events.journal import RunJournal
from orchestrator.events.publish import InProcessSink
from orchestrator.events.recorder import open_recorder
from orchestrator.execution.local import LocalExecutor
from orchestrator.lifecycle import Run, RunState
from orchestrator.run.driver import execute_run, new_run
from tests.synthetic import random_walk_ohlcv


class _FullDisk(io.StringIO):
    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def write(self, text: str) -> int:
        raise OSError(self.code, os.strerror(self.code))


def _fill_disk_at(monkeypatch: pytest.MonkeyPatch, name_prefix: str, code: int = errno.ENOSPC) -> None:
    """Writing the temporary file of ``name_prefix`` (``summary.json``, ...) fails with ``code``."""
    real = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        target = (
            os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else ""
        )
        if target.startswith(f".{name_prefix}"):
            os.close(fd)
            return _FullDisk(code)
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)


def _run(tmp_path: Path, reports: Path) -> tuple[Run, list[dict[str, Any]]]:
    data = tmp_path / "bars.csv"
    random_walk_ohlcv(400, seed=9).to_csv(data, index=False)
    config = config_from_mapping(
        {
            "data": str(data),
            "reports_dir": str(reports),
            "executor": "local",
            "folds": 2,
            "epochs": 1,
            "min_samples": 200,
            "lookback": 10,
            "batch_size": 64,
        }
    )
    events: list[dict[str, Any]] = []
    run = new_run(config)
    execute_run(run, InProcessSink(listener=events.extend), LocalExecutor())
    return run, events


def _assert_nothing_half_written(run: Run) -> None:
    files = [p for p in Path(run.run_dir).rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], files
    assert not (Path(run.run_dir) / "summary.json").exists()
    assert not (Path(run.run_dir) / "report.html").exists()


@pytest.mark.parametrize("stage", ["predictions_fold_1_", "summary.json", "report.html"])
def test_a_full_disk_fails_the_run_naming_the_folder_and_leaves_no_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stage: str
) -> None:
    _fill_disk_at(monkeypatch, stage)
    with caplog.at_level(logging.WARNING):
        run, events = _run(tmp_path, tmp_path / "reports")
    assert run.state is RunState.FAILED
    folder = Path(run.run_dir) / ("predictions" if stage.startswith("predictions") else "")
    expected = (
        f"the reports folder is full: no space left on the device that holds {str(folder).rstrip('/')} "
        f"(writing {stage}"
    )
    assert run.error is not None and run.error.startswith(expected), run.error
    assert "--reports-dir" in run.error and "\n" not in run.error
    assert events[-1]["type"] == "training_error" and events[-1]["error"] == run.error
    assert not [r for r in caplog.records if r.exc_info], "a full disk is not a bug: no traceback"
    _assert_nothing_half_written(run)
    if stage == "predictions_fold_1_":  # the fold written before the disk filled is a whole file
        (written,) = (Path(run.run_dir) / "predictions").glob("predictions_fold_0_*.csv")
        assert written.read_text().count("\n") > 10


def test_a_used_up_quota_is_said_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another member of the kind: EDQUOT, a per-user quota on a shared disk.
    _fill_disk_at(monkeypatch, "summary.json", errno.EDQUOT)
    run, _ = _run(tmp_path, tmp_path / "reports")
    assert run.state is RunState.FAILED
    assert run.error is not None and run.error.startswith(
        "the reports folder is full: no quota left on the disk"
    )
    _assert_nothing_half_written(run)


def test_the_events_file_logs_one_line_and_keeps_only_whole_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = RunJournal("r", str(tmp_path), lambda: None)
    journal.write(['{"seq": 1}'])
    journal.flush()
    assert journal._writer is not None
    journal._writer.write('{"seq": 2, "torn')  # what a write cut short by the disk leaves
    journal._writer.flush()

    def full(text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    journal._writer.write = full  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="orchestrator.events.journal"):
        journal.write(['{"seq": 3}'])
    (record,) = caplog.records
    assert record.exc_info is None and "No space left on device" in record.getMessage()
    assert (tmp_path / "events.jsonl").read_text() == '{"seq": 1}\n'


def _mount_tiny_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


def test_a_real_tmpfs_too_small_for_the_predictions(tmp_path: Path) -> None:
    reports = tmp_path / "tiny"
    if not _mount_tiny_tmpfs(reports, "48k"):
        pytest.skip("needs root and a mountable tmpfs; the ENOSPC tests above cover the writer")
    try:
        run, _ = _run(tmp_path, reports)
        assert run.state is RunState.FAILED
        assert run.error is not None and run.error.startswith(
            f"the reports folder is full: no space left on the device that holds {run.run_dir}/predictions"
        )
        _assert_nothing_half_written(run)
    finally:
        subprocess.run(["umount", str(reports)], check=True)


def test_a_store_on_the_full_disk_is_one_line_and_no_tight_retry_loop_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The job store lives in the reports folder by default: its writes fail on the same disk.
    recorder = open_recorder(f"sqlite:///{tmp_path / 'orchestrator.db'}")
    hub = EventHub(recorder=recorder)

    def full(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(recorder.store, "append", full)
    with caplog.at_level(logging.WARNING, logger="orchestrator.events.recorder"):
        for pseq in range(5):
            hub.publish(
                "a",
                "driver",
                pseq,
                {"type": "notification", "level": "info", "kind": "x", "message": str(pseq)},
            )
        recorder.close(timeout=1.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if m.startswith("cannot write")]) == 1, lines
    assert "database or disk is full" in lines[0] and "\n" not in lines[0]
    assert [m for m in lines if "could not be written to the job store" in m] == [
        f"5 events could not be written to the job store SQLite file {tmp_path / 'orchestrator.db'} before closing it"
    ]
    assert recorder.stats()["write_errors"] < 20  # retried with a growing delay, not in a loop
