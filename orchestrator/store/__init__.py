"""The job store: runs, their event log and the writer's lease in one SQL database (SQLAlchemy Core)."""

from orchestrator.errors import StoreError
from orchestrator.store.engine import DB_ENV, DB_FILE, default_url, open_engine
from orchestrator.store.jobstore import JobStore
from orchestrator.store.lease import LeaseHeldError, Owner

__all__ = [
    "DB_ENV",
    "DB_FILE",
    "JobStore",
    "LeaseHeldError",
    "Owner",
    "StoreError",
    "default_url",
    "open_engine",
]
