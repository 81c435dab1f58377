"""After a server restart on a cluster: the store's unfinished runs followed again where their
coordinator still runs, ended as interrupted where it is gone."""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.config import TrainConfig
from orchestrator.events.record import body_json
from orchestrator.jobs.coordinator import find_coordinator
from orchestrator.jobs.manager import RunManager
from orchestrator.lifecycle import FOLLOWED_TYPES, INTERRUPTED_PREFIX, Run
from orchestrator.messages import TrainingError
from orchestrator.store import JobStore

__all__ = ["reattach_runs"]

log = logging.getLogger(__name__)


def reattach_runs(store: JobStore, manager: RunManager, hub: Any, namespace: str) -> list[str]:
    """After a restart on a cluster: follow each unfinished run of the store whose coordinator
    still runs, and end the others as interrupted (their coordinator, or the process that ran
    them, is gone). Call it once this server follows the hub: a followed run's mirror is rebuilt
    from the hub's events (the store's beyond its memory), replayed again after adoption for
    what came meanwhile (a mirror takes an event twice without counting it twice).
    Returns the runs followed again."""
    import ray

    followed = []
    for run_id, run_dir, owner in store.unfinished_runs():
        snapshot = store.get_run(run_id)
        handle = find_coordinator(run_id, namespace)
        if handle is None or snapshot is None:
            error = f"{INTERRUPTED_PREFIX}its coordinator (run by {owner or 'unknown'}) is gone"
            ray.get(hub.publish.remote(run_id, "reattach", 0, body_json(TrainingError(error=error))))
            continue
        run = Run(
            run_id=run_id,
            config=TrainConfig.model_validate(snapshot["config"]),
            run_dir=run_dir or snapshot["run_dir"],
            created_at=snapshot["created_at"],
        )
        since = _replay(run, hub, 0)
        manager.adopt(run, handle)
        _replay(run, hub, since)
        followed.append(run_id)
    if followed:
        log.warning("following %d run(s) again: %s", len(followed), ", ".join(followed))
    return followed


def _replay(run: Run, hub: Any, since: int) -> int:
    import ray

    events, _ = ray.get(hub.events_since.remote(since, run.run_id, FOLLOWED_TYPES, None))
    for event in events:
        run.observe(event.message)
        run.follow(event.message)
    return events[-1].seq if events else since
