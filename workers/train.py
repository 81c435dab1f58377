"""The train loop of one fold: reads top to bottom, side effects only through callbacks.

``fit`` -> ``run_epoch`` (gradient steps on the train segment) -> ``evaluate`` (forward passes on
the calibration and validation segments) -> one ``epoch_metrics`` dict per epoch through
``on_epoch``. Early stopping watches the calibration loss; the model that is returned (and whose
predictions are written) is the one of the best calibration epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from workers.metrics import Forecast, evaluate_epoch, segment_loss
from workers.model import ForecastNet
from workers.steps import Step, make_step

__all__ = [
    "Segments",
    "TrainOutcome",
    "TrainSettings",
    "NonFiniteLossError",
    "BatchReporter",
    "EpochRecord",
    "fit",
    "predict",
    "seed_everything",
]


@dataclass(frozen=True)
class Segments:
    """Standardized features and raw targets of one fold's three segments."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_cal: np.ndarray
    y_cal: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    hidden: int
    depth: int
    dropout: float
    lr: float
    weight_decay: float
    loss_weights: tuple[float, float, float]
    patience: int
    alpha: float
    seed: int
    cuda_graphs: bool = True
    mixed_precision: bool = False


# One epoch's ``epoch_metrics`` fields (without ``fold_id``): epoch, train_*, val_*, cal_loss, ...
EpochRecord = dict[str, float | None]


@dataclass
class TrainOutcome:
    best_epoch: int
    epochs_run: int
    cal: Forecast
    val: Forecast
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False


EpochCallback = Callable[[EpochRecord], None]
ForecastCallback = Callable[[int, Forecast, Forecast], None]


class BatchReporter:
    """Calls ``emit(epoch, batch, total_batches, train_loss, samples_per_s)`` at most every
    ``interval_s`` seconds (and at each epoch's last batch). The loss is read back from the
    device only when a report is due, so a rate-limited report costs one sync, not one per step."""

    def __init__(self, interval_s: float, emit: Callable[[int, int, int, float, float], None]) -> None:
        self.interval_s = interval_s
        self.emit = emit
        self._last = -float("inf")

    def maybe_report(
        self, epoch: int, batch: int, total: int, loss: torch.Tensor, done: int, started: float
    ) -> None:
        now = time.perf_counter()
        if now - self._last < self.interval_s and batch < total - 1:
            return
        self._last = now
        self.emit(epoch, batch, total, float(loss), done / max(now - started, 1e-9))


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (diverged): retrying would diverge again."""


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def predict(model: ForecastNet, X: torch.Tensor, y_scale: float) -> Forecast:
    model.eval()
    with torch.no_grad():
        mu, sigma, logit = model(X)
    # .cpu() is a host-device sync; it happens once per segment per epoch, never per step.
    return Forecast(
        mu=(mu * y_scale).double().cpu().numpy(),
        sigma=(sigma * y_scale).double().cpu().numpy(),
        p_up=torch.sigmoid(logit.double()).cpu().numpy(),
    )


def fit(
    segments: Segments,
    settings: TrainSettings,
    *,
    device: torch.device,
    on_epoch: EpochCallback,
    elapsed: Callable[[], float],
    on_batch: BatchReporter | None = None,
    on_forecasts: ForecastCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainOutcome:
    seed_everything(settings.seed)
    y_scale = float(np.std(segments.y_train)) or 1.0
    model = ForecastNet(segments.X_train.shape[1], settings.hidden, settings.depth, settings.dropout).to(
        device
    )
    graphed = settings.cuda_graphs and device.type == "cuda"
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, capturable=graphed
    )
    generator = torch.Generator().manual_seed(settings.seed)

    # The fold's data moves to the device once; batches are index views of these tensors.
    X_train = torch.tensor(segments.X_train, dtype=torch.float32, device=device)
    y_train = torch.tensor(segments.y_train, dtype=torch.float32, device=device)
    X_cal = torch.tensor(segments.X_cal, dtype=torch.float32, device=device)
    X_val = torch.tensor(segments.X_val, dtype=torch.float32, device=device)
    step = make_step(
        model,
        optimizer,
        X_train,
        y_train,
        y_scale,
        settings.loss_weights,
        settings.batch_size,
        cuda_graphs=settings.cuda_graphs,
        amp=settings.mixed_precision,
    )

    best_loss, best_epoch, best_state = math.inf, -1, copy.deepcopy(model.state_dict())
    history: list[EpochRecord] = []
    stopped_early = False
    epoch = -1
    for epoch in range(settings.epochs):
        if should_stop is not None and should_stop():
            break
        train_stats = run_epoch(model, step, X_train.shape[0], settings, generator, epoch, on_batch)
        cal = predict(model, X_cal, y_scale)
        val = predict(model, X_val, y_scale)
        cal_loss = segment_loss(cal, segments.y_cal, settings.loss_weights)
        metrics: EpochRecord = {"epoch": epoch, **train_stats}
        metrics.update(
            evaluate_epoch(
                cal,
                val,
                segments.y_cal,
                segments.y_val,
                alpha=settings.alpha,
                loss_weights=settings.loss_weights,
            )
        )
        metrics["cal_loss"] = cal_loss
        metrics["elapsed_seconds"] = elapsed()
        history.append(metrics)
        on_epoch(metrics)
        if on_forecasts is not None:
            on_forecasts(epoch, cal, val)

        if cal_loss < best_loss:
            best_loss, best_epoch = cal_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience:
            stopped_early = True
            break

    if best_epoch < 0:  # stopped before the first epoch finished, or every cal loss undefined
        best_epoch = max(epoch, 0)
    model.load_state_dict(best_state)
    return TrainOutcome(
        best_epoch=best_epoch,
        epochs_run=len(history),
        cal=predict(model, X_cal, y_scale),
        val=predict(model, X_val, y_scale),
        history=history,
        stopped_early=stopped_early,
    )


def run_epoch(
    model: ForecastNet,
    step: Step,
    n: int,
    settings: TrainSettings,
    generator: torch.Generator,
    epoch: int,
    on_batch: BatchReporter | None,
) -> dict[str, float]:
    """One pass over the train segment in a seeded random order; running means of the objective."""
    model.train()
    device = next(model.parameters()).device
    # The order is drawn on the CPU generator (identical on every device), uploaded once.
    order = torch.randperm(n, generator=generator).to(device, non_blocking=True)
    total_batches = math.ceil(n / settings.batch_size)
    # Sums stay on the device: reading them every step would sync the GPU each step.
    sums = torch.zeros(4, device=device, dtype=torch.float64)
    started = time.perf_counter()
    for batch in range(total_batches):
        idx = order[batch * settings.batch_size : (batch + 1) * settings.batch_size]
        stats = step(idx)
        sums += stats.double() * idx.numel()
        if on_batch is not None:
            done = min((batch + 1) * settings.batch_size, n)
            on_batch.maybe_report(epoch, batch, total_batches, stats[0], done, started)
    means = (sums / n).cpu().numpy()  # the one sync of the epoch's train loop
    if not np.all(np.isfinite(means)):
        raise NonFiniteLossError(
            f"training loss is not finite at epoch {epoch} (loss={means[0]}); "
            f"lower lr (lr={settings.lr}) or check the data"
        )
    return {
        "train_loss": float(means[0]),
        "train_nll": float(means[1]),
        "train_bce": float(means[2]),
        "train_brier": float(means[3]),
    }
