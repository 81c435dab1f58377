"""The optimizer step of the train loop, eager or captured in a CUDA graph.

A small model is launch-bound on a GPU: an eager step issues dozens of tiny kernels, each paying
launch latency. ``GraphedStep`` records one whole step (gather of the batch, forward, loss,
backward, AdamW update) once and replays it with a single launch. Both steps take a tensor of
row indices into the fold's (device-resident) train tensors and return the batch's
``[loss, nll, bce, brier]`` means as a device tensor: nothing here reads a value back to the host.

The graph has static shapes, so the last, partial batch is padded to the full batch size with
zero-weight rows; the weighted means equal the plain means of the real rows.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import torch

from workers.model import ForecastNet, forecast_loss

__all__ = ["Step", "EagerStep", "GraphedStep", "autocast", "make_step"]

# Eager iterations on a side stream before capture (lets cuDNN/cuBLAS pick kernels and
# allocate workspaces outside the graph). They run with lr = 0 and the optimizer's state is
# zeroed afterwards, so capture leaves the model exactly as it was.
_WARMUP_ITERS = 3


class Step(Protocol):
    def __call__(self, idx: torch.Tensor) -> torch.Tensor: ...


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager[object]:
    if not enabled:
        return nullcontext()
    dtype = torch.bfloat16
    # cache_enabled=False: cached casts would be stale inside a replayed graph.
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


def _batch_loss(
    model: ForecastNet,
    X: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    weight: torch.Tensor | None,
    y_scale: float,
    loss_weights: tuple[float, float, float],
    amp: bool,
) -> torch.Tensor:
    xb, yb = X[idx], y[idx]
    with autocast(X.device, amp):
        mu, sigma, logit = model(xb)
    stats = forecast_loss(
        mu.float() * y_scale,
        sigma.float() * y_scale,
        logit.float(),
        yb,
        (yb > 0).float(),
        loss_weights,
        weight=weight,
    )
    return torch.stack(stats)


class EagerStep:
    def __init__(
        self,
        model: ForecastNet,
        optimizer: torch.optim.Optimizer,
        X: torch.Tensor,
        y: torch.Tensor,
        y_scale: float,
        loss_weights: tuple[float, float, float],
        amp: bool = False,
    ) -> None:
        self.model, self.optimizer, self.X, self.y = model, optimizer, X, y
        self.y_scale, self.loss_weights, self.amp = y_scale, loss_weights, amp

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        stats = _batch_loss(self.model, self.X, self.y, idx, None, self.y_scale, self.loss_weights, self.amp)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(stats[0])  # Tensor.backward is untyped; this is what it calls
        self.optimizer.step()
        return stats.detach()


class GraphedStep:
    """One CUDA graph for a full batch; partial batches are padded with zero-weight rows.

    The optimizer must be created with ``capturable=True``.
    """

    def __init__(
        self,
        model: ForecastNet,
        optimizer: torch.optim.Optimizer,
        X: torch.Tensor,
        y: torch.Tensor,
        y_scale: float,
        loss_weights: tuple[float, float, float],
        batch_size: int,
        amp: bool = False,
    ) -> None:
        device = X.device
        self.batch_size = batch_size
        self.static_idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.static_weight = torch.ones(batch_size, dtype=torch.float32, device=device)

        def step() -> torch.Tensor:
            stats = _batch_loss(model, X, y, self.static_idx, self.static_weight, y_scale, loss_weights, amp)
            torch.autograd.backward(stats[0])  # Tensor.backward is untyped; this is what it calls
            optimizer.step()
            return stats.detach()

        lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_ITERS):
                optimizer.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        # Back to a fresh optimizer, in place (the graph will hold these tensors' addresses).
        for state in optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()

        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_stats = step()

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        count = idx.numel()  # a shape, known on the host: no sync
        if count == self.batch_size:
            self.static_idx.copy_(idx)
            self.static_weight.fill_(1.0)
        else:
            self.static_idx.zero_()
            self.static_idx[:count].copy_(idx)
            self.static_weight.zero_()
            self.static_weight[:count] = 1.0
        self.graph.replay()
        return self.static_stats.clone()


def make_step(
    model: ForecastNet,
    optimizer: torch.optim.Optimizer,
    X: torch.Tensor,
    y: torch.Tensor,
    y_scale: float,
    loss_weights: tuple[float, float, float],
    batch_size: int,
    *,
    cuda_graphs: bool,
    amp: bool,
) -> Step:
    if cuda_graphs and X.device.type == "cuda":
        return GraphedStep(model, optimizer, X, y, y_scale, loss_weights, min(batch_size, X.shape[0]), amp)
    return EagerStep(model, optimizer, X, y, y_scale, loss_weights, amp)
