"""The fold scheduler driven with plain values: launch order, retries, failures, cancel,
placement timeouts, and the attempt state machine."""

from __future__ import annotations

import pytest

from orchestrator.errors import (
    FoldFailedError,
    IllegalTransitionError,
    OrchestratorError,
    RunCancelledError,
)
from orchestrator.execution.placement import ResourceShape
from orchestrator.execution.scheduler import (
    AttemptState,
    EndRun,
    FoldAttempt,
    FoldScheduler,
    Launch,
    Requeue,
    Retry,
    RetryPolicy,
    Train,
)

SHAPE = ResourceShape(num_cpus=1, num_gpus=0.5, memory=None)
FREE = {"CPU": 3.0, "GPU": 0.0}


def scheduler(
    folds: int = 3,
    *,
    limit: int = 2,
    max_retries: int = 1,
    timeout: float = 60,
    scale_up: tuple[str, ...] = (),
) -> FoldScheduler:
    return FoldScheduler(
        "run-1",
        range(folds),
        limit=limit,
        policy=RetryPolicy(max_retries, timeout),
        shape=SHAPE,
        scale_up=scale_up,
    )


def run_to_training(s: FoldScheduler, fold_id: int) -> None:
    assert s.started(fold_id) == Train(fold_id, 0)


def never_asked(fold_id: int) -> bool:
    raise AssertionError(f"fold {fold_id}: placed() asked within the placement timeout")


def no_free() -> dict[str, float]:
    raise AssertionError("free() asked though nothing ends the run")


# ---- launches --------------------------------------------------------------------------------


def test_folds_launch_in_order_up_to_the_limit() -> None:
    s = scheduler(folds=4, limit=2)
    assert s.launches() == [Launch(0, 0), Launch(1, 0)]
    assert s.launches() == []  # both slots taken, placing or running
    run_to_training(s, 0)
    assert s.launches() == []
    s.succeeded(0)
    assert s.launches() == [Launch(2, 0)]
    assert not s.finished
    for fold_id in (1, 2):
        run_to_training(s, fold_id)
        s.succeeded(fold_id)
    assert s.launches() == [Launch(3, 0)]
    run_to_training(s, 3)
    s.succeeded(3)
    assert s.finished and s.launches() == []


def test_the_limit_must_allow_one_fold() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1, got limit=0"):
        scheduler(limit=0)


# ---- retries of dead workers -----------------------------------------------------------------


def test_a_dead_worker_is_retried_first_as_the_next_attempt() -> None:
    s = scheduler(folds=3, limit=2, max_retries=2)
    s.launches()
    run_to_training(s, 0)
    run_to_training(s, 1)
    decision = s.worker_died(1, pid=4242, error="ActorDiedError: killed", capacity=2)
    assert isinstance(decision, Retry)
    assert (decision.fold_id, decision.attempt) == (1, 1)
    notice = decision.notice
    assert (notice.type, notice.level, notice.kind) == ("notification", "warning", "fold_retry")
    assert (notice.fold_id, notice.attempt) == (1, 2)
    assert notice.message == (
        "fold 1: its worker process (pid 4242) died: ActorDiedError: killed; retrying from the "
        "start, attempt 2 of 3"
    )
    # The retried fold goes before fold 2, which has waited in the queue since the start.
    assert s.launches() == [Launch(1, 1)]
    assert s.started(1) == Train(1, 1)


def test_retries_stop_at_max_retries_and_the_run_fails_naming_the_fold() -> None:
    s = scheduler(folds=1, limit=1, max_retries=1)
    s.launches()
    run_to_training(s, 0)
    assert isinstance(s.worker_died(0, pid=10, error="died", capacity=1), Retry)
    assert s.launches() == [Launch(0, 1)]
    assert s.started(0) == Train(0, 1)
    decision = s.worker_died(0, pid=11, error="died again", capacity=1)
    assert isinstance(decision, EndRun)
    assert isinstance(decision.error, FoldFailedError) and decision.error.fold_id == 0
    assert str(decision.error) == (
        "fold 0 failed: its worker process (pid 11) died: died again; no retry left after "
        "2 attempt(s) (max_retries=1)"
    )
    assert s.launches() == [] and not s.finished


def test_without_retries_the_first_death_fails_the_run() -> None:
    s = scheduler(folds=2, max_retries=0)
    s.launches()
    run_to_training(s, 1)
    decision = s.worker_died(1, pid=None, error="OOM", capacity=2)
    assert isinstance(decision, EndRun)
    assert "max_retries=0" in str(decision.error) and "(pid None)" in str(decision.error)


