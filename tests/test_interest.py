"""Live detail only for a live audience: consumers declare the types they deliver, folds ask.

Per-epoch ``prediction_delta`` (a calibration of the fold per epoch) and ``batch_progress`` are
optional work; a fold does it only while some consumer (a /ws client's subscription through the
pump, an ``--events-out`` file, a listener) takes that type, the final delta of each fold too
(its rows are in the predictions CSV either way). Skipping the live detail never changes a result.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray

from api.hub_client import LocalHubClient
from api.pump import EventPump
from orchestrator.config import config_from_mapping
from orchestrator.driver import execute_run, new_run
from orchestrator.execution.local import LocalExecutor
from orchestrator.hub import EventHub, HubPublisher, get_or_create_hub
from orchestrator.lifecycle import RunState
from orchestrator.sinks import InProcessSink
from tests.synthetic import ar1_ohlcv
from tests.test_pipeline import write_csv


def test_interest_is_the_union_of_unexpired_declarations() -> None:
    hub = EventHub()
    assert hub.wanted() == frozenset()
    hub.note_interest({"prediction_delta"}, 0.3)
    hub.note_interest({"batch_progress", "prediction_delta"}, 30)
    assert hub.wanted() == {"prediction_delta", "batch_progress"}
    hub.note_interest({"chart_update"}, 0.2)
    time.sleep(0.35)
    assert hub.wanted() == {"prediction_delta", "batch_progress"}  # the longer hold wins


def test_a_poll_declares_interest_for_its_timeout_plus_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.hub as hub_module

    monkeypatch.setattr(hub_module, "INTEREST_GRACE_S", 0.2)
    hub = EventHub()
    asyncio.run(hub.poll(0, 0.1, interest=frozenset({"batch_progress"})))
    assert hub.wanted() == {"batch_progress"}
    time.sleep(0.35)
    assert hub.wanted() == frozenset()
    asyncio.run(hub.poll(0, 0))  # a poll without interest (a replay page) declares nothing
    assert hub.wanted() == frozenset()


class _Client:
    def __init__(self, types: frozenset[str]) -> None:
        self.types = types
        self.items: list[Any] = []

    def offer(self, item: Any) -> None:
        self.items.append(item)


def test_pump_declares_its_clients_types_at_once_and_while_polling() -> None:
    hub = EventHub()

    async def scenario() -> frozenset[str]:
        pump = EventPump(LocalHubClient(hub), poll_timeout_s=5)
        await pump.start()
        await asyncio.sleep(0.05)
        assert hub.wanted() == frozenset()  # no client: nothing optional is wanted
        pump.add(_Client(frozenset({"epoch_metrics"})))
        pump.add(_Client(frozenset({"prediction_delta", "notification"})))
        await asyncio.sleep(0.05)  # no event came, so no new poll: add() told the hub itself
        assert pump.interest == {"epoch_metrics", "prediction_delta", "notification"}
        wanted = hub.wanted()
        await pump.stop()
        return wanted

    assert {"prediction_delta", "notification"} <= asyncio.run(scenario())


def _run(tmp: Path, data: str, interest: frozenset[str]) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    config = config_from_mapping({
        "data": data, "reports_dir": str(tmp / "reports"), "executor": "local", "min_samples": 500,
        "folds": 2, "epochs": 3, "lookback": 10, "batch_size": 32, "batch_progress_interval_s": 0.01,
    })  # fmt: skip
    run = new_run(config)
    execute_run(run, InProcessSink(listener=events.extend, interest=interest), LocalExecutor())
    assert run.state is RunState.COMPLETED, run.error
    return run, events


def test_unwatched_run_skips_live_detail_and_gets_the_same_results(tmp_path: Path) -> None:
    data = write_csv(tmp_path, ar1_ohlcv(1800, seed=5))
    watched, watched_events = _run(tmp_path / "w", data, frozenset({"prediction_delta", "batch_progress"}))
    alone, alone_events = _run(tmp_path / "a", data, frozenset())

    def kinds(events: list[dict[str, Any]]) -> list[str]:
        return [e["type"] for e in events]

    assert "batch_progress" in kinds(watched_events) and "batch_progress" not in kinds(alone_events)
    live = [e for e in watched_events if e["type"] == "prediction_delta" and not e["final"]]
    assert {e["epoch"] for e in live} == {0, 1, 2}
    finals = [e for e in watched_events if e["type"] == "prediction_delta" and e["final"]]
    assert {e["fold_id"] for e in finals} == {0, 1}
    assert not [e for e in alone_events if e["type"] == "prediction_delta"]
    for fold in (0, 1):
        alone_csv = pd.read_csv(next(Path(alone.run_dir).rglob(f"predictions_fold_{fold}_*.csv")))
        watched_csv = pd.read_csv(next(Path(watched.run_dir).rglob(f"predictions_fold_{fold}_*.csv")))
        # the audience changes what is sent, never what is computed
        pd.testing.assert_frame_equal(alone_csv, watched_csv)
        sent = [e for e in watched_events if e["type"] == "prediction_delta" and e["fold_id"] == fold]
        rows = {r["timestamp"] for e in sent for r in e["predictions"]}
        assert len(rows) == int((alone_csv.segment == "validation").sum())


@pytest.mark.usefixtures("ray_session")
def test_ray_publisher_follows_the_hubs_interest() -> None:
    from tests.test_hub_ray import session_namespace

    hub = get_or_create_hub(namespace=session_namespace())
    kind = f"test_interest_{time.time_ns()}"  # a type no other test declares on the shared hub
    publisher = HubPublisher(hub, "interest-run", "fold-0")
    assert publisher.wants(kind) is False  # the first answer: waited for
    ray.get(hub.note_interest.remote(frozenset({kind}), 30.0), timeout=60)
    deadline = time.monotonic() + 10
    while not publisher.wants(kind):  # later answers refresh in the background
        assert time.monotonic() < deadline, "the publisher never saw the new interest"
        time.sleep(0.05)
