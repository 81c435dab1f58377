"""One transition helper for every explicit state machine (runs, studies, fold attempts, connections).

A machine is an enum plus a table of legal moves. ``StateTable.check`` is the only place a
transition is judged: an illegal one raises ``IllegalTransitionError`` naming the states the
machine expected to be in (STYLE 5, after Starlette's WebSocket states).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from orchestrator.errors import IllegalTransitionError

__all__ = ["StateTable"]

S = TypeVar("S", bound=enum.Enum)


class StateTable(Generic[S]):
    """The legal moves of one state machine; states without moves out are terminal."""

    def __init__(self, machine: str, legal: Mapping[S, Iterable[S]]) -> None:
        self.machine = machine
        self._legal: dict[S, frozenset[S]] = {state: frozenset(to) for state, to in legal.items()}
        self.terminal: frozenset[S] = frozenset(s for s, to in self._legal.items() if not to)

    def allows(self, current: S, new: S) -> bool:
        return new in self._legal[current]

    def check(self, current: S, new: S, subject: str | None = None) -> S:
        """``new`` if the machine may move there from ``current``; else IllegalTransitionError.

        The error names the state(s) the machine had to be in for the move, e.g.
        ``run r1: cannot go to running from completed: expected pending``.
        """
        if new in self._legal[current]:
            return new
        expected = sorted(str(s.value) for s, to in self._legal.items() if new in to)
        who = subject or self.machine
        raise IllegalTransitionError(
            f"{who}: cannot go to {new.value} from {current.value}: expected "
            f"{' or '.join(expected) if expected else 'nothing (no state leads there)'}"
        )
