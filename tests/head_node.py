"""A real Ray head node for the tests (``ray start --head --block`` on free ports, in its own
process group) and ``serve --address`` processes on it: the restart and fault tests share them.

Other Ray instances run on this machine: a head gets ports no one else uses (its worker port
range kept clear of them), and processes are found by the ids the tests started, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
FOLDS = 2
_GRACE_S = 10.0
NAMESPACE = "forecast-orchestrator"  # the namespace serve --address puts its actors in


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def ray_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("RAY_ADDRESS", "ORCHESTRATOR_DB"):
        env.pop(name, None)
    return env


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the process group, SIGKILL after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(_GRACE_S)


@contextmanager
def head_node() -> Iterator[str]:
    """A real head node (``ray start --head --block``) in its own process group, on free ports."""
    ports = free_ports(8)
    gcs, node_manager, object_manager, client, agent_listen, agent_grpc, metrics, runtime_env = ports
    low = free_ports(1)[0] % 20_000 + 30_000
    while any(low <= port <= low + 200 for port in ports):  # Ray refuses a worker range over them
        low = (low + 211 - 30_000) % 20_000 + 30_000
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths are limited
    log = open(Path(temp) / "ray-start.log", "w")
    head = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--port",
            str(gcs),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "2",
            "--num-gpus",
            "0",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            temp,
            "--node-manager-port",
            str(node_manager),
            "--object-manager-port",
            str(object_manager),
            "--ray-client-server-port",
            str(client),
            "--dashboard-agent-listen-port",
            str(agent_listen),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--metrics-export-port",
            str(metrics),
            "--runtime-env-agent-port",
            str(runtime_env),
            "--min-worker-port",
            str(low),
            "--max-worker-port",
            str(low + 200),
        ],
        env=ray_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"127.0.0.1:{gcs}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", gcs)) == 0:
                    break
            assert head.poll() is None, "ray start exited: " + Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, "the head node did not come up"
            time.sleep(0.2)
        yield address
    finally:
        stop_group(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


class Serve:
    """One ``serve --address`` process."""

    def __init__(self, address: str, port: int, reports: Path, data: Path, *extra: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = reports.parent / f"serve-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "serve",
                "--address",
                address,
                "--port",
                str(port),
                "--reports-dir",
                str(reports),
                "--data",
                str(data),
                "--folds",
                str(FOLDS),
                "--set",
                "min_samples=500",
                "--set",
                "lookback=10",
                "--set",
                "patience=10000",
                "--log-level",
                "warning",
                *extra,
            ],
            cwd=reports.parent,
            env=ray_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.flush()
                raise AssertionError(Path(self.log.name).read_text()[-3000:])
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def actor_pid(address: str, name: str, namespace: str = NAMESPACE) -> int:
    """The pid of the named actor of the cluster at ``address`` (its ``pid()`` method), asked by a
    driver of its own (this process may be the driver of another Ray instance)."""
    code = (
        "import ray, sys; ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False); "
        "print(ray.get(ray.get_actor(sys.argv[3]).pid.remote(), timeout=120))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, address, namespace, name],
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])
