"""The store's tables (prefixed ``orch_``, beside Optuna's in one database) and its schema version check.

``SCHEMA_VERSION`` goes up with every change of these tables. ``ensure_schema`` creates what is
missing and records the version; a database whose recorded version is newer than this code's is
refused (``StoreError``) before anything is written, so an old server never damages a new store.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from orchestrator.errors import StoreError

__all__ = [
    "PREFIX",
    "SCHEMA_VERSION",
    "metadata",
    "runs",
    "events",
    "producers",
    "lease",
    "schema_version",
    "ensure_schema",
]

PREFIX = "orch_"
SCHEMA_VERSION = 2  # 2: orch_producers

metadata = MetaData()

schema_version = Table(
    f"{PREFIX}schema_version",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1: one row
    Column("version", Integer, nullable=False),
)

runs = Table(
    f"{PREFIX}runs",
    metadata,
    Column("run_id", String(128), primary_key=True),
    Column("state", String(32), nullable=False),
    Column("config", Text, nullable=False),  # the TrainConfig as JSON
    Column("priority", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False, index=True),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("error", Text),
    Column("summary_path", Text),
    Column("run_dir", Text),
    Column("owner", String(256)),  # the lease owner whose hub recorded the run
    Column("folds_total", Integer, nullable=False, default=0),
    Column("folds_done", Integer, nullable=False, default=0),
    Column("epochs_done", Integer, nullable=False, default=0),
    Column("latest_metrics", Text),  # per fold, the last epoch_metrics without the envelope
)

events = Table(
    f"{PREFIX}events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("run_id", String(128), nullable=False, index=True),
    Column("type", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("body", Text, nullable=False),  # the event's JSON exactly as sent on /ws
)

# Where each producer's numbered stream stands in the store: its next pseq (one past the last
# recorded). A hub that Ray restarted continues each producer's order from here, so a publish
# call retried after the restart is recognised as a repeat, not released twice.
producers = Table(
    f"{PREFIX}producers",
    metadata,
    Column("run_id", String(128), primary_key=True),
    Column("producer", String(256), primary_key=True),
    Column("next_pseq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
)

lease = Table(
    f"{PREFIX}lease",
    metadata,
    Column("name", String(64), primary_key=True),  # "writer": one row
    Column("owner", String(256), nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("heartbeat", Float, nullable=False),
)


def ensure_schema(engine: Engine, where: str) -> None:
    """Create missing tables and record the version; refuse a store of a newer version.

    ``where`` names the store (its URL without password, or its file) in the error.
    """
    with engine.begin() as conn:
        schema_version.create(conn, checkfirst=True)
        found = conn.execute(select(schema_version.c.version)).scalar_one_or_none()
        if found is not None and found > SCHEMA_VERSION:
            raise StoreError(
                f"the job store {where} has schema version {found}, newer than this "
                f"orchestrator's {SCHEMA_VERSION}: upgrade the orchestrator or use another --db"
            )
        metadata.create_all(conn, checkfirst=True)  # an older store gets the tables it lacks
        if found is None:
            conn.execute(insert(schema_version).values(id=1, version=SCHEMA_VERSION))
        elif found < SCHEMA_VERSION:
            conn.execute(update(schema_version).values(version=SCHEMA_VERSION))
