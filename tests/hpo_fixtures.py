"""Studies on the real Ray session for the HPO tests: tiny synthetic bars, the hub, a warm pool.

Trials run on tiny synthetic AR(1) bars (1200 bars, 2 folds) so a warm trial takes about a second.
Each test module gets one ``WorkerPool`` whose per-fold share (0.5 CPU) fits 2 trials x 2 folds
on the session's 2 CPUs, so its fold actors stay warm from one study to the next. Test modules
load this with ``pytest_plugins = ["tests.hpo_fixtures"]``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from orchestrator.config import config_from_mapping
from orchestrator.events.record import EventRecord
from orchestrator.hpo import HpoSpec
from orchestrator.messages import message_json_schema
from tests.made_events import bodies
from tests.synthetic import ar1_ohlcv

VALIDATOR = jsonschema.Draft202012Validator(
    message_json_schema()
)  # compiled once: validate() re-checks the schema
GOOD = {"lr": 3e-3, "weight_decay": 1e-4}


def spec(**values: Any) -> HpoSpec:
    return HpoSpec.model_validate(values)


@pytest.fixture(scope="session")
def hpo_bars(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("hpo_data") / "bars.csv"
    ar1_ohlcv(1200, seed=11, phi=0.3).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="session")
def hpo_hub(ray_session: None) -> Any:
    """The default namespace's hub (the one an ``orchestrator hpo`` process of the session joins),
    held for the whole session so that no module takes it away from the next."""
    from orchestrator.events.actor import get_or_create_hub

    return get_or_create_hub()


@pytest.fixture(scope="module")
def hpo_pool(ray_session: None) -> Iterator[Any]:
    from orchestrator.execution.pool import WorkerPool

    shared = WorkerPool()
    yield shared
    shared.shutdown()


def base_config(bars: str, reports: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "data": bars,
        "reports_dir": str(reports),
        "min_samples": 300,
        "folds": 2,
        "epochs": 3,
        "lookback": 10,
        "cpus_per_fold": 0.5,
        **overrides,
    }


def make_spec(bars: str, reports: Path, config: dict[str, Any] | None = None, **values: Any) -> HpoSpec:
    return spec(config=config_from_mapping(config or base_config(bars, reports)), **values)


class Collector:
    """A study listener that keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, events: list[EventRecord]) -> None:
        with self._lock:
            self.events.extend(bodies(events))  # kept as the JSON the records carry

    def hpo(self, state: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "hpo_trial" and (state is None or e["state"] == state)]

    def endings(self) -> list[dict[str, Any]]:
        return [e for e in self.hpo() if e["state"] in ("complete", "pruned", "failed")]

    def of_run(self, run_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["run_id"] == run_id]
