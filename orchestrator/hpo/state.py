"""A study session's states and their legal moves, judged by the shared ``StateTable`` (STYLE 5)."""

from __future__ import annotations

import enum

from orchestrator.states import StateTable

__all__ = ["StudyState", "STUDY_STATES", "TERMINAL_STUDY_STATES", "study_transition"]


class StudyState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


STUDY_STATES = StateTable(
    "study",
    {
        StudyState.PENDING: {StudyState.RUNNING, StudyState.FAILED, StudyState.CANCELLED},
        StudyState.RUNNING: {StudyState.COMPLETED, StudyState.CANCELLED, StudyState.FAILED},
        StudyState.COMPLETED: (),
        StudyState.CANCELLED: (),
        StudyState.FAILED: (),
    },
)
TERMINAL_STUDY_STATES = STUDY_STATES.terminal


def study_transition(study: str, current: StudyState, new: StudyState) -> StudyState:
    """``new`` when the move from ``current`` is legal; else IllegalTransitionError naming the
    state(s) the study was expected to be in."""
    return STUDY_STATES.check(current, new, f"study {study}")