def test_a_lost_node_lowers_the_limit_to_what_the_cluster_holds() -> None:
    s = scheduler(folds=4, limit=3, max_retries=3)
    s.launches()
    for fold_id in (0, 1, 2):
        run_to_training(s, fold_id)
    assert isinstance(s.worker_died(0, pid=1, error="node died", capacity=2), Retry)
    assert s.limit == 2
    assert s.launches() == []  # two folds still train: no room for the retry yet
    s.succeeded(1)
    assert s.launches() == [Launch(0, 1)]
    assert isinstance(s.worker_died(2, pid=2, error="x", capacity=5), Retry)
    assert s.limit == 2  # never raised again within the run


# ---- workers that die while starting -------------------------------------------------------


def test_a_worker_dying_while_starting_is_replaced_without_a_new_attempt() -> None:
    policy = RetryPolicy(max_retries=0, placement_timeout_s=60, max_start_failures=2)
    s = FoldScheduler("run-1", [0, 1], limit=1, policy=policy, shape=SHAPE)
    assert s.launches() == [Launch(0, 0)]
    for _ in range(2):
        assert s.start_failed(0, "RayActorError: gone") is None
        assert s.launches() == [Launch(0, 0)]  # back in front, the same attempt
    decision = s.start_failed(0, "RayActorError: gone")
    assert isinstance(decision, EndRun)
    assert str(decision.error) == ("fold 0 failed: 3 workers died while starting (RayActorError: gone)")


# ---- Python errors and cancel --------------------------------------------------------------


def test_a_python_error_in_a_fold_fails_the_run_without_retry() -> None:
    s = scheduler(folds=2, max_retries=5)
    s.launches()
    run_to_training(s, 0)
    decision = s.fold_raised(0, "NonFiniteLossError: loss is nan", cancelled=False)
    assert isinstance(decision.error, FoldFailedError)
    assert str(decision.error) == "fold 0 failed: NonFiniteLossError: loss is nan"
    with pytest.raises(IllegalTransitionError, match="cannot go to running from failed"):
        s.started(0)
    s.stop()
    assert s.launches() == []
    with pytest.raises(IllegalTransitionError, match="cannot go to running from cancelled"):
        s.started(1)  # it was placing when the run ended


def test_a_fold_stopping_on_the_cancel_ends_the_run_as_cancelled() -> None:
    s = scheduler(folds=1, limit=1)
    s.launches()
    run_to_training(s, 0)
    decision = s.fold_raised(0, "run run-1 was cancelled", cancelled=True)
    assert type(decision.error) is RunCancelledError
    assert str(decision.error) == "run run-1 was cancelled"


def test_cancel_ends_the_run_and_stop_cancels_every_live_attempt() -> None:
    s = scheduler(folds=3, limit=2)
    s.launches()
    run_to_training(s, 0)
    s.succeeded(0)
    s.launches()
    decision = s.cancel_requested()
    assert type(decision.error) is RunCancelledError
    assert str(decision.error) == "run run-1 was cancelled"
    s.stop()
    assert s.launches() == [] and not s.finished
    with pytest.raises(IllegalTransitionError, match="fold 1 attempt 0: cannot go to running from cancelled"):
        s.started(1)
    with pytest.raises(
        IllegalTransitionError, match="fold 0 attempt 0: cannot go to succeeded from succeeded"
    ):
        s.succeeded(0)


# ---- placement timeouts --------------------------------------------------------------------


def test_nothing_happens_within_the_placement_timeout() -> None:
    s = scheduler(timeout=60)
    s.launches()
    assert s.check_placement({0: 59.9, 1: 60.0}, placed=never_asked, free=no_free) == []


def test_a_placed_worker_still_starting_gets_the_start_timeout() -> None:
    s = scheduler(timeout=1)
    s.launches()
    assert s.check_placement({0: 30.0}, placed=lambda fold_id: True, free=no_free) == []
    decisions = s.check_placement({0: 601.0}, placed=lambda fold_id: True, free=lambda: FREE)
    assert len(decisions) == 1 and isinstance(decisions[0], EndRun)


def test_a_worker_without_a_place_fails_the_run_naming_the_autoscaler() -> None:
    s = scheduler(timeout=60, scale_up=("gpu.1x",))
    s.launches()
    decisions = s.check_placement({0: 61.4}, placed=lambda fold_id: False, free=lambda: FREE)
    assert len(decisions) == 1 and isinstance(decisions[0], EndRun)
    error = decisions[0].error
    assert type(error) is OrchestratorError
    assert str(error).startswith(
        "the worker of fold 0 was not up after 61 s (placement_timeout_s=60): each fold needs "
        "cpus_per_fold=1, gpus_per_fold=0.5 and the cluster has {'CPU': 3, 'GPU': 0} free; "
        "the autoscaler did not provide a node of type gpu.1x in time"
    ), error


