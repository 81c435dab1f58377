"""The long polls waiting on a hub: futures of any event loop, woken from any thread."""

from __future__ import annotations

import asyncio

__all__ = ["Waiters"]


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Waiters:
    """The futures of the polls waiting for the next event. Not locked: the hub calls it under its
    own lock, which is what keeps a wakeup from being missed."""

    def __init__(self) -> None:
        self._waiting: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, waiter: asyncio.Future[None]) -> None:
        self._waiting.add(waiter)

    def discard(self, waiter: asyncio.Future[None]) -> None:
        self._waiting.discard(waiter)

    def wake_all(self) -> None:
        """Resolve every waiting future, each on its own loop (at once on the running one)."""
        if not self._waiting:
            return
        waiters, self._waiting = self._waiting, set()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for waiter in waiters:
            loop = waiter.get_loop()
            if loop is running:
                _resolve(waiter)
            else:
                try:
                    loop.call_soon_threadsafe(_resolve, waiter)
                except RuntimeError:  # that poller's loop is closed
                    pass
