"""Shared fixtures. ``ray_session`` is a real single-node Ray instance for the whole session.

Ray token auth is on by default from 2.59; the variable is set here, at import, so it is in place
before any test module imports ray.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TEST_NAMESPACE = "test-orchestrator"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """``ray.init`` once (2 CPUs, no dashboard); shut down at the end of the session."""
    import ray

    ray.init(
        address="local",  # a new instance: never join a cluster that `ray start` left running
        num_cpus=2,
        include_dashboard=False,
        namespace=TEST_NAMESPACE,
        ignore_reinit_error=True,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def session_hub(ray_session: None) -> Any:
    """The test namespace's EventHub, held for the whole session.

    A named actor that is not detached dies when its last handle goes: a module that made the
    hub must not take it away from the next one (which could get a handle to the dying actor).
    """
    from orchestrator.events.actor import get_or_create_hub

    return get_or_create_hub(namespace=TEST_NAMESPACE)
