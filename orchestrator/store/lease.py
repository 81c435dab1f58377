"""The one-writer lease on the job store: who holds it, its heartbeat, and when a holder counts as gone.

The serving hub holds the lease and renews its heartbeat; a second writer on the same store is
refused with ``LeaseHeldError`` naming the holder. A holder is gone when its heartbeat is older
than the time to live, or at once when it ran on this host and its process no longer exists
(``kill -9`` of a server followed by a restart needs no wait). Taking the lease is a
compare-and-swap on the one row, so two writers starting together cannot both win.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from orchestrator.errors import StoreError
from orchestrator.store.schema import lease

__all__ = [
    "LEASE_TTL_S",
    "HEARTBEAT_S",
    "LeaseHeldError",
    "Owner",
    "Holder",
    "holder_gone",
    "acquire",
    "read_holder",
    "heartbeat",
    "release",
    "pid_alive",
    "refuse_if_held",
]

LEASE_TTL_S = 30.0
HEARTBEAT_S = 5.0
_ROW = "writer"


class LeaseHeldError(StoreError):
    """Another live writer holds the store's lease."""


@dataclass(frozen=True)
class Owner:
    """A writer's identity: host, process and a random token (a pid can be reused)."""

    host: str
    pid: int
    token: str

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])


@dataclass(frozen=True)
class Holder:
    """The lease row as read."""

    owner: str
    acquired_at: float
    heartbeat: float


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_gone(holder: Holder, now: float, ttl_s: float = LEASE_TTL_S, host: str | None = None) -> bool:
    """True when the holder's heartbeat is stale, or it ran on ``host`` (default: this one) and
    its process is gone."""
    if now - holder.heartbeat > ttl_s:
        return True
    owner = Owner.parse(holder.owner)
    here = socket.gethostname() if host is None else host
    return owner is not None and owner.host == here and not pid_alive(owner.pid)


def read_holder(conn: Connection) -> Holder | None:
    row = conn.execute(
        select(lease.c.owner, lease.c.acquired_at, lease.c.heartbeat).where(lease.c.name == _ROW)
    ).first()
    return None if row is None else Holder(row.owner, row.acquired_at, row.heartbeat)


def _describe(holder: Holder, now: float) -> str:
    return (
        f"{holder.owner} (heartbeat {now - holder.heartbeat:.0f} s ago, "
        f"holding since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.acquired_at))})"
    )


def refuse_if_held(holder: Holder | None, now: float | None = None, ttl_s: float = LEASE_TTL_S) -> None:
    """``LeaseHeldError`` naming the holder when a live writer holds the lease."""
    now = time.time() if now is None else now
    if holder is not None and holder.owner and not holder_gone(holder, now, ttl_s):
        raise LeaseHeldError(
            f"the job store is in use by another writer: {_describe(holder, now)}. Stop it, send "
            "the work to the server that holds it (POST /train, POST /hpo), or use another --db"
        )


def acquire(
    conn: Connection, owner: str, now: float | None = None, ttl_s: float = LEASE_TTL_S
) -> Holder | None:
    """Take the lease for ``owner``; return the previous holder when it was gone (its runs are to
    be marked interrupted), None when the lease was free or already ours.

    Raises ``LeaseHeldError`` naming the holder when a live writer holds it.
    """
    now = time.time() if now is None else now
    holder = read_holder(conn)
    if holder is None:
        try:
            with conn.begin_nested():
                conn.execute(insert(lease).values(name=_ROW, owner=owner, acquired_at=now, heartbeat=now))
        except IntegrityError:
            raise LeaseHeldError(
                "another writer took the job store's lease at the same moment; try again"
            ) from None
        return None
    if holder.owner == owner:
        heartbeat(conn, owner, now)
        return None
    refuse_if_held(holder, now, ttl_s)
    swapped = conn.execute(
        update(lease)
        .where(lease.c.name == _ROW, lease.c.owner == holder.owner, lease.c.heartbeat == holder.heartbeat)
        .values(owner=owner, acquired_at=now, heartbeat=now)
    ).rowcount
    if swapped != 1:
        raise LeaseHeldError("another writer took the job store's lease at the same moment; try again")
    return holder if holder.owner else None


def heartbeat(conn: Connection, owner: str, now: float | None = None) -> bool:
    """Renew ``owner``'s heartbeat; False when it no longer holds the lease."""
    now = time.time() if now is None else now
    done = conn.execute(
        update(lease).where(lease.c.name == _ROW, lease.c.owner == owner).values(heartbeat=now)
    ).rowcount
    return done == 1


def release(conn: Connection, owner: str) -> None:
    """Give the lease up (an empty owner): the next writer takes it without marking anything."""
    conn.execute(
        update(lease).where(lease.c.name == _ROW, lease.c.owner == owner).values(owner="", heartbeat=0.0)
    )
