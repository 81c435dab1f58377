"""A watchdog that ends a driver's own local Ray instance when the driver dies, even by ``kill -9``.

When a process that started a local Ray instance with ``ray.init()`` dies without running its
exit handlers, most of the instance follows it, but the raylet's dashboard agent and runtime-env
agent are left as orphans that ignore SIGTERM. The watchdog is a small process in its own
session: while the driver lives it records the driver's descendants (pid and start time); once
the driver is gone it sends SIGTERM, then SIGKILL after a grace period, to those recorded
processes that still run with the same start time. It touches no other process: a pid reused by
someone else has another start time, and another Ray instance's processes were never
descendants of this driver.

Usage: ``start_watchdog()`` right after this process started its own instance.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psutil

__all__ = ["start_watchdog", "wait_ready", "watch"]

POLL_S = 0.5
GRACE_S = 3.0


def start_watchdog(driver_pid: int | None = None) -> subprocess.Popen[bytes]:
    """Start the watchdog of ``driver_pid`` (default: this process) in a session of its own.

    Returns at once; ``wait_ready`` waits until it has recorded the driver's processes once.
    """
    pid = os.getpid() if driver_pid is None else driver_pid
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.execution.watchdog", str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def wait_ready(watchdog: subprocess.Popen[bytes], timeout_s: float = 30.0) -> bool:
    """Wait until the watchdog has recorded the driver's descendants a first time: from then on a
    driver killed at once is covered. False when it did not say so within ``timeout_s``."""
    out = watchdog.stdout
    assert out is not None
    said: list[bytes] = []
    reader = threading.Thread(target=lambda: said.append(out.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return bool(said and said[0].strip() == b"ready")


def _descendants(driver: psutil.Process) -> dict[int, float]:
    found: dict[int, float] = {}
    try:
        children = driver.children(recursive=True)
    except psutil.Error:
        return found
    me = os.getpid()
    for child in children:
        if child.pid == me:
            continue
        try:
            found[child.pid] = child.create_time()
        except psutil.Error:
            continue
    return found


def _still_ours(pid: int, created: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return proc if proc.create_time() == created else None
    except psutil.Error:
        return None


def reap(recorded: dict[int, float], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace_s``, every recorded process still running; their pids."""
    alive = [p for pid, created in recorded.items() if (p := _still_ours(pid, created))]
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, survivors = psutil.wait_procs(alive, timeout=grace_s)
    for proc in survivors:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(survivors, timeout=grace_s)
    return [p.pid for p in alive]


def watch(driver_pid: int, poll_s: float = POLL_S) -> list[int]:
    """Record ``driver_pid``'s descendants until it ends, then reap them; the reaped pids."""
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return []
    recorded: dict[int, float] = {}
    first = True
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        recorded.update(_descendants(driver))
        if first:  # start_watchdog returns now
            print("ready", flush=True)
            first = False
        time.sleep(poll_s)
    return reap(recorded)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
