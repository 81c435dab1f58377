"""A study session's states and the one rule for moving between them (STYLE 5)."""

from __future__ import annotations

import enum

from orchestrator.errors import IllegalTransitionError

__all__ = ["StudyState", "TERMINAL_STUDY_STATES", "study_transition"]


class StudyState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL_STUDY_STATES = frozenset({StudyState.COMPLETED, StudyState.CANCELLED, StudyState.FAILED})
_LEGAL: dict[StudyState, frozenset[StudyState]] = {
    StudyState.PENDING: frozenset({StudyState.RUNNING, StudyState.FAILED, StudyState.CANCELLED}),
    StudyState.RUNNING: TERMINAL_STUDY_STATES,
    StudyState.COMPLETED: frozenset(),
    StudyState.CANCELLED: frozenset(),
    StudyState.FAILED: frozenset(),
}


def study_transition(study: str, current: StudyState, new: StudyState) -> StudyState:
    """``new`` when the move from ``current`` is legal; else IllegalTransitionError naming the
    state(s) the study was expected to be in."""
    if new not in _LEGAL[current]:
        expected = [s.value for s, targets in _LEGAL.items() if new in targets]
        raise IllegalTransitionError(
            f"study {study}: cannot go from {current.value} to {new.value}; expected the study "
            f"to be {' or '.join(expected) or 'nothing (it is never entered)'}"
        )
    return new
