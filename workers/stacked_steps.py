"""The optimizer step of a stack of models, eager or captured in a CUDA graph (``workers.steps``, stacked).

A step trains every model of the stack on its own batch at once. Its input is one padded batch
per model: ``idx [k, B]`` (rows of the pack's ``TrainTable``), ``row_weight [k, B]`` (``1/count``
on a model's real rows, 0 on padding), ``active [k]`` (1 where the model has rows at this step)
and ``counts`` (the real rows per model, host ints: what the CPU dropout draw needs). It returns
each model's ``[loss, nll, bce, brier]`` means, ``[k, 4]``, as a device tensor: nothing here
reads a value back to the host. ``k <= K``: the eager step trains the stack's first ``k`` models
only (at the ragged end of an epoch the last models of a stack sorted by size have no batch:
skipping them saves their compute); the graphed step always takes all ``K``.

``GraphedStackedStep`` records gather, dropout draw, forward, loss, backward and the AdamW update
once and replays them with a single launch; its shapes are static, which padding already gives.
Its masks come from the device's generator (graph-safe), not from the per-model CPU streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from workers.stacked import StackedForecastNet, gather_batch, stacked_forecast_loss
from workers.stacked_dropout import ExactDropout, device_masks
from workers.stacked_grad import stacked_loss_and_grad
from workers.stacked_optim import StackedAdamW
from workers.steps import autocast

__all__ = ["TrainTable", "StackedStep", "EagerStackedStep", "GraphedStackedStep", "stacked_batch_loss"]

# As workers.steps: eager iterations on a side stream before capture (kernel choice, workspaces).
# They run with every model inactive, which leaves weights and optimizer state untouched.
_WARMUP_ITERS = 3


@dataclass(frozen=True)
class TrainTable:
    """Every model's train rows in one device table, and the per-model constants of the loss.

    ``rows [N, n_features + 2]``: standardized features, then ``y`` (raw) and ``y > 0`` as 0/1,
    the models' segments one after another. ``y_scale [K, 1]``: each model's train std of ``y``
    (the heads work in standardized units). ``loss_weights [K, 3]``: ``(w_nll, w_bce, w_brier)``.
    """

    rows: torch.Tensor
    y_scale: torch.Tensor
    loss_weights: torch.Tensor


class StackedStep(Protocol):
    def __call__(
        self, idx: torch.Tensor, row_weight: torch.Tensor, active: torch.Tensor, counts: Sequence[int]
    ) -> torch.Tensor: ...


def stacked_batch_loss(
    model: StackedForecastNet,
    table: TrainTable,
    idx: torch.Tensor,
    row_weight: torch.Tensor,
    masks: Sequence[torch.Tensor] | None,
    amp: bool,
) -> torch.Tensor:
    """``[k, 4]`` per-model ``(loss, nll, bce, brier)`` of the padded batch ``idx [k, B]`` of the
    stack's first ``k`` models."""
    k = idx.shape[0]
    x, y, y_up = gather_batch(table.rows, idx)
    with autocast(table.rows.device, amp):
        mu, sigma, logit = model(x, masks)
    if amp:
        mu, sigma, logit = mu.float(), sigma.float(), logit.float()
    y_scale, loss_weights = table.y_scale[:k], table.loss_weights[:k]  # the first k models
    return stacked_forecast_loss(mu * y_scale, sigma * y_scale, logit, y, y_up, row_weight, loss_weights)[0]


class EagerStackedStep:
    """Forward, backward and update of the stack, op by op; masks from ``ExactDropout`` (or none).

    In float32 the loss and gradient come from ``workers.stacked_grad`` (the backward written out,
    into one ``[K, P]`` buffer); with ``amp``, or ``autograd`` (the reference), from autograd
    through ``stacked_batch_loss``.
    """

    def __init__(
        self,
        model: StackedForecastNet,
        optimizer: StackedAdamW,
        table: TrainTable,
        dropout: ExactDropout | None,
        amp: bool = False,
        *,
        autograd: bool = False,
    ) -> None:
        self.model, self.optimizer, self.table, self.dropout, self.amp = model, optimizer, table, dropout, amp
        self.grad = None if amp or autograd else torch.zeros_like(model.flat)

    def __call__(
        self, idx: torch.Tensor, row_weight: torch.Tensor, active: torch.Tensor, counts: Sequence[int]
    ) -> torch.Tensor:
        masks = self.dropout.draw(counts) if self.dropout is not None else None
        if self.grad is not None:
            table = self.table
            stats = stacked_loss_and_grad(
                self.model, table.rows, table.y_scale, table.loss_weights, idx, row_weight, masks, self.grad
            )
            self.model.flat.grad = self.grad  # rows past idx's k are stale: the step reads [:k]
        else:
            stats = stacked_batch_loss(self.model, self.table, idx, row_weight, masks, self.amp)
            self.optimizer.zero_grad()
            # the models' losses are independent: the sum's gradient is each model's own gradient
            torch.autograd.backward(stats[:, 0].sum())
        self.optimizer.step(active)
        return stats.detach()


class GraphedStackedStep:
    """One CUDA graph for the whole stacked step; ``keep`` and ``scale`` ``[K]``: 1 - p and 1/(1 - p)
    per model (``None``: no dropout)."""

    def __init__(
        self,
        model: StackedForecastNet,
        optimizer: StackedAdamW,
        table: TrainTable,
        keep: torch.Tensor | None,
        scale: torch.Tensor | None,
        batch_size: int,
        amp: bool = False,
    ) -> None:
        device = table.rows.device
        k = model.k
        self.static_idx = torch.zeros(k, batch_size, dtype=torch.long, device=device)
        self.static_weight = torch.zeros(k, batch_size, device=device)
        self.static_active = torch.zeros(k, device=device)

        def step() -> torch.Tensor:
            masks = None
            if keep is not None and scale is not None:
                masks = device_masks(keep, scale, model.depth, batch_size, model.hidden)
            stats = stacked_batch_loss(model, table, self.static_idx, self.static_weight, masks, amp)
            torch.autograd.backward(stats[:, 0].sum())
            optimizer.step(self.static_active)
            return stats.detach()

        # static_active is all zero: the warm-up changes no weight, moment or step count
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_ITERS):
                optimizer.zero_grad()
                step()
        torch.cuda.current_stream(device).wait_stream(side)

        optimizer.zero_grad()  # the graph's backward allocates the gradient in its own pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_stats = step()

    def __call__(
        self, idx: torch.Tensor, row_weight: torch.Tensor, active: torch.Tensor, counts: Sequence[int]
    ) -> torch.Tensor:
        self.static_idx.copy_(idx)
        self.static_weight.copy_(row_weight)
        self.static_active.copy_(active)
        self.graph.replay()
        return self.static_stats.clone()
