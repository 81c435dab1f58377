"""The headless runner: the run executes on a thread while the event stream hands its events on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import config_from_mapping
from orchestrator.console.train import run_training
from orchestrator.events.record import EventRecord
from orchestrator.lifecycle import RunState
from orchestrator.messages import TERMINAL_TYPES
from tests.made_events import bodies
from tests.synthetic import ar1_ohlcv
from tests.test_pipeline import write_csv


def _config(tmp: Path, executor: str) -> Any:
    data = write_csv(tmp, ar1_ohlcv(1200, seed=4))
    return config_from_mapping(
        {
            "data": data,
            "reports_dir": str(tmp / "reports"),
            "executor": executor,
            "min_samples": 500,
            "folds": 2,
            "epochs": 2,
            "lookback": 10,
            "batch_size": 64,
            "batch_progress_interval_s": 0.01,
        }
    )


def _check_complete_stream(run: Any, batches: list[list[EventRecord]]) -> list[dict[str, Any]]:
    assert run.state is RunState.COMPLETED, run.error
    written = (Path(run.run_dir) / "events.jsonl").read_text().splitlines()
    assert [e.text for batch in batches for e in batch] == written  # the listener saw the run as recorded
    events = bodies(e for batch in batches for e in batch)
    assert all(batch for batch in batches)  # only non-empty batches are handed on
    assert {e["run_id"] for e in events} == {run.run_id}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert events[0]["type"] == "dataset_ready" and events[-1]["type"] == "training_complete"
    assert sum(e["type"] in TERMINAL_TYPES for e in events) == 1
    for fold in (0, 1):  # each fold's epochs in order, before its fold_complete
        kinds = {"epoch_metrics", "fold_complete"}
        mine = [e for e in events if e.get("fold_id") == fold and e["type"] in kinds]
        assert [(e["type"], e.get("epoch")) for e in mine] == [
            ("epoch_metrics", 0),
            ("epoch_metrics", 1),
            ("fold_complete", None),
        ]
    return events


def test_local_run_hands_every_event_to_the_listener_and_only_wanted_detail(tmp_path: Path) -> None:
    batches: list[list[EventRecord]] = []
    config = _config(tmp_path, "local")
    run = run_training(config, listener=batches.append, interest=frozenset({"batch_progress"}))
    events = _check_complete_stream(run, batches)
    kinds = {e["type"] for e in events}
    assert "batch_progress" in kinds and "prediction_delta" not in kinds


@pytest.mark.usefixtures("ray_session")
def test_ray_run_is_followed_to_its_last_event(tmp_path: Path) -> None:
    batches: list[list[EventRecord]] = []
    run = run_training(_config(tmp_path, "ray"), listener=batches.append)
    events = _check_complete_stream(run, batches)
    assert not {"batch_progress", "prediction_delta"} & {e["type"] for e in events}  # nobody asked
