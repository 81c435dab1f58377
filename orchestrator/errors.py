"""One exception hierarchy for the orchestrator.

Every error a user can cause or meet derives from ``OrchestratorError``; its message is the
human-readable text that ends up in ``training_error`` and in REST 4xx bodies. Errors that cross
Ray keep their message because the driver unwraps ``RayTaskError.cause`` (see ``executors``).
``brief`` is how a message shows a value a client sent: its repr, cut short when it is long (a
10 MB field must not come back in its own error).
"""

from __future__ import annotations

__all__ = [
    "BRIEF_CHARS",
    "brief",
    "OrchestratorError",
    "ConfigError",
    "DataValidationError",
    "InsufficientDataError",
    "FoldFailedError",
    "RunCancelledError",
    "IllegalTransitionError",
    "StoreError",
]


BRIEF_CHARS = 80


def brief(value: object, limit: int = BRIEF_CHARS) -> str:
    """``repr(value)``, or for a long one its first ``limit`` characters and how long it was."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = (
        f"{len(value)} characters" if isinstance(value, (str, bytes)) else f"{len(text)} characters as text"
    )
    return f"{text[:limit]}... ({size})"


class OrchestratorError(Exception):
    """Base class: the message is shown to users as is."""


class ConfigError(OrchestratorError):
    """A configuration value is invalid; the message names the field and the value."""


class DataValidationError(OrchestratorError):
    """The input data is malformed; the message names the column and, where known, the row."""


class InsufficientDataError(DataValidationError):
    """Fewer usable samples than ``min_samples``."""

    def __init__(self, size: int, min_samples: int) -> None:
        self.size = size
        self.min_samples = min_samples
        super().__init__(f"dataset has {size} usable samples, fewer than min_samples={min_samples}")


class FoldFailedError(OrchestratorError):
    """A fold failed for good (a Python error inside it, or its worker died past max_retries)."""

    def __init__(self, fold_id: int, cause: str) -> None:
        self.fold_id = fold_id
        self.cause = cause
        super().__init__(f"fold {fold_id} failed: {cause}")


class RunCancelledError(OrchestratorError):
    """The run was cancelled by a user request."""


class IllegalTransitionError(OrchestratorError):
    """A state machine was asked for a transition it does not allow."""


class StoreError(OrchestratorError):
    """The job store cannot be used (unreachable, malformed, corrupt, locked, too new, read-only)."""
