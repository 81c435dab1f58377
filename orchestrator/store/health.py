"""The job store's health as its one writer sees it: ok, or failing since when and why, and whether it is retried.

``StoreHealth`` is the state (pure; its owner locks it): a write that fails makes it *failing*
(kept since the first failure), a write that succeeds after that makes it ok again, and each of
those two changes is reported once, so a log says it once, not per retry. ``FileIdentity`` is
what SQLite cannot say: the store's file removed (or replaced) while it is open. SQLite keeps
writing into the deleted file without an error, and the next start would find no store and
begin a new one, so the writer checks the file's identity before it writes and stops at once.
``snapshot`` is what ``GET /`` shows under ``store``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["FileIdentity", "HealthSnapshot", "StoreHealth", "describe_failure", "sqlite_file"]


class HealthSnapshot(TypedDict):
    """The store's health for ``GET /``, the serve log and the dashboard."""

    ok: bool
    where: str
    error: str | None
    since: float | None  # when it started failing (unix time)
    retrying: bool  # the writer keeps trying; False: it stopped (the file is gone)
    pending: int  # released events not written yet
    written: int


@dataclass
class StoreHealth:
    where: str
    error: str | None = None
    since: float | None = None
    retrying: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None

    def failed(self, error: str, *, retrying: bool = True) -> bool:
        """A write failed with ``error``; True when the store was ok until now (news to report)."""
        news = self.ok or (self.retrying and not retrying)
        if self.since is None:
            self.since = time.time()
        self.error, self.retrying = error, retrying
        return news

    def recovered(self) -> float | None:
        """A write succeeded: the seconds the store had been failing, or None if it was ok."""
        if self.ok or not self.retrying:
            return None
        failing_for = time.time() - (self.since or time.time())
        self.error, self.since = None, None
        return failing_for

    def snapshot(self, pending: int, written: int) -> HealthSnapshot:
        return {
            "ok": self.ok,
            "where": self.where,
            "error": self.error,
            "since": self.since,
            "retrying": self.retrying,
            "pending": pending,
            "written": written,
        }


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store URL (None for any other database, or an in-memory one)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else Path(database)


class FileIdentity:
    """A file's device and inode when the writer opened it; ``check`` says when that is no longer
    the file at its path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._id = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            found = os.stat(self.path)
        except OSError:
            return None
        return (found.st_dev, found.st_ino)

    def check(self) -> str | None:
        """None while it is the same file; else what happened to it, for the error."""
        now = self._stat()
        if now == self._id:
            return None
        what = "removed" if now is None else "replaced by another file"
        return (
            f"the job store file {self.path} was {what} while this server wrote it; nothing more "
            "is recorded there (a new file would silently start a new, empty store): put the "
            "file back or restart the server on the store it should use"
        )


def describe_failure(err: BaseException) -> str:
    """One line for a failed write: the database's own message where it gives one."""
    text = str(getattr(err, "orig", None) or err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
