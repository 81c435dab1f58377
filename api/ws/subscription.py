"""What one ``/ws`` client asked for (``?since=``, ``?run_id=``, ``?types=``) and which messages that takes.

Pure: a query mapping in, a ``Subscription`` out, or a ``SubscriptionError`` whose message names
the parameter (it becomes the 4400 close reason). ``run_id`` is one run's id, ``*`` (every run,
interleaved) or absent: the client follows one run at a time (``api.ws.follow``), so its queue
takes every run's events of its types plus each run's start and end, and its sender decides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from api.ws.fanout import Outgoing
from orchestrator.messages import CORE_TYPES, MESSAGE_TYPES, START_TYPES, TERMINAL_TYPES

__all__ = [
    "ALL_RUNS",
    "FOLLOW_CONTROL_TYPES",
    "QUERY_PARAMS",
    "Subscription",
    "SubscriptionError",
    "parse_types",
]

QUERY_PARAMS = ("since", "run_id", "types", "token")
_RUN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ALL_RUNS = "*"  # ?run_id=*: every run's events, interleaved
# What a following client's sender needs to see whatever its types: when runs start and end.
FOLLOW_CONTROL_TYPES = START_TYPES | TERMINAL_TYPES


class SubscriptionError(ValueError):
    """A query parameter of ``/ws`` is invalid; the message names it (it becomes the reason)."""


@dataclass(frozen=True)
class Subscription:
    """What one client asked for: resume point, one run (or ``*``, or none: follow), message types."""

    since: int | None = None
    run_id: str | None = None
    types: frozenset[str] = CORE_TYPES

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> Subscription:
        unknown = sorted(set(params) - set(QUERY_PARAMS))
        if unknown:
            raise SubscriptionError(
                f"unknown query parameter(s) {', '.join(unknown)}; known: {', '.join(QUERY_PARAMS)}"
            )
        since = None
        if "since" in params:
            raw = params["since"].strip()
            if not raw.isdigit():
                raise SubscriptionError(f"since must be an integer >= 0, got since={raw!r}")
            since = int(raw)
        run_id = None
        if "run_id" in params:
            run_id = params["run_id"].strip()
            if run_id != ALL_RUNS and not _RUN_ID.match(run_id):
                raise SubscriptionError(f"run_id must be 1-128 of [A-Za-z0-9_.:-] or *, got {run_id!r}")
        types = CORE_TYPES
        if "types" in params:
            types = parse_types(params["types"])
        return cls(since=since, run_id=run_id, types=types)

    @property
    def follows(self) -> bool:
        """No run named: the client follows one run at a time (``api.ws.follow``)."""
        return self.run_id is None

    @property
    def one_run(self) -> str | None:
        """The run id to filter the hub's events by: the named run, else None (every run)."""
        return None if self.run_id in (None, ALL_RUNS) else self.run_id

    def wants(self, item: Outgoing) -> bool:
        """Whether the client's queue takes ``item`` (a following client's sender filters again)."""
        if item.seq is None:  # server-made control messages (history_gap) go to everyone
            return self.one_run is None or item.run_id in (None, self.run_id)
        if self.one_run is not None and item.run_id != self.one_run:
            return False
        return item.type in self.types or (self.follows and item.type in FOLLOW_CONTROL_TYPES)


def parse_types(raw: str) -> frozenset[str]:
    """``a,b,c`` (or ``all``) as a set of message types; unknown names are an error naming them."""
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if not names:
        raise SubscriptionError("types is empty; give message types, e.g. types=epoch_metrics,notification")
    if names == ["all"]:
        return frozenset(MESSAGE_TYPES)
    unknown = [name for name in names if name not in MESSAGE_TYPES]
    if unknown:
        raise SubscriptionError(f"unknown message type(s) in types: {', '.join(unknown)} (see /ws/schema)")
    return frozenset(names)
