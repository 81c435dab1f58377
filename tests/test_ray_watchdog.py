"""The watchdog reaps a dead driver's descendants, SIGTERM-deaf ones too, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from orchestrator.ray_watchdog import reap, watch

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
        [sys.executable, "-c",
         f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {_DEAF!r}]); time.sleep(600)"],
    )
    deadline = time.monotonic() + 30
    while not psutil.Process(driver.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = psutil.Process(driver.pid).children()
    watcher = subprocess.Popen([sys.executable, "-m", "orchestrator.ray_watchdog", str(driver.pid)])
    time.sleep(1.5)  # let the watchdog record the child at least once
    driver.kill()
    driver.wait()
    assert watcher.wait(timeout=60) == 0
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert watch(driver.pid) == []  # a gone driver: nothing to record, nothing reaped
