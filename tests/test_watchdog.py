"""The watchdog reaps a dead driver's descendants, SIGTERM-deaf ones too, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from orchestrator.execution.watchdog import POLL_S, reap, watch
from tests.synthetic import ar1_ohlcv

ROOT = Path(__file__).resolve().parents[1]

_DEAF = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"


def _deaf_process() -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _DEAF], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    return proc


def test_reap_kills_a_sigterm_deaf_process() -> None:
    proc = _deaf_process()
    created = psutil.Process(proc.pid).create_time()
    assert reap({proc.pid: created}, grace_s=0.5) == [proc.pid]
    proc.wait(timeout=10)  # reap already collected its exit status
    assert not psutil.pid_exists(proc.pid)


def test_reap_spares_a_reused_pid() -> None:
    proc = _deaf_process()
    try:
        # the recorded start time is another process's: the pid was reused since
        assert reap({proc.pid: psutil.Process(proc.pid).create_time() - 100.0}, grace_s=0.5) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_watch_reaps_the_orphans_of_a_killed_driver() -> None:
    # a "driver" that starts a SIGTERM-deaf child, then is killed with SIGKILL
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {_DEAF!r}]); time.sleep(600)",
        ],
    )
    deadline = time.monotonic() + 30
    while not psutil.Process(driver.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = psutil.Process(driver.pid).children()
    watcher = subprocess.Popen([sys.executable, "-m", "orchestrator.execution.watchdog", str(driver.pid)])
    time.sleep(1.5)  # let the watchdog record the child at least once
    driver.kill()
    driver.wait()
    assert watcher.wait(timeout=60) == 0
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert watch(driver.pid) == []  # a gone driver: nothing to record, nothing reaped


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _train_command(tmp_path: Path, epochs: int) -> subprocess.Popen[str]:
    """``orchestrator train`` on Ray in a process of its own, starting its own local instance."""
    data = tmp_path / "bars.csv"
    ar1_ohlcv(900, seed=3).to_csv(data, index=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "train",
            "--data",
            str(data),
            "--folds",
            "2",
            "--epochs",
            str(epochs),
            "--quiet",
            "--set",
            "min_samples=300",
            "--set",
            "lookback=10",
            "--reports-dir",
            str(tmp_path / "r"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_a_killed_train_command_leaves_no_ray_process(tmp_path: Path) -> None:
    driver = _train_command(tmp_path, epochs=500)
    try:
        # wait until the instance is up, agents included, and the watchdog has seen them
        deadline = time.monotonic() + 120
        names: set[str] = set()
        expected = {"raylet", "ray::DashboardAgent", "watchdog"}
        while time.monotonic() < deadline and not expected <= names:
            time.sleep(0.5)
            names = set()
            for child in psutil.Process(driver.pid).children(recursive=True):
                try:
                    line = child.cmdline()
                    if child.name() == "raylet":
                        names.add("raylet")
                    elif "orchestrator.execution.watchdog" in line:
                        names.add("watchdog")
                    elif line:
                        names.add(line[0])
                except psutil.Error:
                    pass
        assert expected <= names, names
        time.sleep(2 * POLL_S + 0.5)
        descendants = psutil.Process(driver.pid).children(recursive=True)
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 60
    while _alive(descendants) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(descendants) == []


def test_a_train_command_that_ends_leaves_no_ray_process_behind(tmp_path: Path) -> None:
    """The command exits without waiting for Ray's shutdown; its watchdog stops the instance."""
    driver = _train_command(tmp_path, epochs=2)
    seen: dict[int, psutil.Process] = {}
    while driver.poll() is None:
        try:
            for child in psutil.Process(driver.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 0 and "summary:" in out
    assert len(seen) >= 3  # the instance's processes (gcs, raylet, agents, ...) were seen
    deadline = time.monotonic() + 60
    while _alive(list(seen.values())) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(list(seen.values())) == []
