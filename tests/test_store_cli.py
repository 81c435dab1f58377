"""The ``train`` command as a writer of the job store: it records its run, and is refused while
another live writer (a server) holds the store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from orchestrator.store import JobStore
from tests.synthetic import ar1_ohlcv

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "bars.parquet"
    if not data.exists():
        ar1_ohlcv(900, seed=11).to_parquet(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("ORCHESTRATOR_DB", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "train",
            "--executor",
            "local",
            "--quiet",
            "--data",
            str(data),
            "--folds",
            "2",
            "--epochs",
            "2",
            "--set",
            "min_samples=300",
            "--set",
            "lookback=10",
            "--reports-dir",
            str(tmp_path / "r"),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
    )


def test_train_records_its_run_and_events_in_the_store(tmp_path: Path) -> None:
    events_out = tmp_path / "ev.jsonl"
    done = _train(tmp_path, "--events-out", str(events_out))
    assert done.returncode == 0, done.stderr
    store = JobStore.open(f"sqlite:///{tmp_path / 'r' / 'orchestrator.db'}")
    try:
        (run,) = store.list_runs()
        assert run["state"] == "completed" and run["progress"]["epochs_done"] == 4
        stored = store.events_since(0, run["run_id"])
        assert [e.text for e in stored] == events_out.read_text().splitlines()  # byte for byte
        holder = store.lease_holder()
        assert holder is not None and holder.owner == ""  # given up at the end
    finally:
        store.close()


def test_train_is_refused_while_a_server_holds_the_store(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    store = JobStore.open(f"sqlite:///{tmp_path / 'r' / 'orchestrator.db'}")
    owner = f"{socket.gethostname()}:{os.getpid()}:serving"
    store.acquire_lease(owner)
    try:
        done = _train(tmp_path)
    finally:
        store.close()
    assert done.returncode == 2, done.stderr
    assert owner in done.stderr and "Traceback" not in done.stderr


def test_hpo_keeps_its_study_and_its_events_in_the_job_store_database(tmp_path: Path) -> None:
    import optuna

    data = tmp_path / "bars.parquet"
    ar1_ohlcv(900, seed=3).to_parquet(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("ORCHESTRATOR_DB", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "hpo",
            "--executor",
            "local",
            "--quiet",
            "--data",
            str(data),
            "--trials",
            "1",
            "--folds",
            "2",
            "--epochs",
            "1",
            "--study",
            "one",
            "--set",
            "min_samples=300",
            "--set",
            "lookback=10",
            "--pruner",
            "none",
            "--reports-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    url = f"sqlite:///{tmp_path / 'r' / 'orchestrator.db'}"
    study = optuna.load_study(study_name="one", storage=url)  # what optuna-dashboard opens
    assert len(study.trials) == 1
    assert not (tmp_path / "r" / "hpo" / "one" / "study.journal").exists()
    store = JobStore.open(url)
    try:
        assert any(e.type == "hpo_trial" for e in store.events_since(0))
    finally:
        store.close()
