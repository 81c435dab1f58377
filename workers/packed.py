"""The train loop of a pack: folds or trials of one architecture trained as one stacked model.

``fit_pack(members, device=...)`` gives every member what ``workers.train.fit`` gives it alone (the
same epoch records in the same order, best epoch, early stop and final forecasts, equal to float32
rounding; on a CPU the same batch orders and dropout masks), while each optimizer step trains all
the models at once (``workers.pack_stack``). It reads top to bottom:

    fit_pack -> per epoch: poll each member's should_stop -> one stacked epoch (its on_batch calls)
             -> one stacked forward of every calibration and validation segment
             -> per member, in member order: record, on_epoch, on_forecasts, early stopping
             -> the models that are done leave the stack

A member leaves when its epochs are done, early stopping says so or its ``should_stop()`` says
stop (its outcome is the ``TrainOutcome`` that ``fit`` returns then); when its train loss is not
finite (its outcome is ``NonFiniteLossError``); or when one of its own callbacks raises (its outcome
is that exception). The others go on. The survivors are re-stacked on the CPU (a smaller stack
is a cheaper step); a CUDA graph keeps the idle slots instead (a re-capture costs more).

Callbacks across members: at an epoch's start every member's ``should_stop`` in member order;
during the epoch each step's ``on_batch`` reports in member order (members without a batch at
that step skip it); after it, member after member: ``on_epoch`` then ``on_forecasts``. Each
member sees exactly ``fit``'s sequence; only the interleaving with its neighbours is new.

RNG: every member's ``seed_everything(seed)`` and ``ForecastNet`` init run up front, in member
order; its batch orders come from its own generator seeded with ``seed`` and its dropout from a
copy of the global CPU RNG taken right after its init, so no member draws from the global RNG
afterwards (the global state the pack leaves differs from that of ``fit`` run K times).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import numpy as np
import torch

from workers.metrics import Forecast, evaluate_epoch, segment_loss
from workers.model import ForecastNet
from workers.pack_stack import Slot, Stack
from workers.stacked_dropout import fork_global_rng
from workers.stacked_metrics import StackedForecast, evaluate_epochs
from workers.train import (
    BatchReporter,
    EpochCallback,
    EpochRecord,
    ForecastCallback,
    NonFiniteLossError,
    Segments,
    TrainOutcome,
    TrainSettings,
    predict,
    seed_everything,
)

__all__ = ["PackMember", "PackOutcome", "fit_pack", "check_packable"]

PackOutcome = TrainOutcome | Exception
_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True)
class PackMember:
    """One model of a pack: ``fit``'s arguments (its data, settings and its own callbacks)."""

    segments: Segments
    settings: TrainSettings
    on_epoch: EpochCallback
    elapsed: Callable[[], float]
    on_batch: BatchReporter | None = None
    on_forecasts: ForecastCallback | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class _Model:
    """A member's progress: what ``fit`` keeps in its locals."""

    slot: Slot
    member: PackMember
    net: ForecastNet  # the initial weights, until the best ones are loaded at the end
    history: list[EpochRecord] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None  # None: the initial weights are the best so far
    last_epoch: int = -1
    stopped_early: bool = False
    outcome: PackOutcome | None = None
    rows_key: bytes = b""  # the rows it is scored on (``_rows_key``)


def check_packable(members: Sequence[PackMember]) -> None:
    """Raise ``ValueError`` unless ``members`` can share one stack (same weight and batch shapes)."""
    if not members:
        raise ValueError("a pack needs at least one member, got none")

    def shape(m: PackMember) -> tuple[int, int, int, int, bool, bool]:
        s = m.settings
        return (
            m.segments.X_train.shape[1],
            s.hidden,
            s.depth,
            s.batch_size,
            s.cuda_graphs,
            s.mixed_precision,
        )

    for i, member in enumerate(members):
        if shape(member) != shape(members[0]):
            raise ValueError(
                "members of a pack must share (n_features, hidden, depth, batch_size, cuda_graphs, "
                f"mixed_precision): member 0 has {shape(members[0])}, member {i} has {shape(member)}"
            )


