"""Joining a Ray cluster by address: its GCS port probed first, the join bounded, SIGTERM honoured.

``ray.init(address=...)`` of a cluster that is gone retries in C++ for minutes with only Ray's
warnings, and a process blocked there runs no Python signal handler, so ``serve`` ignored SIGTERM
(ray-project/ray#22413). So before ``ray.init``, ``probe_gcs`` opens a TCP connection to the
cluster's GCS address (what Ray would connect to) within ``PROBE_TIMEOUT_S``: refused, unreachable
or silent is ``ClusterUnreachableError`` naming the address, where it came from, and what to do.
A port that answers but is no GCS still hangs Ray: ``bounded_join`` then ends the process after
``deadline_s`` with the same advice (exit 2), and on SIGTERM meanwhile (exit 143): a watcher
thread reads the signal from Python's wakeup fd, since the main thread is stuck in C++.
Ray-free: ``execution.cluster.ensure_ray`` resolves the address and calls these.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

from orchestrator.errors import OrchestratorError

__all__ = [
    "CONNECT_DEADLINE_S",
    "PROBE_TIMEOUT_S",
    "ClusterUnreachableError",
    "probe_gcs",
    "bounded_join",
    "advice",
]

# Seconds a TCP connection to the GCS may take before the cluster counts as gone.
PROBE_TIMEOUT_S = 5.0
# Seconds a command's ``ray.init`` may take after the probe passed: with the probe, under 30 s.
CONNECT_DEADLINE_S = 20.0


class ClusterUnreachableError(OrchestratorError):
    """No Ray cluster answers at the address given (``--address`` or ``RAY_ADDRESS``)."""


def advice(address: str, source: str) -> str:
    """What to do about a cluster that does not answer at ``address`` (given by ``source``)."""
    port = address.rsplit(":", 1)[-1] if ":" in address else "6379"
    unset = "unset RAY_ADDRESS" if source == "RAY_ADDRESS" else "leave out --address"
    return (
        f"start it (`ray start --head --port {port}` on that host), point {source} at a running "
        f"cluster, or {unset} to train on a local Ray instance of this machine"
    )


def probe_gcs(host: str, port: int, address: str, source: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """A TCP connection to ``host:port`` (the GCS of ``address``) within ``timeout_s``, else
    ``ClusterUnreachableError`` naming the address, the reason and what to do."""
    where = f"{host}:{port}" if f"{host}:{port}" != address else address
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        if err.errno == errno.ECONNREFUSED:
            reason = "connection refused: nothing listens there"
    target = address if where == address else f"{address} (GCS at {where})"
    raise ClusterUnreachableError(
        f"no Ray cluster answers at {target}, the address from {source}: {reason}; {advice(address, source)}"
    )


def _end_now(code: int, message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)  # the main thread is inside Ray's C++ connect loop: nothing else ends it


@contextlib.contextmanager
def bounded_join(deadline_s: float | None, address: str, source: str) -> Iterator[None]:
    """Run the body (``ray.init``) with the process ended after ``deadline_s`` (exit 2), or on
    SIGTERM (exit 143) or Ctrl-C (exit 130), if it has not returned. No bound when
    ``deadline_s`` is None or off the main thread (signals belong to it)."""
    if deadline_s is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    # Python's C-level signal handler writes the signal's number to the wakeup fd at once, in
    # whichever thread the signal lands, while the Python handler (Ray's, for SIGTERM) would
    # wait for the main thread to leave C++.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    done = threading.Event()

    def watch() -> None:
        end = time.monotonic() + deadline_s
        while not done.is_set():
            left = end - time.monotonic()
            if left <= 0:
                _end_now(
                    2,
                    f"the Ray cluster at {address} (from {source}) accepted a connection but "
                    f"did not let this process join within {deadline_s:g} s; {advice(address, source)}",
                )
            readable, _, _ = select.select([read_end], [], [], min(left, 0.1))
            if readable:
                received = set(os.read(read_end, 64))
                if signal.SIGTERM in received:
                    _end_now(143, f"terminated (SIGTERM) while joining the Ray cluster at {address}")
                if signal.SIGINT in received:
                    _end_now(130, f"interrupted while joining the Ray cluster at {address}")

    watcher = threading.Thread(target=watch, name="ray-join-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)
