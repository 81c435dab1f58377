"""Folds end to end (scale, train, calibrate, conformal, score), one or a pack at a time, and the
thin actor over them.

``iter_pack`` trains the folds a worker holds as one stacked model (``workers.packed``) when there
are several, or alone with ``workers.train.fit``: each fold keeps its own scaling, seed, dropout
generator, learning rate, early stopping and best state, so the results equal training them one by
one, and yields each fold's outcome as soon as it is scored (``run_pack``: all of them as a list).
``run_fold`` is a pack of one. ``FoldTrainer`` is a plain class around them that keeps torch
imported between runs and carries per-run cancel flags: the local executor calls it in-process,
the Ray executor applies ``ray.remote`` to it where it launches actors (the same code runs in
both). A fold publishes ``epoch_metrics`` (and, for a live audience, ``batch_progress`` and
``prediction_delta``) through its own publisher and comes back as a ``FoldResult`` (or a
``FoldFailure``); the driver writes the files and publishes ``fold_complete`` (files are written
on the head side, DESIGN 7). Torch is imported only inside the functions: the driver imports this
module for ``FoldResult``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

from orchestrator.config import FoldSpec, TrainConfig
from orchestrator.errors import RunCancelledError
from workers.features import FeatureSet
from workers.fold_types import FoldContext, FoldFailure, FoldOutcome, FoldResult, PackMember, Publisher
from workers.member import FoldMember, train_settings

if TYPE_CHECKING:
    import torch

    from workers.train import TrainOutcome

__all__ = [
    "FoldTrainer",
    "FoldResult",
    "FoldFailure",
    "FoldOutcome",
    "FoldContext",
    "PackMember",
    "Publisher",
    "run_fold",
    "iter_pack",
    "run_pack",
    "train_settings",
]


def _device_for(config: TrainConfig) -> torch.device:
    import torch

    # An actor sees only the GPUs Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES per actor).
    if config.gpus_per_fold > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _never(run_id: str) -> bool:
    return False


def _prepare_device(config: TrainConfig) -> torch.device:
    import torch

    torch.set_num_threads(max(1, int(config.cpus_per_fold)))
    device = _device_for(config)
    if device.type == "cuda" and config.gpus_per_fold < 1:
        # Folds sharing a GPU each keep to their share of its memory.
        torch.cuda.set_per_process_memory_fraction(config.gpus_per_fold, torch.cuda.current_device())
    return device


def run_pack(
    features: FeatureSet, members: Sequence[PackMember], stopped: Callable[[str], bool] = _never
) -> list[FoldOutcome]:
    """``iter_pack``'s outcomes as a list, in the order of ``members``."""
    return list(iter_pack(features, members, stopped))


def iter_pack(
    features: FeatureSet, members: Sequence[PackMember], stopped: Callable[[str], bool] = _never
) -> Iterator[FoldOutcome]:
    """Train ``members`` (folds of one architecture: ``execution.packing.pack_key``) together, then
    score them one after the other, yielding each fold's outcome as soon as it is scored (in the
    order of ``members``): a caller across Ray writes one fold's files while the next is scored.

    ``stopped(run_id)`` is polled between epochs: a member of a stopped run leaves the pack (its
    events flushed) as a cancelled ``FoldFailure``; a member whose loss goes non-finite leaves it
    as a failed one; the others go on. Raises what the shared training raises otherwise (a bug
    fails the whole pack, before any outcome).
    """
    from workers.train import NonFiniteLossError, fit

    if not members:
        return
    device = _prepare_device(members[0].config)
    folds = [FoldMember(features, member) for member in members]
    started = time.perf_counter()
    trained: list[TrainOutcome | Exception]
    if len(folds) == 1:
        fold = folds[0]
        try:
            trained = [
                fit(
                    fold.segments,
                    fold.settings,
                    device=device,
                    on_epoch=fold.on_epoch,
                    elapsed=fold.elapsed,
                    on_batch=fold.on_batch,
                    on_forecasts=fold.on_forecasts,
                    should_stop=lambda: stopped(fold.run_id),
                )
            ]
        except NonFiniteLossError as err:
            trained = [err]
    else:
        trained = _fit_stacked(folds, device, stopped)
    train_seconds = time.perf_counter() - started
    if len(folds) > 1:
        # Each fold's last batch of events goes now, without waiting: the hub takes them while
        # the first folds are scored, and each fold's own flush (before its outcome) finds them
        # taken rather than waiting for a hub call per fold in turn.
        for fold in folds:
            fold.member.publisher.flush(timeout=0)
    pack_id = uuid.uuid4().hex[:12]
    for fold, outcome in zip(folds, trained, strict=True):
        spec = fold.member.spec
        if stopped(fold.run_id):
            result: FoldOutcome = fold.failure(
                f"run {fold.run_id} was cancelled (fold {spec.fold_id})", cancelled=True
            )
        elif isinstance(outcome, BaseException):
            result = fold.failure(f"{type(outcome).__name__}: {outcome}", cancelled=False)
        else:
            result = fold.result(outcome, train_seconds, str(device), len(folds), pack_id)
        yield result


