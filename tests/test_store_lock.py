"""Issue 24, kind 6: a SQLite job store that another process holds write-locked is one line naming
the file and the lock, exit 2, nothing written.

Before, DB Browser with unsaved edits (``BEGIN IMMEDIATE``, sqlitebrowser#1322) made ``train``
print a 60-line SQLAlchemy traceback from the lease's first write and exit 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.errors import StoreError
from orchestrator.store import JobStore
from tests.synthetic import random_walk_ohlcv

ROOT = Path(__file__).resolve().parents[1]
CASES = Path(__file__).parent / "data" / "cases"


@contextmanager
def _held(*command: str) -> Iterator[subprocess.Popen[str]]:
    """A process that holds a SQLite write lock until it is killed (it prints when it holds it)."""
    proc = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "held" in proc.stdout.readline()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _train(tmp_path: Path, reports: Path) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "bars.csv"
    random_walk_ohlcv(400, seed=2).to_csv(data, index=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("ORCHESTRATOR_DB", None)
    command = ["train", "--executor", "local", "--data", str(data), "--folds", "2", "--epochs", "1"]
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *command, "--reports-dir", str(reports)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
    )


def test_the_case_lock_of_db_browser_is_one_line_exit_2(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    db = reports / "orchestrator.db"
    JobStore.open(f"sqlite:///{db}").close()  # the store exists, as after an earlier run
    with _held(str(CASES / "hold_lock.py"), str(db), "120") as holder:
        done = _train(tmp_path, reports)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert line.startswith(f"error: the job store SQLite file {db} is locked for writing")
    assert f"pid {holder.pid} (python" in line and "commit or roll back there" in line
    assert not [p for p in reports.iterdir() if p.name.startswith("run_")]


def test_an_exclusive_lock_on_a_new_file_is_refused_the_same_way(tmp_path: Path) -> None:
    # Another member of the kind: the sqlite3 shell's BEGIN EXCLUSIVE on a file that is not a
    # store yet (rollback journal: even switching it to WAL needs the lock).
    db = tmp_path / "jobs.db"
    hold = (
        "import sqlite3, sys, time\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('BEGIN EXCLUSIVE'); con.execute('CREATE TABLE t (x)')\n"
        "print('held', flush=True); time.sleep(120)\n"
    )
    with _held("-c", hold, str(db)):
        with pytest.raises(StoreError) as caught:
            JobStore.open(f"sqlite:///{db}")
    message = str(caught.value)
    assert message.startswith(f"the job store SQLite file {db} is locked for writing") and "\n" not in message
    JobStore.open(f"sqlite:///{db}").close()  # free again: it opens
