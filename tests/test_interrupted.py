"""Without ``--address`` a run ends with its server: after ``kill -9`` of ``serve`` the next start
marks it ``interrupted`` with a ``training_error`` saying so, and keeps its history."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.head_node import free_ports, ray_env
from tests.synthetic import ar1_ohlcv

pytestmark = pytest.mark.slow  # two servers, each starting its own Ray instance

ROOT = Path(__file__).resolve().parents[1]


def _serve(port: int, reports: Path, data: Path, log: Path) -> subprocess.Popen[bytes]:
    """``serve`` (its own Ray instance), once it answers; retried while the killed server's hub
    still holds the store (its Ray instance is being ended by the watchdog)."""
    deadline = time.monotonic() + 120
    while True:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "orchestrator",
                    "serve",
                    "--port",
                    str(port),
                    "--reports-dir",
                    str(reports),
                    "--data",
                    str(data),
                    "--folds",
                    "2",
                    "--set",
                    "min_samples=500",
                    "--set",
                    "lookback=10",
                    "--log-level",
                    "warning",
                ],
                cwd=reports.parent,
                env=ray_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.3)
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        assert proc.returncode == 2 and "in use by another writer" in log.read_text(), log.read_text()[-3000:]
        time.sleep(1.0)


def test_a_run_of_a_killed_server_is_marked_interrupted_at_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    ar1_ohlcv(2400, seed=3).to_csv(data, index=False)
    reports = tmp_path / "reports"
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    first = _serve(port, reports, data, tmp_path / "first.log")
    try:
        response = httpx.post(f"{url}/train", json={"epochs": 30, "batch_size": 8}, timeout=30)
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/runs/{run_id}", timeout=5).json()["progress"]["epochs_done"] < 1:
            assert time.monotonic() < deadline, "no epoch within 120 s"
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    second = _serve(port, reports, data, tmp_path / "second.log")
    try:
        run = httpx.get(f"{url}/runs/{run_id}", timeout=10).json()
        events = httpx.get(f"{url}/runs/{run_id}/events", timeout=10).json()["events"]
        listed = [r["run_id"] for r in httpx.get(f"{url}/runs", timeout=10).json()["runs"]]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert run["state"] == "interrupted" and run["error"].startswith("interrupted: ")
    assert events[-1]["type"] == "training_error" and events[-1]["error"] == run["error"]
    assert [e["type"] for e in events[:2]] == ["dataset_ready", "training_start"]
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    assert listed == [run_id]