def fit_pack(
    members: Sequence[PackMember], *, device: torch.device, restack: bool | None = None
) -> list[PackOutcome]:
    """Train ``members`` as one stack; their outcomes in member order (see the module doc).

    ``restack``: rebuild the stack when models leave (default: yes, unless the step is a CUDA graph).
    """
    check_packable(members)
    models = [_start(i, member, device) for i, member in enumerate(members)]
    stack = Stack.build([m.slot for m in models], [m.net for m in models], device)
    restack = (not stack.graphed) if restack is None else restack

    for epoch in range(max(member.settings.epochs for member in members)):
        for model in _running(stack, models):  # fit polls should_stop before each epoch
            model.last_epoch = epoch
            stop = model.member.should_stop
            if stop is not None and _guarded(model, stop) and model.outcome is None:
                model.outcome = _finish(model)
        survivors = _without_finished(stack, models, restack)
        if survivors is None:
            break
        stack = survivors

        train = _train_epoch(stack, models, epoch)
        forecasts = stack.evaluate()
        fields = _validation_fields(stack, models, forecasts, train)
        for position in stack.member_order():
            model = models[stack.slots[position].index]
            if model.outcome is not None:  # a callback of its own raised during the epoch
                continue
            if not np.all(np.isfinite(train[position])):
                model.outcome = NonFiniteLossError(
                    f"training loss is not finite at epoch {epoch} (loss={train[position][0]}); "
                    f"lower lr (lr={model.member.settings.lr}) or check the data"
                )
                continue
            cal, val = forecasts[position]
            _end_epoch(model, epoch, train[position], cal, val, fields[position])
            if model.outcome is None and model.best_epoch == epoch:
                model.best_state = stack.net.state_dict_of(position)
            if model.outcome is None and (model.stopped_early or epoch + 1 >= model.member.settings.epochs):
                model.outcome = _finish(model)

    return [m.outcome if m.outcome is not None else _finish(m) for m in models]


def _start(index: int, member: PackMember, device: torch.device) -> _Model:
    """What ``fit`` does before its first epoch, in the same order (the same global RNG draws)."""
    settings, segments = member.settings, member.segments
    seed_everything(settings.seed)
    y_scale = float(np.std(segments.y_train)) or 1.0
    net = ForecastNet(segments.X_train.shape[1], settings.hidden, settings.depth, settings.dropout).to(device)
    # From here on fit's global RNG feeds only this model's dropout: its own copy of the stream.
    slot = Slot(
        index=index,
        segments=segments,
        settings=settings,
        y_scale=y_scale,
        order=torch.Generator().manual_seed(settings.seed),
        dropout=fork_global_rng(),
    )
    return _Model(slot=slot, member=member, net=net, rows_key=_rows_key(segments))


def _running(stack: Stack, models: list[_Model]) -> list[_Model]:
    """The models still training, in member order."""
    return [
        models[stack.slots[p].index]
        for p in stack.member_order()
        if models[stack.slots[p].index].outcome is None
    ]


def _train_epoch(stack: Stack, models: list[_Model], epoch: int) -> np.ndarray:
    """One stacked pass over every live model's train rows: ``[K, 4]`` means (train_loss, _nll,
    _bce, _brier); each member's ``on_batch`` is called at its own steps, as ``run_epoch`` calls it."""
    plan = stack.plan_epoch()
    reporting = [  # in member order: within a step, members hear of it in their order
        (position, models[stack.slots[position].index])
        for position in stack.member_order()
        if models[stack.slots[position].index].member.on_batch is not None
    ]
    batch = stack.batch_size
    started = time.perf_counter()
    stats = []
    for t in range(plan.steps):
        step_stats = stack.train_step(plan, t)
        stats.append(step_stats)
        losses = step_stats[:, 0].unbind() if reporting else ()  # 0-d views, read only when a report is due
        for position, model in reporting:
            reporter, n = model.member.on_batch, int(plan.n[position])
            if reporter is None or model.outcome is not None or not plan.counts[t, position]:
                continue
            done = min((t + 1) * batch, n)
            _guarded(
                model, reporter.maybe_report, epoch, t, math.ceil(n / batch), losses[position], done, started
            )
    return stack.train_means(plan, stats)


