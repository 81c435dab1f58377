"""The job store on SQLite and, where its binaries are installed, on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from orchestrator.errors import StoreError
from orchestrator.events.record import EventRecord
from orchestrator.store import JobStore, LeaseHeldError, default_url
from orchestrator.store.lease import Holder, holder_gone
from orchestrator.store.schema import SCHEMA_VERSION, schema_version
from tests.made_events import epoch, fold_done, record, seqs, start
from tests.pg_server import postgres_server


@pytest.fixture(scope="module")
def pg_databases() -> Iterator[Callable[[], str]]:
    yield from postgres_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orchestrator.db'}"
    fresh: Callable[[], str] = request.getfixturevalue("pg_databases")
    return fresh()


@pytest.fixture
def store(url: str) -> Iterator[JobStore]:
    opened = JobStore.open(url)
    yield opened
    opened.close()


def _run(run_id: str, created_at: float, epochs: int = 3) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "state": "pending",
        "config": json.dumps({"epochs": epochs}),
        "priority": 0,
        "created_at": created_at,
        "run_dir": f"reports/{run_id}",
        "owner": "me",
    }


def _event(seq: int, run_id: str, message: dict[str, Any]) -> EventRecord:
    return record(seq, run_id, message, ts=1000.0 + seq)


def test_events_are_read_back_exactly_as_stored_after_any_seq(store: JobStore) -> None:
    batch = [_event(seq, "r1" if seq % 2 else "r2", epoch(0, seq, val_auc=None)) for seq in range(1, 21)]
    store.append([_run("r1", 1.0), _run("r2", 2.0)], batch)
    assert store.last_seq() == 20
    for since in range(0, 21):
        got = store.events_since(since)
        assert seqs(got) == list(range(since + 1, 21))
        assert got == batch[since:]  # the same records: envelope and text, byte for byte
    assert seqs(store.events_since(0, run_id="r2", limit=3)) == [2, 4, 6]
    assert seqs(store.events_since(5, before=9)) == [6, 7, 8]
    assert store.events_since(0, types=frozenset({"training_start"})) == []


def test_a_duplicate_seq_is_refused_and_nothing_of_its_batch_is_kept(store: JobStore) -> None:
    store.append([_run("r1", 1.0)], [_event(1, "r1", {"type": "dataset_ready", "size": 5, "min_samples": 1})])
    with pytest.raises(IntegrityError):
        store.append([], [_event(2, "r1", start(1, 1)), _event(1, "r1", start(1, 1))])
    assert seqs(store.events_since(0)) == [1]


def test_a_run_row_follows_its_events(store: JobStore) -> None:
    store.append([_run("r1", 1.0, epochs=2)], [])
    assert store.get_run("r1")["state"] == "pending"  # type: ignore[index]
    store.append(
        [],
        [
            _event(1, "r1", start(2, 2)),
            _event(2, "r1", epoch(0, 1, val_auc=0.5)),
            _event(3, "r1", epoch(1, 1, val_auc=0.4)),
        ],
    )
    store.append(
        [],
        [
            _event(4, "r1", epoch(0, 2, val_auc=0.6)),
            _event(5, "r1", fold_done(0)),
            _event(6, "r1", {"type": "training_complete", "folds_completed": 2, "summary_path": "s.json"}),
        ],
    )
    snap = store.get_run("r1")
    assert snap is not None
    assert snap["state"] == "completed" and snap["summary_path"] == "s.json"
    assert snap["started_at"] == 1001.0 and snap["ended_at"] == 1006.0
    assert snap["progress"] == {"folds_total": 2, "folds_done": 1, "epochs_total": 4, "epochs_done": 3}
    assert snap["latest_metrics"]["0"]["epoch"] == 2 and snap["latest_metrics"]["1"]["val_auc"] == 0.4
    assert "seq" not in snap["latest_metrics"]["0"]
    assert store.get_run("nope") is None


def test_runs_are_listed_newest_first_in_pages(store: JobStore) -> None:
    store.append([_run(f"r{i:02d}", float(i)) for i in range(12)], [])
    first = store.list_runs(limit=5)
    assert [r["run_id"] for r in first] == ["r11", "r10", "r09", "r08", "r07"]
    second = store.list_runs(limit=5, before=first[-1]["run_id"])
    assert [r["run_id"] for r in second] == ["r06", "r05", "r04", "r03", "r02"]
    assert [r["run_id"] for r in store.list_runs(limit=5, before="r02")] == ["r01", "r00"]
    with pytest.raises(KeyError):
        store.list_runs(before="unknown")
    with pytest.raises(ValueError, match="limit"):
        store.list_runs(limit=1001)
    assert store.unfinished_runs() == [(f"r{i:02d}", f"reports/r{i:02d}", "me") for i in range(12)]


def test_recording_a_run_twice_keeps_the_first_row(store: JobStore) -> None:
    store.append([_run("r1", 1.0)], [_event(1, "r1", start(1, 3))])
    store.append([_run("r1", 5.0)], [])
    snap = store.get_run("r1")
    assert snap is not None and snap["created_at"] == 1.0 and snap["state"] == "running"


def test_the_lease_refuses_a_second_live_writer_naming_the_holder(store: JobStore) -> None:
    me = f"host-a:{os.getpid()}:aaa"
    assert store.acquire_lease(me) is None
    assert store.acquire_lease(me) is None  # ours already
    with pytest.raises(LeaseHeldError, match="host-a:") as caught:
        store.acquire_lease("host-b:1:bbb")
    assert me in str(caught.value)
    assert store.heartbeat(me)
    assert not store.heartbeat("host-b:1:bbb")
    store.release_lease(me)
    assert store.acquire_lease("host-b:1:bbb") is None  # released: nothing to mark


def test_a_gone_holder_is_replaced_and_returned(store: JobStore) -> None:
    from orchestrator.store.schema import lease

    store.acquire_lease("far-host:1:old")
    with store.engine.begin() as conn:
        conn.execute(update(lease).values(heartbeat=0.0))  # stale for ages
    previous = store.acquire_lease("host-b:2:new")
    assert previous is not None and previous.owner == "far-host:1:old"
    holder = store.lease_holder()
    assert holder is not None and holder.owner == "host-b:2:new"


def test_a_holder_on_this_host_whose_process_died_is_gone_at_once() -> None:
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = 100.0
    assert holder_gone(Holder(f"{socket.gethostname()}:{dead.pid}:x", 0.0, now), now)
    assert not holder_gone(Holder(f"{socket.gethostname()}:{os.getpid()}:x", 0.0, now), now)
    assert not holder_gone(Holder(f"elsewhere:{dead.pid}:x", 0.0, now), now)  # other host: heartbeat only
    assert holder_gone(Holder(f"elsewhere:{dead.pid}:x", 0.0, now), now + 31)


def test_a_store_of_a_newer_schema_is_refused(url: str) -> None:
    JobStore.open(url).close()
    store = JobStore.open(url)
    with store.engine.begin() as conn:
        conn.execute(update(schema_version).values(version=SCHEMA_VERSION + 1))
    store.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        JobStore.open(url)


# ---- bad input (SQLite files and URLs) -------------------------------------------------------


def test_a_malformed_url_is_named(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="'not a url'"):
        JobStore.open("not a url")
    with pytest.raises(StoreError, match="no driver"):
        JobStore.open("nosuchdb://x/y")


def test_an_unreachable_server_is_named_without_its_password() -> None:
    with pytest.raises(StoreError, match=r"postgres:\*\*\*@127.0.0.1:1/db") as caught:
        JobStore.open("postgresql+psycopg://postgres:secret@127.0.0.1:1/db")
    assert "secret" not in str(caught.value)


def test_a_corrupt_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    junk = b"this is not a database" * 200
    path.write_bytes(junk)
    with pytest.raises(StoreError, match=str(path)):
        JobStore.open(f"sqlite:///{path}")
    assert path.read_bytes() == junk


def test_a_locked_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.store.engine as engine_module

    path = tmp_path / "orchestrator.db"
    JobStore.open(f"sqlite:///{path}").close()
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_MS", 100)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match=f"{path}.*locked"):
            JobStore.open(f"sqlite:///{path}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_read_only_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root may write anyway: the check itself is what is tested
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == folder else real_access(p, m))
    try:
        with pytest.raises(StoreError, match=f"{folder} is not writable"):
            JobStore.open(f"sqlite:///{folder / 'orchestrator.db'}")
        assert not (folder / "orchestrator.db").exists()
    finally:
        folder.chmod(0o755)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        JobStore.open(f"sqlite:///{tmp_path / 'nope' / 'orchestrator.db'}")


def test_the_default_url_is_a_file_under_the_reports_root_unless_the_env_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_DB", raising=False)
    assert default_url(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'orchestrator.db'}"
    monkeypatch.setenv("ORCHESTRATOR_DB", "postgresql+psycopg://h/db")
    assert default_url(tmp_path) == "postgresql+psycopg://h/db"


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = JobStore.open(f"sqlite:///{tmp_path / 'o.db'}")
    store.close()
    with sqlite3.connect(tmp_path / "o.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_queued_runs_come_back_in_order_and_an_admitted_one_is_no_longer_queued(store: JobStore) -> None:
    rows = [{**_run(f"q{i}", 10.0 - i), "state": "queued", "priority": i} for i in range(3)]
    store.append(rows, [])
    assert [(r["run_id"], r["priority"], r["queue_position"]) for r in store.queued_runs()] == [
        ("q2", 2, None),
        ("q1", 1, None),
        ("q0", 0, None),
    ]  # submit order (created_at), not priority: the queue orders them again
    assert store.unfinished_runs() == []  # queued runs never started: nothing to mark interrupted
    store.append(
        [],
        [_event(1, "q1", start(2, 3))],
        admitted=[("q2", '{"epochs": 3, "max_concurrent_folds": 1}'), ("q1", "{}")],
    )
    admitted = store.get_run("q2")
    assert admitted is not None and admitted["state"] == "pending"
    assert admitted["config"]["max_concurrent_folds"] == 1  # the config it was admitted with
    assert store.get_run("q1")["state"] == "running"  # type: ignore[index]
    store.append([], [], admitted=[("q1", "{}")])  # an admission arriving late changes nothing
    assert store.get_run("q1")["state"] == "running"  # type: ignore[index]
    assert [r["run_id"] for r in store.queued_runs()] == ["q0"]
    assert [r[0] for r in store.unfinished_runs()] == ["q2", "q1"]
