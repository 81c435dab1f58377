"""Opening the job store's database from a URL: SQLite (WAL, busy timeout) by default, any SQLAlchemy URL.

Every way the database can be unusable at start-up (a malformed or unreachable URL, a password
that needs percent-encoding (``store.urls``), a missing
driver, a corrupt or locked SQLite file, a folder that cannot be written) becomes one
``StoreError`` naming the URL (password hidden) or the file, never a traceback; nothing is created
or overwritten before the check passes.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from orchestrator.errors import StoreError
from orchestrator.store.schema import ensure_schema
from orchestrator.store.urls import describe, parse_url

__all__ = [
    "DB_ENV",
    "DB_FILE",
    "BUSY_TIMEOUT_MS",
    "absolute_url",
    "default_url",
    "describe",
    "locked_message",
    "open_engine",
    "resolve_store_url",
]

DB_ENV = "ORCHESTRATOR_DB"
DB_FILE = "orchestrator.db"
# A writer waits this long for a SQLite lock before giving up (the API reads while the hub writes).
BUSY_TIMEOUT_MS = 5_000
_CONNECT_TIMEOUT_S = 5


def default_url(reports_dir: str | os.PathLike[str]) -> str:
    """``$ORCHESTRATOR_DB`` if set, else the SQLite file ``<reports_dir>/orchestrator.db``."""
    from_env = os.environ.get(DB_ENV)
    if from_env:
        return from_env
    return f"sqlite:///{Path(reports_dir).resolve() / DB_FILE}"


def absolute_url(url: str) -> str:
    """``url`` with a relative SQLite file made absolute (the hub may run in another folder)."""
    parsed = parse_url(url)
    database = parsed.database
    if (
        parsed.get_backend_name() != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
        or os.path.isabs(database)
    ):
        return url
    return parsed.set(database=str(Path(database).resolve())).render_as_string(hide_password=False)


def resolve_store_url(db: str | None, reports_dir: str | os.PathLike[str]) -> str:
    """The store a command uses: ``db``, else ``$ORCHESTRATOR_DB``, else the SQLite file under
    ``reports_dir`` (created if missing); SQLite files made absolute. ``StoreError`` when the
    reports folder cannot be created."""
    if not db and not os.environ.get(DB_ENV):
        try:
            Path(reports_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the reports folder {reports_dir}: {err.strerror}") from None
    return absolute_url(db or default_url(reports_dir))


def _check_sqlite_file(parsed: URL) -> None:
    """The file's folder must exist and be writable; an existing file must be readable and writable."""
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    folder = path.parent
    if not folder.is_dir():
        raise StoreError(f"the job store's folder {folder} does not exist (SQLite file {path})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(
            f"the job store's folder {folder} is not writable (SQLite needs to write {path} and "
            "its -wal/-shm files beside it); use a writable --reports-dir or --db"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"the job store file {path} is not readable and writable")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
    cursor.close()


def open_engine(url: str, *, create: bool = True) -> Engine:
    """An engine on ``url`` whose database answered and carries this code's schema.

    ``create``: create the tables where they are missing (False only checks what is there).
    Raises ``StoreError`` naming the URL or file for anything that stops the store from working.
    """
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        _check_sqlite_file(parsed)
        connect_args["check_same_thread"] = False  # the hub's writer thread and its readers
    elif backend.startswith("postgres"):
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    where = describe(parsed)
    try:
        engine = create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as err:
        raise StoreError(
            f"no driver for the job store {where}: {err} "
            "(PostgreSQL needs: pip install 'forecast-orchestrator[postgres]')"
        ) from None
    except (ArgumentError, SQLAlchemyError, TypeError, ValueError) as err:
        raise StoreError(f"cannot use the job store {where}: {err}") from None
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if backend == "sqlite":
                found = conn.execute(text("PRAGMA quick_check")).scalar()
                if found != "ok":
                    raise StoreError(f"the job store {where} is corrupt: {found}")
        if create:
            if backend == "sqlite":
                _check_writable(engine)
            ensure_schema(engine, where)
    except StoreError:
        engine.dispose()
        raise
    except SQLAlchemyError as err:
        engine.dispose()
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        if backend == "sqlite" and "locked" in reason:
            raise StoreError(locked_message(parsed.database or "")) from None
        raise StoreError(f"cannot use the job store {where}: {reason}") from None
    return engine


def _check_writable(engine: Engine) -> None:
    """Take SQLite's write lock and give it back at once: another process's open write
    transaction (DB Browser with unsaved edits holds ``BEGIN IMMEDIATE``) fails here, after the
    busy timeout, rather than in the middle of the first write."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("ROLLBACK")
        cursor.close()
    except sqlite3.OperationalError as err:
        if "locked" not in str(err):
            raise
        database = engine.url.database or ""
        raise StoreError(locked_message(database)) from None
    finally:
        raw.close()


def locked_message(database: str) -> str:
    """One line: the SQLite file, the lock, who has the file open (Linux), what to do."""
    holders = _processes_with_open(database)
    who = f"; processes with it open: {', '.join(holders)}" if holders else ""
    return (
        f"the job store SQLite file {database} is locked for writing: another connection holds a "
        f"write transaction on it (waited {BUSY_TIMEOUT_MS / 1000:g} s{who}); commit or roll back "
        "there (DB Browser: Write Changes or Revert Changes) or close it, then try again, or use "
        "another --db"
    )


def _processes_with_open(database: str, limit: int = 3) -> list[str]:
    """``pid N (command)`` of other processes holding ``database`` open, from /proc (Linux)."""
    try:
        target = os.path.realpath(database)
        found = []
        for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if any(os.path.realpath(fd) == target for fd in (entry / "fd").iterdir()):
                    command = (entry / "comm").read_text().strip()
                    found.append(f"pid {entry.name} ({command})")
            except OSError:  # gone, or not ours to read
                continue
            if len(found) >= limit:
                break
        return found
    except OSError:  # no /proc
        return []
