"""events.jsonl: what the hub writes for a run, and the journal's own file handling."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from orchestrator.events.hub import EventHub
from orchestrator.events.journal import EVENTS_FILE, RunJournal
from orchestrator.messages import parse_message
from tests.made_events import complete, epoch, note
from tests.test_hub import RUN


def test_events_jsonl_holds_exactly_the_released_events(tmp_path: Path) -> None:
    hub = EventHub()
    hub.register_run(RUN, str(tmp_path))
    hub.publish(RUN, "driver", 1, note(1))  # buffered: not released, not written yet
    assert (tmp_path / "events.jsonl").read_text() == ""
    hub.publish(RUN, "driver", 0, {"type": "dataset_ready", "size": 5000, "min_samples": 2048})
    hub.publish(RUN, "driver", 1, note(1))  # duplicate: not written
    hub.publish("other-run", "driver", 0, note(0))  # not this run's file
    hub.publish(RUN, "fold-0", 0, epoch(0, 0, val_auc=float("nan")))
    hub.publish(RUN, "driver", 2, complete())
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    written = [json.loads(line) for line in lines]
    assert lines == [record.text for record in hub.run_events(RUN)]  # each record's text, byte for byte
    assert [e["type"] for e in written] == [
        "dataset_ready",
        "notification",
        "epoch_metrics",
        "training_complete",
    ]
    assert written[2]["val_auc"] is None
    assert parse_message(lines[0]).model_dump()["seq"] == 1  # valid against the wire contract
    assert "NaN" not in lines[2]


def test_events_released_before_registration_are_written_at_registration(tmp_path: Path) -> None:
    hub = EventHub()
    hub.publish(RUN, "driver", 0, note(0))
    hub.register_run(RUN, str(tmp_path))
    hub.publish(RUN, "driver", 1, note(1))
    written = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["message"] for e in written] == ["0", "1"]
    hub.publish(RUN, "driver", 2, complete())  # the run's end closes its file


def test_io_error_does_not_break_publishing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the run folder should be")
    hub = EventHub()
    hub.register_run(RUN, str(blocker / "run"))
    assert len(hub.publish(RUN, "driver", 0, note(0))) == 1
    assert len(hub.publish(RUN, "driver", 1, note(1))) == 1
    assert hub.stats()["io_errors"] == 1  # logged once, then the file is left alone


def test_journal_appends_lines_and_reopens_after_close(tmp_path: Path) -> None:
    failures: list[int] = []
    journal = RunJournal("r", str(tmp_path / "run"), lambda: failures.append(1))
    assert journal.path == str(tmp_path / "run" / EVENTS_FILE)
    journal.write(['{"a":1}', '{"a":2}'])
    journal.flush()
    assert (tmp_path / "run" / EVENTS_FILE).read_text() == '{"a":1}\n{"a":2}\n'
    journal.close()
    journal.write(['{"a":3}'])  # a late line reopens the file for appending
    journal.close()
    assert (tmp_path / "run" / EVENTS_FILE).read_text().splitlines()[-1] == '{"a":3}'
    assert failures == []


def test_journal_without_a_folder_writes_nothing(tmp_path: Path) -> None:
    journal = RunJournal("r", None, lambda: None)
    assert journal.path is None and journal.open() is False
    journal.write(["x"])
    journal.flush()
    journal.close()
    assert list(tmp_path.iterdir()) == []


def test_journal_failure_is_reported_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    failures: list[int] = []
    journal = RunJournal("r", str(blocker / "run"), lambda: failures.append(1))
    with caplog.at_level(logging.ERROR, logger="orchestrator.events.journal"):
        journal.write(["x"])
        journal.write(["y"])  # left alone after the first failure
        assert journal.open() is False
    assert failures == [1]
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
