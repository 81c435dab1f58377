"""Issue 24, kind 5: a Ray address where no cluster answers fails at once, naming the address and
what to do (exit 2), for ``train --executor ray``, ``hpo`` and ``serve``; a join that hangs is
ended by a deadline, and SIGTERM ends ``serve`` meanwhile.

Before, ``RAY_ADDRESS`` of a cluster that was gone made ``ray.init`` retry in C++ for minutes with
only Ray's warnings, and ``serve`` never listened and ignored SIGTERM (ray-project/ray#22413).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.execution.connect import ClusterUnreachableError, probe_gcs

ROOT = Path(__file__).resolve().parents[1]
CASES = Path(__file__).parent / "data" / "cases"
HANG_GUARD_S = 120  # a hang fails the test instead of blocking the suite


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", **extra}
    env.pop("ORCHESTRATOR_DB", None)
    if "RAY_ADDRESS" not in extra:
        env.pop("RAY_ADDRESS", None)
    return env


COMMANDS = {
    "train": ["train", "--executor", "ray", "--folds", "2", "--epochs", "2"],
    "hpo": ["hpo", "--folds", "2", "--epochs", "2", "--trials", "1"],
    "serve": ["serve", "--port", "0"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_case_ray_address_of_a_cluster_that_is_gone_exits_2_naming_it(
    tmp_path: Path, command: str
) -> None:
    address = f"127.0.0.1:{_free_port()}"  # nothing listens: the cluster is gone
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *COMMANDS[command], "--data", str(CASES / "base.csv")],
        env=_env(tmp_path, RAY_ADDRESS=address),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert f"no Ray cluster answers at {address}" in line and "the address from RAY_ADDRESS" in line
    assert "connection refused" in line and "unset RAY_ADDRESS" in line and "ray start --head" in line
    assert "Traceback" not in done.stderr and not (tmp_path / "reports" / "hpo").exists()


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port whose accept queue is full: a connection attempt gets no answer (a host gone)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    held = []
    try:
        while True:  # fill the queue until a connection is not answered
            held.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
    except TimeoutError:
        pass
    try:
        yield port
    finally:
        for conn in held:
            conn.close()
        server.close()


def test_an_address_that_does_not_answer_is_refused_after_the_probe_timeout(silent_listener: int) -> None:
    address = f"127.0.0.1:{silent_listener}"
    with pytest.raises(ClusterUnreachableError) as caught:
        probe_gcs("127.0.0.1", silent_listener, address, "--address", timeout_s=0.5)
    message = str(caught.value)
    assert (
        f"no Ray cluster answers at {address}, the address from --address: no answer within 0.5 s" in message
    )
    assert "leave out --address" in message


def _accepting_listener() -> socket.socket:
    """Accepts connections (on every interface: Ray connects to this node's IP) and says nothing."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    return server


def test_serve_joining_a_port_that_is_no_gcs_ends_on_sigterm_with_143(tmp_path: Path) -> None:
    # Another member of the kind: the port answers, but no GCS speaks there, so ray.init hangs.
    server = _accepting_listener()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "serve", "--port", "0", "--address", address],
        env=_env(tmp_path),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # Ray logs this line as ray.init starts to connect
            seen.append(line)
            if "Connecting to existing Ray cluster" in line:
                break
        proc.terminate()
        rest = proc.communicate(timeout=HANG_GUARD_S)[1]
    finally:
        proc.kill()
        server.close()
    assert proc.returncode == 143, "".join(seen) + rest
    assert f"error: terminated (SIGTERM) while joining the Ray cluster at {address}" in rest


def test_a_join_that_hangs_past_the_deadline_exits_2_with_the_advice() -> None:
    # The deadline on its own: the main thread is stuck in C (a lock nobody releases), as inside
    # ray.init, with a Python SIGTERM handler installed, as Ray installs one.
    script = textwrap.dedent(
        """
        import signal, threading
        from orchestrator.execution.connect import bounded_join
        signal.signal(signal.SIGTERM, lambda *_: None)
        stuck = threading.Lock(); stuck.acquire()
        with bounded_join(0.5, "10.0.0.9:6379", "RAY_ADDRESS"):
            stuck.acquire()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "error: the Ray cluster at 10.0.0.9:6379 (from RAY_ADDRESS) accepted a connection but did "
        "not let this process join within 0.5 s; start it (`ray start --head --port 6379`"
    )