def test_with_folds_training_an_unplaced_fold_waits_for_them() -> None:
    s = scheduler(folds=4, limit=3)
    s.launches()
    run_to_training(s, 0)
    decisions = s.check_placement({1: 61.0, 2: 62.0}, placed=lambda fold_id: False, free=no_free)
    assert decisions == [Requeue(1), Requeue(2)]
    assert s.limit == 1  # one fold in flight when the last one went back to the queue
    assert s.launches() == []
    s.succeeded(0)
    assert s.launches() == [Launch(2, 0)]  # the last requeued is in front
    run_to_training(s, 2)
    s.succeeded(2)
    assert s.launches() == [Launch(1, 0)]


# ---- the attempt state machine -------------------------------------------------------------


def test_an_illegal_transition_names_the_state_it_expected() -> None:
    attempt = FoldAttempt(fold_id=2, number=1)
    with pytest.raises(IllegalTransitionError) as caught:
        attempt.transition(AttemptState.SUCCEEDED)
    assert str(caught.value) == ("fold 2 attempt 1: cannot go to succeeded from pending: expected running")
    attempt.transition(AttemptState.PLACING)
    with pytest.raises(IllegalTransitionError, match="expected running$"):
        attempt.transition(AttemptState.FAILED_RETRYABLE)
    attempt.transition(AttemptState.PENDING)  # back in the queue: its worker never came up
    assert attempt.state is AttemptState.PENDING


def test_every_terminal_state_is_final() -> None:
    terminal = (
        AttemptState.SUCCEEDED,
        AttemptState.FAILED_RETRYABLE,
        AttemptState.FAILED,
        AttemptState.CANCELLED,
    )
    # every state but the live ones (a new state must be placed on one side or the other)
    assert set(AttemptState) - set(terminal) == {
        AttemptState.PENDING,
        AttemptState.PLACING,
        AttemptState.RUNNING,
    }
    for state in terminal:
        attempt = FoldAttempt(0, state=state)
        for new in AttemptState:
            with pytest.raises(IllegalTransitionError, match=f"cannot go to {new.value} from {state.value}"):
                attempt.transition(new)


def test_longest_fold_is_launched_first() -> None:
    from orchestrator.config import FoldSpec, Segment
    from orchestrator.execution.scheduler import longest_first

    def spec(fold_id: int, train: int) -> FoldSpec:
        return FoldSpec(
            fold_id, Segment(0, train), Segment(train + 5, train + 15), Segment(train + 20, train + 40)
        )

    # expanding windows: later folds train on more samples
    specs = [spec(0, 100), spec(1, 200), spec(2, 300), spec(3, 300)]
    assert longest_first(specs) == [2, 3, 1, 0]
    s = FoldScheduler(
        "run-1",
        longest_first(specs),
        limit=2,
        policy=RetryPolicy(max_retries=1, placement_timeout_s=60.0),
        shape=scheduler(folds=1).shape,
    )
    assert [d.fold_id for d in s.launches()] == [2, 3]


def test_the_launch_order_lets_the_last_fold_end_soonest() -> None:
    import itertools

    from orchestrator.config import FoldSpec, Segment
    from orchestrator.execution.scheduler import _makespan, fold_cost, launch_order, longest_first

    def spec(fold_id: int, train: int) -> FoldSpec:
        return FoldSpec(
            fold_id, Segment(0, train), Segment(train + 5, train + 15), Segment(train + 20, train + 40)
        )

    # five near-equal expanding-window folds on two workers (the 1M-row benchmark's shape)
    specs = [spec(i, train) for i, train in enumerate([160, 190, 220, 220, 250])]
    cost = {s.fold_id: fold_cost(s) for s in specs}
    assert cost == {0: 510, 1: 600, 2: 690, 3: 690, 4: 780}
    lpt, best = longest_first(specs), launch_order(specs, 2)
    assert lpt == [4, 2, 3, 1, 0] and _makespan(lpt, cost, 2) == 1890
    # the best two-worker split: one worker takes 780 and 690, the other 690, 600 and 510
    optimum = min(
        max(sum(cost[f] for f in group), sum(cost.values()) - sum(cost[f] for f in group))
        for n in range(6)
        for group in itertools.combinations(cost, n)
    )
    assert _makespan(best, cost, 2) == optimum == 1800
    assert sorted(best) == [0, 1, 2, 3, 4] and best[0] == 4
    # nothing to gain: one worker, as many workers as folds, or too many folds to try every order
    assert launch_order(specs, 1) == lpt and launch_order(specs, 5) == lpt
    many = [spec(i, 100 + 10 * i) for i in range(9)]
    assert launch_order(many, 2) == longest_first(many)
