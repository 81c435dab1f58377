"""A throwaway PostgreSQL server for the store tests: initdb and postgres in a temporary folder on a
free loopback port, run as an unprivileged user (initdb refuses root); skipped where absent."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["pg_binaries", "postgres_server"]


def pg_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (PATH first, then Debian's versioned folders)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "postgres").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user() -> tuple[list[str], int | None, int | None]:
    """A command prefix that drops root to the ``postgres`` (or ``nobody``) user, and its ids."""
    if os.geteuid() != 0:
        return [], None, None
    import pwd

    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
        return prefix, entry.pw_uid, entry.pw_gid
    pytest.skip("running as root and no unprivileged user to run PostgreSQL as")


def postgres_server() -> Iterator[Callable[[], str]]:
    """Yields a factory of fresh empty databases (their SQLAlchemy URLs) on one server."""
    binaries = pg_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL binaries (initdb, postgres) are not installed")
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'forecast-orchestrator[postgres]')")
    prefix, uid, gid = _as_user()
    folder = Path(tempfile.mkdtemp(prefix="orch-pg-"))
    data = folder / "data"
    if uid is not None and gid is not None:
        os.chown(folder, uid, gid)
    subprocess.run(
        [
            *prefix,
            str(binaries / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            *prefix,
            str(binaries / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(folder),
            "-F",
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    admin = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(admin, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the test PostgreSQL server did not start")
                time.sleep(0.1)

        def fresh_database() -> str:
            name = "t_" + uuid.uuid4().hex[:12]
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"

        yield fresh_database
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)
