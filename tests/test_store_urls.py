"""Issue 24, kind 7: a database URL whose password holds '@', '/' or ':' unencoded is one line,
exit 2, saying to percent-encode it, and no part of the password is ever shown.

Before, SQLAlchemy's parser (sqlalchemy#11262) read ``p@ss:w0rd@127.0.0.1:5432`` as host ``ss``
and port ``w0rd@127.0.0.1:5432`` (a 30-line ``ValueError`` traceback), and ``a/b@3x@127.0.0.1`` as
host ``3x@127.0.0.1``, which the error message then printed (``***@3x@...``, "failed to resolve
host '3x@127.0.0.1'").
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy.engine import make_url

from orchestrator.errors import StoreError
from orchestrator.store import JobStore
from orchestrator.store.engine import resolve_store_url
from orchestrator.store.urls import describe, parse_url, redact
from tests.pg_server import postgres_server

ROOT = Path(__file__).resolve().parents[1]

# The two shapes of the issue, then other members of the kind: a password with '@', '/' and ':'
# together, a '?' that hides the first '@' from a count, an Azure-style user name with '@'.
CASE_URLS = {
    "p@ss:w0rd": "postgresql+psycopg://orch:p@ss:w0rd@127.0.0.1:5432/orch",
    "a/b@3x": "postgresql+psycopg://orch:a/b@3x@127.0.0.1/orch",
}
SIBLING_URLS = {
    "Zq7@Xk2/Vw9:Jm4": "postgresql+psycopg://orch:Zq7@Xk2/Vw9:Jm4@127.0.0.1:5432/orch",
    "Hy5?Tr8@Lp3": "postgresql://orch:Hy5?Tr8@Lp3@db.example:5432/orch",
    "Qb6Nn1Rr2": "postgresql://admin@server7:Qb6Nn1Rr2@db.example/orch",
}


def _fragments(password: str) -> list[str]:
    """Every piece of the password a message could show: its 3-character windows, and each
    run of letters and digits between its special characters."""
    windows = [password[i : i + 3] for i in range(len(password) - 2)]
    runs = [
        run
        for run in password.replace("@", " ").replace("/", " ").replace(":", " ").replace("?", " ").split()
    ]
    return [*windows, *(run for run in runs if len(run) > 1 and run not in {"ss"})]


def _assert_hidden(text: str, password: str) -> None:
    for piece in _fragments(password):
        assert piece not in text, f"{piece!r} of the password is shown: {text}"


@pytest.mark.parametrize(("password", "url"), [*CASE_URLS.items(), *SIBLING_URLS.items()])
def test_ambiguous_credentials_are_refused_without_a_piece_of_the_password(password: str, url: str) -> None:
    with pytest.raises(StoreError) as caught:
        resolve_store_url(url, "reports")
    message = str(caught.value)
    assert "\n" not in message and "must be percent-encoded" in message and "@ as %40" in message
    _assert_hidden(message, password)
    _assert_hidden(describe(url), password)
    _assert_hidden(redact(url), password)


def _command(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", **env_extra}
    if "ORCHESTRATOR_DB" not in env_extra:
        env.pop("ORCHESTRATOR_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=240,
    )


@pytest.mark.parametrize(
    ("password", "args", "env"),
    [
        ("p@ss:w0rd", ["train", "--executor", "local", "--db", CASE_URLS["p@ss:w0rd"]], {}),
        ("a/b@3x", ["train", "--executor", "local", "--db", CASE_URLS["a/b@3x"]], {}),
        ("a/b@3x", ["serve", "--port", "0"], {"ORCHESTRATOR_DB": CASE_URLS["a/b@3x"]}),
        ("Zq7@Xk2/Vw9:Jm4", ["hpo", "--executor", "local", "--db", SIBLING_URLS["Zq7@Xk2/Vw9:Jm4"]], {}),
        ("Zq7@Xk2/Vw9:Jm4", ["hpo", "--executor", "local", "--storage", SIBLING_URLS["Zq7@Xk2/Vw9:Jm4"]], {}),
    ],
    ids=["train-port", "train-host", "serve-env", "hpo-db", "hpo-storage"],
)
def test_every_command_says_it_in_one_line_exit_2(
    tmp_path: Path, password: str, args: list[str], env: dict[str, str]
) -> None:
    done = _command([*args, "--reports-dir", str(tmp_path / "reports")], env, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: the database URL ")
    assert "must be percent-encoded" in done.stderr
    _assert_hidden(done.stdout + done.stderr, password)
    assert not (tmp_path / "reports" / "hpo").exists()


def test_the_percent_encoded_url_reads_the_password_and_shows_none_of_it() -> None:
    password = "Zq7@Xk2/Vw9:Jm4"
    url = f"postgresql+psycopg://orch:{quote(password, safe='')}@127.0.0.1:5432/orch"
    parsed = parse_url(url)
    assert (parsed.password, parsed.host, parsed.port, parsed.database) == (
        password,
        "127.0.0.1",
        5432,
        "orch",
    )
    assert describe(url) == "postgresql+psycopg://orch:***@127.0.0.1:5432/orch"
    # '/' and ':' alone (one '@') are read right by SQLAlchemy, and hidden
    assert parse_url("postgresql://orch:Vw9/Jm4:Qp@db/orch").password == "Vw9/Jm4:Qp"
    assert describe("postgresql://orch:Vw9/Jm4:Qp@db/orch") == "postgresql://orch:***@db/orch"


def test_a_sqlite_path_may_hold_at_signs(tmp_path: Path) -> None:
    path = tmp_path / "a@b" / "x@y.db"
    assert parse_url(f"sqlite:///{path}").database == str(path)
    assert describe(f"sqlite:///{path}") == f"SQLite file {path}"


@pytest.fixture(scope="module")
def pg_databases() -> Iterator[Callable[[], str]]:
    yield from postgres_server()


def test_a_real_postgresql_store_opens_with_the_encoded_password_and_refuses_it_raw(
    pg_databases: Callable[[], str],
) -> None:
    plain = make_url(pg_databases())  # postgresql+psycopg://postgres@127.0.0.1:PORT/t_... (trust)
    password = "Zq7@Xk2/Vw9:Jm4"
    encoded = (
        f"postgresql+psycopg://postgres:{quote(password, safe='')}@127.0.0.1:{plain.port}/{plain.database}"
    )
    store = JobStore.open(encoded)
    try:
        assert store.list_runs() == [] and password not in store.where and "***" in store.where
    finally:
        store.close()
    raw = f"postgresql+psycopg://postgres:{password}@127.0.0.1:{plain.port}/{plain.database}"
    with pytest.raises(StoreError) as caught:
        JobStore.open(raw)
    _assert_hidden(str(caught.value), password)
