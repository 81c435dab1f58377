"""The finisher of pipelined HPO batches: one thread in order, held while the next batch starts,
and a run's driver work handed to it (``orchestrator.hpo.finisher``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from orchestrator.hpo.finisher import DeferredDriver, Finisher


def test_the_finisher_runs_in_order_waits_while_held_and_raises_the_first_error() -> None:
    finisher = Finisher("test-finish")
    done: list[int] = []
    finisher.hold()
    futures = [finisher.submit(done.append, n) for n in range(3)]
    time.sleep(0.2)
    assert done == [] and not any(f.done() for f in futures)  # held: nothing starts
    finisher.release()
    futures[-1].result(timeout=10)
    assert done == [0, 1, 2]

    def fail(message: str) -> None:
        raise RuntimeError(message)

    finisher.submit(fail, "first")
    finisher.submit(fail, "second")
    finisher.submit(done.append, 3)  # an error does not stop the items after it
    with pytest.raises(RuntimeError, match="first"):
        finisher.close()
    assert done == [0, 1, 2, 3]


def test_close_releases_a_held_finisher() -> None:
    finisher = Finisher("test-finish")
    done: list[int] = []
    finisher.hold()
    finisher.submit(done.append, 1)
    finisher.close()
    assert done == [1]


class FakeDriver:
    """A RunDriver's phases, recorded with the thread that ran them; fold 1's files fail."""

    def __init__(self) -> None:
        self.run: Any = object()
        self.trained_at: float | None = None
        self.calls: list[tuple[str, Any, str]] = []

    def prepare(self) -> Any:
        self.calls.append(("prepare", None, threading.current_thread().name))
        return "job"

    def on_result(self, result: Any) -> None:
        self.calls.append(("on_result", result, threading.current_thread().name))
        if result == 1:
            raise OSError("disk full")

    def finish(self, executor_name: str, error: BaseException | None) -> Any:
        self.calls.append(("finish", error, threading.current_thread().name))
        return self.run


def test_a_deferred_driver_hands_results_and_finish_to_the_finisher_and_a_failed_result_fails_the_run() -> (
    None
):
    finisher = Finisher("test-finish")
    driver = FakeDriver()
    deferred = DeferredDriver(driver, finisher)
    assert deferred.prepare() == "job"
    finisher.hold()
    for fold in (0, 1, 2):
        deferred.on_result(fold)
    before = time.time()
    assert deferred.finish("ray", None) is driver.run
    assert driver.trained_at is not None and driver.trained_at >= before  # the end of training, now
    assert [c[0] for c in driver.calls] == ["prepare"]  # the rest waits for the finisher
    finisher.close()
    assert [(c[0], c[1] if c[0] != "finish" else type(c[1])) for c in driver.calls] == [
        ("prepare", None),
        ("on_result", 0),
        ("on_result", 1),  # fails: fold 2 is not delivered, the run ends with the error
        ("finish", OSError),
    ]
    assert driver.calls[0][2] == threading.current_thread().name
    assert all(c[2].startswith("test-finish") for c in driver.calls[1:])


def test_a_deferred_finish_that_raises_is_logged_and_the_finisher_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(FakeDriver):
        def finish(self, executor_name: str, error: BaseException | None) -> Any:
            raise RuntimeError("a bug in finish")

    finisher = Finisher("test-finish")
    driver = Broken()
    driver.run = type("R", (), {"run_id": "r-broken"})()
    DeferredDriver(driver, finisher).finish("ray", None)
    after: list[int] = []
    finisher.submit(after.append, 1)
    finisher.close()  # does not raise: the study goes on
    assert after == [1]
    assert "r-broken" in caplog.text and "a bug in finish" in caplog.text