def _validation_fields(
    stack: Stack, models: list[_Model], forecasts: list[tuple[Forecast, Forecast]], train: np.ndarray
) -> dict[int, dict[str, float | None]]:
    """``evaluate_epoch`` of every live model that trained cleanly, by stack position. Models that
    forecast the same rows (fold k of HPO trials asked together) are scored at once
    (``workers.stacked_metrics``: the same values, a fraction of the per-model cost)."""
    groups: dict[bytes, list[int]] = {}
    for position in stack.member_order():
        model = models[stack.slots[position].index]
        if model.outcome is None and np.all(np.isfinite(train[position])):
            groups.setdefault(model.rows_key, []).append(position)
    fields: dict[int, dict[str, float | None]] = {}
    for positions in groups.values():
        first = models[stack.slots[positions[0]].index].member
        y_cal, y_val = first.segments.y_cal, first.segments.y_val
        settings = [models[stack.slots[p].index].member.settings for p in positions]
        if len(positions) == 1:
            cal, val = forecasts[positions[0]]
            alpha, weights = settings[0].alpha, settings[0].loss_weights
            fields[positions[0]] = evaluate_epoch(cal, val, y_cal, y_val, alpha=alpha, loss_weights=weights)
            continue
        cal_k = StackedForecast(
            *(np.stack([getattr(forecasts[p][0], f) for p in positions]) for f in _FIELDS)
        )
        val_k = StackedForecast(
            *(np.stack([getattr(forecasts[p][1], f) for p in positions]) for f in _FIELDS)
        )
        scored = evaluate_epochs(
            cal_k,
            val_k,
            y_cal,
            y_val,
            alpha=[s.alpha for s in settings],
            loss_weights=[s.loss_weights for s in settings],
        )
        fields.update(zip(positions, scored, strict=True))
    return fields


_FIELDS = ("mu", "sigma", "p_up")


def _rows_key(segments: Segments) -> bytes:
    """Which rows a model is scored on: equal keys, equal calibration and validation returns."""
    digest = hashlib.blake2b(digest_size=16)
    for y in (segments.y_cal, segments.y_val):
        digest.update(len(y).to_bytes(8, "little"))
        digest.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return digest.digest()


def _end_epoch(
    model: _Model,
    epoch: int,
    train: np.ndarray,
    cal: Forecast,
    val: Forecast,
    fields: dict[str, float | None],
) -> None:
    """``fit``'s end of an epoch for one member: record, callbacks, early stopping bookkeeping
    (``fields``: its ``evaluate_epoch``)."""
    member, settings, segments = model.member, model.member.settings, model.member.segments
    cal_loss = segment_loss(cal, segments.y_cal, settings.loss_weights)
    metrics: EpochRecord = {
        "epoch": epoch,
        "train_loss": float(train[0]),
        "train_nll": float(train[1]),
        "train_bce": float(train[2]),
        "train_brier": float(train[3]),
    }
    metrics.update(fields)
    metrics["cal_loss"] = cal_loss
    elapsed = _guarded(model, member.elapsed)
    if model.outcome is not None:
        return
    metrics["elapsed_seconds"] = elapsed
    model.history.append(metrics)
    _guarded(model, member.on_epoch, metrics)
    if member.on_forecasts is not None and model.outcome is None:
        _guarded(model, member.on_forecasts, epoch, cal, val)
    if model.outcome is not None:
        return
    if cal_loss < model.best_loss:
        model.best_loss, model.best_epoch = cal_loss, epoch
    elif epoch - model.best_epoch >= settings.patience:
        model.stopped_early = True


def _guarded(model: _Model, callback: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T | None:
    """``callback(...)``; an exception it raises becomes the member's outcome (it leaves the pack)."""
    try:
        return callback(*args, **kwargs)
    except Exception as error:  # the member's own failure must not end its neighbours' training
        if model.outcome is None:
            model.outcome = error
        return None


def _finish(model: _Model) -> TrainOutcome:
    """``fit``'s end: the best weights (or the initial ones) and their forecasts."""
    segments = model.member.segments
    best_epoch = model.best_epoch if model.best_epoch >= 0 else max(model.last_epoch, 0)
    if model.best_state is not None:
        model.net.load_state_dict(model.best_state)
    device = next(model.net.parameters()).device
    x_cal = torch.tensor(segments.X_cal, dtype=torch.float32, device=device)
    x_val = torch.tensor(segments.X_val, dtype=torch.float32, device=device)
    return TrainOutcome(
        best_epoch=best_epoch,
        epochs_run=len(model.history),
        cal=predict(model.net, x_cal, model.slot.y_scale),
        val=predict(model.net, x_val, model.slot.y_scale),
        history=model.history,
        stopped_early=model.stopped_early,
    )


def _without_finished(stack: Stack, models: list[_Model], restack: bool) -> Stack | None:
    """The stack without the models that have an outcome; ``None`` when none is left."""
    done = [p for p in stack.member_order() if models[stack.slots[p].index].outcome is not None]
    if not done:
        return stack
    if restack:
        keep = [p for p in range(len(stack.slots)) if stack.live[p] and p not in done]
        return stack.restack(keep) if keep else None
    for position in done:
        stack.retire(position)
    return stack if any(stack.live) else None
