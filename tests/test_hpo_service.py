"""Studies for the API: start, status, cancel on the real Ray session; the handle's states."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import IllegalTransitionError
from orchestrator.hpo import HpoService, HpoSpec, StudyHandle, StudyState, UnknownStudyError

pytest.register_assert_rewrite("tests.hpo_fixtures")
from tests.hpo_fixtures import base_config, make_spec  # noqa: E402

pytest_plugins = ["tests.hpo_fixtures"]


def test_handle_state_moves_only_through_its_transitions() -> None:
    handle = StudyHandle(spec=HpoSpec.model_validate({"study": "h"}))
    assert handle.state is StudyState.PENDING and not handle.done
    handle.advance(StudyState.RUNNING)
    with pytest.raises(IllegalTransitionError, match="expected pending"):
        handle.advance(StudyState.RUNNING)
    handle.advance(StudyState.COMPLETED)
    assert handle.done and not handle.cancel()
    with pytest.raises(IllegalTransitionError, match="cannot go to failed from completed"):
        handle.advance(StudyState.FAILED)


def test_unknown_study(tmp_path: Path) -> None:
    service = HpoService(reports_dir=str(tmp_path))
    with pytest.raises(UnknownStudyError, match="no study 'nope' was started"):
        service.get("nope")
    with pytest.raises(UnknownStudyError, match="no study 'nope'"):
        service.status("nope")


def test_service_start_status_cancel(hpo_bars: str, hpo_hub: Any, hpo_pool: Any, tmp_path: Path) -> None:
    service = HpoService(hpo_hub, pool=hpo_pool, reports_dir=str(tmp_path))
    config = base_config(hpo_bars, tmp_path, epochs=40, patience=40)
    spec = make_spec(hpo_bars, tmp_path, config, study="svc", trials=5, parallel=1, pruner="none")
    handle = service.start(spec)
    with pytest.raises(Exception, match="already running"):
        service.start(spec)
    deadline = time.monotonic() + 120
    while service.status("svc").get("trials_running", 0) < 1:
        assert time.monotonic() < deadline and not handle.done
        time.sleep(0.2)
    service.cancel("svc")
    result = handle.wait(60)
    assert result is not None and result.state is StudyState.CANCELLED
    status = service.status("svc")
    assert status["state"] == "cancelled" and status["trials_done"] == 1
    assert status["trials"][0]["state"] == "fail"
    assert status["trials"][0]["error"] == "cancelled with the study"
    json.dumps(status, allow_nan=False)
    assert service.studies()[0]["state"] == "cancelled"
    # a study known only from its storage (e.g. after a server restart) can still be read
    fresh = HpoService(hpo_hub, pool=hpo_pool, reports_dir=str(tmp_path))
    assert fresh.status("svc")["state"] == "idle"
    assert fresh.status("svc")["trials"] == status["trials"]
