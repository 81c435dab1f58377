"""A study session's states: the legal moves, and the error that names the expected state."""

from __future__ import annotations

import pytest

from orchestrator.errors import IllegalTransitionError
from orchestrator.hpo.state import StudyState, study_transition


def test_a_session_runs_then_ends_once() -> None:
    state = study_transition("s", StudyState.PENDING, StudyState.RUNNING)
    assert study_transition("s", state, StudyState.CANCELLED) is StudyState.CANCELLED
    assert study_transition("s", StudyState.PENDING, StudyState.FAILED) is StudyState.FAILED


@pytest.mark.parametrize(
    ("current", "new", "needle"),
    [
        (StudyState.RUNNING, StudyState.RUNNING, "expected pending"),
        (StudyState.COMPLETED, StudyState.FAILED, "expected pending or running"),
        (StudyState.PENDING, StudyState.COMPLETED, "expected running"),
        (StudyState.RUNNING, StudyState.PENDING, "no state leads there"),
    ],
)
def test_an_illegal_move_names_the_expected_state(current: StudyState, new: StudyState, needle: str) -> None:
    with pytest.raises(
        IllegalTransitionError, match=f"study s: cannot go to {new.value} from {current.value}"
    ) as info:
        study_transition("s", current, new)
    assert needle in str(info.value)
