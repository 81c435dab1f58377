"""``JobStore``: the job store's reads and writes (runs, the event log, the lease) over one SQLAlchemy engine.

Writes come from one writer, the serving hub (``events.recorder``), in batches: ``append`` puts a
batch's new runs, events and row changes in one transaction. Reads (``GET /runs...``, replay
beyond the hub's memory) may come from anywhere. Events are stored as their records' one text,
the exact JSON sent on ``/ws``, and read back as records without parsing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from orchestrator.events.record import EventRecord
from orchestrator.lifecycle import TERMINAL_STATES, RunState
from orchestrator.store import lease as leases
from orchestrator.store.engine import describe, open_engine
from orchestrator.store.runs import merge_metrics, patches_for, snapshot_of_row
from orchestrator.store.schema import events, producers, runs

__all__ = ["JobStore", "RUNS_PAGE_DEFAULT", "RUNS_PAGE_MAX", "UNFINISHED_STATES"]

RUNS_PAGE_DEFAULT = 100
RUNS_PAGE_MAX = 1000
# Runs that started and have not ended; queued runs wait for a server to admit them.
UNFINISHED_STATES = tuple(s.value for s in RunState if s not in TERMINAL_STATES and s is not RunState.QUEUED)


class JobStore:
    """The store behind one engine; ``url`` is kept to name it in messages and to reopen it."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> JobStore:
        """Open (and create the tables of) the store at ``url``; ``StoreError`` if unusable."""
        return cls(open_engine(url, create=create), url)

    @property
    def where(self) -> str:
        return describe(self.url)

    def close(self) -> None:
        self.engine.dispose()

    # ---- writes (the one writer) ----------------------------------------------------------

    def append(
        self,
        new_runs: Sequence[dict[str, Any]],
        batch: Sequence[EventRecord],
        admitted: Sequence[tuple[str, str]] = (),
        positions: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """One transaction: insert ``new_runs`` (rows), mark the ``admitted`` queued runs
        ``pending`` with the config they were admitted with ((run_id, config JSON): the job queue
        let them start), insert the ``batch`` of released records, make the changes they make
        to their runs' rows, and move each producer's next pseq to ``positions[(run_id,
        producer)]`` (never back)."""
        with self.engine.begin() as conn:
            known = set()
            if new_runs:
                ids = [r["run_id"] for r in new_runs]
                known = set(conn.execute(select(runs.c.run_id).where(runs.c.run_id.in_(ids))).scalars())
                fresh = [r for r in new_runs if r["run_id"] not in known]
                if fresh:
                    conn.execute(insert(runs), fresh)
            for run_id, config in admitted:
                conn.execute(
                    update(runs)
                    .where(runs.c.run_id == run_id, runs.c.state == RunState.QUEUED.value)
                    .values(state=RunState.PENDING.value, config=config)
                )
            if batch:
                conn.execute(
                    insert(events),
                    [
                        {"seq": r.seq, "run_id": r.run_id, "type": r.type, "ts": r.ts, "body": r.text}
                        for r in batch
                    ],
                )
                self._patch_runs(conn, batch)
            for (run_id, producer), next_pseq in (positions or {}).items():
                self._advance(conn, run_id, producer, next_pseq)

    @staticmethod
    def _advance(conn: Connection, run_id: str, producer: str, next_pseq: int) -> None:
        where = (producers.c.run_id == run_id) & (producers.c.producer == producer)
        moved = conn.execute(
            update(producers).where(where, producers.c.next_pseq < next_pseq).values(next_pseq=next_pseq)
        ).rowcount
        if not moved and conn.execute(select(producers.c.next_pseq).where(where)).first() is None:
            conn.execute(insert(producers).values(run_id=run_id, producer=producer, next_pseq=next_pseq))

    @staticmethod
    def _patch_runs(conn: Connection, released: Iterable[EventRecord]) -> None:
        for run_id, patch in patches_for(released).items():
            values: dict[str, Any] = dict(patch.values)
            for column, n in patch.increments.items():
                values[column] = runs.c[column] + n
            if patch.metrics:
                stored = conn.execute(
                    select(runs.c.latest_metrics).where(runs.c.run_id == run_id)
                ).scalar_one_or_none()
                values["latest_metrics"] = merge_metrics(stored, patch.metrics)
            if values:
                conn.execute(update(runs).where(runs.c.run_id == run_id).values(**values))

    # ---- reads ----------------------------------------------------------------------------

    def last_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())

    def events_since(
        self,
        since: int,
        run_id: str | None = None,
        types: frozenset[str] | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[EventRecord]:
        """Stored events with ``since < seq`` (``< before`` if given), oldest first, at most ``limit``."""
        query = (
            select(events.c.seq, events.c.run_id, events.c.type, events.c.ts, events.c.body)
            .where(events.c.seq > since)
            .order_by(events.c.seq)
        )
        if before is not None:
            query = query.where(events.c.seq < before)
        if run_id is not None:
            query = query.where(events.c.run_id == run_id)
        if types is not None:
            query = query.where(events.c.type.in_(sorted(types)))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [
                EventRecord(row.seq, row.run_id, row.type, row.ts, row.body) for row in conn.execute(query)
            ]

    def producer_positions(self, run_id: str) -> dict[str, int]:
        """Each producer of the run and its next pseq (one past its last recorded event)."""
        query = select(producers.c.producer, producers.c.next_pseq).where(producers.c.run_id == run_id)
        with self.engine.connect() as conn:
            return {row.producer: int(row.next_pseq) for row in conn.execute(query)}

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's snapshot, or None when the store has no such run."""
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
        return None if row is None else snapshot_of_row(row)

    def list_runs(self, limit: int = RUNS_PAGE_DEFAULT, before: str | None = None) -> list[dict[str, Any]]:
        """Snapshots, newest first; ``before``: only runs created before that run (the next page).

        Raises KeyError when ``before`` names no stored run.
        """
        if not 1 <= limit <= RUNS_PAGE_MAX:
            raise ValueError(f"limit must be between 1 and {RUNS_PAGE_MAX}, got limit={limit}")
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.run_id.desc()).limit(limit)
        with self.engine.connect() as conn:
            if before is not None:
                anchor = conn.execute(
                    select(runs.c.created_at).where(runs.c.run_id == before)
                ).scalar_one_or_none()
                if anchor is None:
                    raise KeyError(before)
                query = query.where(
                    or_(
                        runs.c.created_at < anchor,
                        and_(runs.c.created_at == anchor, runs.c.run_id < before),
                    )
                )
            return [snapshot_of_row(row) for row in conn.execute(query).mappings()]

    def unfinished_runs(self) -> list[tuple[str, str | None, str | None]]:
        """(run_id, run_dir, owner) of the runs that started and have not ended, oldest first
        (queued runs are not among them: ``queued_runs``)."""
        query = (
            select(runs.c.run_id, runs.c.run_dir, runs.c.owner)
            .where(runs.c.state.in_(UNFINISHED_STATES))
            .order_by(runs.c.created_at)
        )
        with self.engine.connect() as conn:
            return [(row.run_id, row.run_dir, row.owner) for row in conn.execute(query)]

    def queued_runs(self) -> list[dict[str, Any]]:
        """The snapshots of the queued runs, in the order they were submitted."""
        query = (
            select(runs)
            .where(runs.c.state == RunState.QUEUED.value)
            .order_by(runs.c.created_at, runs.c.run_id)
        )
        with self.engine.connect() as conn:
            return [snapshot_of_row(row) for row in conn.execute(query).mappings()]

    # ---- the lease ------------------------------------------------------------------------

    def acquire_lease(self, owner: str, ttl_s: float = leases.LEASE_TTL_S) -> leases.Holder | None:
        """``lease.acquire`` in its own transaction (the previous holder if it was gone)."""
        with self.engine.begin() as conn:
            return leases.acquire(conn, owner, ttl_s=ttl_s)

    def heartbeat(self, owner: str) -> bool:
        with self.engine.begin() as conn:
            return leases.heartbeat(conn, owner)

    def release_lease(self, owner: str) -> None:
        with self.engine.begin() as conn:
            leases.release(conn, owner)

    def lease_holder(self) -> leases.Holder | None:
        with self.engine.connect() as conn:
            return leases.read_holder(conn)