def _fit_stacked(
    folds: Sequence[FoldMember], device: torch.device, stopped: Callable[[str], bool]
) -> list[TrainOutcome | Exception]:
    """The folds' models as one stacked model (``workers.packed.fit_pack``)."""
    from workers.packed import PackMember as StackMember
    from workers.packed import fit_pack

    return fit_pack(
        [
            StackMember(
                segments=fold.segments,
                settings=fold.settings,
                on_epoch=fold.on_epoch,
                elapsed=fold.elapsed,
                on_batch=fold.on_batch,
                on_forecasts=fold.on_forecasts,
                should_stop=partial(stopped, fold.run_id),
            )
            for fold in folds
        ],
        device=device,
    )


def run_fold(
    features: FeatureSet,
    spec: FoldSpec,
    config: TrainConfig,
    context: FoldContext,
    publisher: Publisher,
    should_stop: Callable[[], bool] | None = None,
) -> FoldResult:
    """Train one fold and score its selected model (a pack of one).

    ``should_stop`` is polled between epochs; once it says stop, the fold's events are flushed
    and ``RunCancelledError`` is raised. A non-finite loss raises ``NonFiniteLossError``.
    """
    from workers.train import NonFiniteLossError

    def stopped(run_id: str) -> bool:
        return should_stop is not None and should_stop()

    (outcome,) = run_pack(features, [PackMember(spec, config, context, publisher)], stopped)
    if isinstance(outcome, FoldFailure):
        if outcome.cancelled:
            raise RunCancelledError(outcome.message)
        raise NonFiniteLossError(outcome.message.removeprefix("NonFiniteLossError: "))
    return outcome


class FoldTrainer:
    """The fold actor: ``run_pack`` with cancel flags (all, or some runs), kept alive so torch
    loads once per process."""

    def __init__(self) -> None:
        # The optimizer's first call imports torch._dynamo (about 1.4 s on a small machine): an
        # actor pays it when it starts, beside the driver's set-up, not inside its first fold.
        import torch._dynamo  # noqa: F401

        import workers.train  # noqa: F401  (torch and scipy: once per worker process)

        self.pid = os.getpid()
        self._cancelled = False
        self._cancelled_runs: set[str] = set()

    def ping(self) -> int:
        return self.pid

    def cancel(self, run_ids: Sequence[str] | None = None) -> None:
        """Stop every fold of the current call at its next epoch, or only those of ``run_ids``."""
        if run_ids is None:
            self._cancelled = True
        else:  # run ids are unique: a cancelled run never trains here again
            self._cancelled_runs.update(run_ids)

    def _stopped(self, run_id: str, should_stop: Callable[[str], bool] | None) -> bool:
        return (
            self._cancelled
            or run_id in self._cancelled_runs
            or (should_stop is not None and should_stop(run_id))
        )

    def run(
        self,
        features: FeatureSet,
        spec: FoldSpec,
        config: TrainConfig,
        context: FoldContext,
        publisher: Publisher,
        should_stop: Callable[[], bool] | None = None,
    ) -> FoldResult:
        """``run_fold``, stopped by ``cancel()`` (an actor) or ``should_stop`` (in-process)."""
        self._cancelled = False

        def stop() -> bool:
            return self._stopped(context.run_id, None) or (should_stop is not None and should_stop())

        return run_fold(features, spec, config, context, publisher, stop)

    def run_pack(
        self,
        features: FeatureSet,
        members: Sequence[PackMember],
        should_stop: Callable[[str], bool] | None = None,
    ) -> list[FoldOutcome]:
        """``run_pack``, its runs stopped by ``cancel`` (an actor) or ``should_stop`` (in-process).

        A run's cancel stands for later calls too (it may arrive before the call that holds its
        folds starts: the actor takes two calls at a time); a cancel of everything ends with the
        call it stopped."""
        return list(self.stream_pack(features, members, should_stop))

    def stream_pack(
        self,
        features: FeatureSet,
        members: Sequence[PackMember],
        should_stop: Callable[[str], bool] | None = None,
    ) -> Iterator[FoldOutcome]:
        """``run_pack``'s outcomes one at a time, each as soon as it is scored: the Ray executor's
        call (a streaming generator, so the driver writes one fold's files while the next is
        scored)."""
        self._cancelled = False
        yield from iter_pack(features, members, lambda run_id: self._stopped(run_id, should_stop))
