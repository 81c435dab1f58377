"""AdamW over stacked parameters: per-model lr, weight decay, step count and an active mask.

Why hand-written: ``torch.optim.AdamW`` keeps one step count per parameter tensor and updates every
element of it, and in a stack one tensor holds K models. Two tempting shortcuts are wrong (issue
22): a zero loss weight for an idle model still decays its weights and applies momentum; restoring
an idle model's weights and moments afterwards still advances the one shared step count, so its
bias correction drifts. Here a model whose ``active`` entry is 0 at a step gets no decay, no moment
update, no step-count advance, and its parameters are left bit for bit as they were.

An active model's update is ``torch.optim.AdamW``'s (single-tensor, non-capturable formulas) op for
op in float32, with its scalars (``1 - lr*wd``, ``lr / (1 - beta1**t)``, ...) computed in float64
per model and cast once, as torch casts its Python scalars: results equal torch's run per model to
float32 rounding. Every hyperparameter and the step counts are device tensors and nothing reads a
value back to the host, so ``step`` can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["StackedAdamW"]


class StackedAdamW:
    """AdamW (decoupled weight decay) for parameters ``[K, ...]`` whose row ``k`` is model ``k``'s.

    ``lr``, ``weight_decay``: one value per model. No amsgrad, no maximize.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: Sequence[float] | torch.Tensor,
        weight_decay: Sequence[float] | torch.Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not params:
            raise ValueError("StackedAdamW needs at least one parameter, got none")
        self.params = list(params)
        self.k = self.params[0].shape[0]
        device = self.params[0].device
        for p in self.params:
            if p.shape[0] != self.k or p.device != device:
                raise ValueError(
                    f"every parameter must be [K={self.k}, ...] on {device}, got {tuple(p.shape)} on {p.device}"
                )
        self.lr = torch.as_tensor(lr, dtype=torch.float64).to(device).reshape(self.k)
        self.weight_decay = torch.as_tensor(weight_decay, dtype=torch.float64).to(device).reshape(self.k)
        if bool((self.lr < 0).any()) or bool((self.weight_decay < 0).any()):
            raise ValueError(f"lr and weight_decay must be >= 0, got lr={lr}, weight_decay={weight_decay}")
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = torch.zeros(self.k, dtype=torch.float64, device=device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # Per-step scalars that are linear in the 0/1 active flag: offset + slope * active, in the
        # order (decay, moment weight, second-moment factor, second-moment weight): an idle model
        # gets (1, 0, 1, 0), an active one torch's 1 - lr*wd, 1 - beta1, beta2, 1 - beta2.
        ones, zeros = torch.ones_like(self.lr), torch.zeros_like(self.lr)
        self._offset = torch.stack((ones, zeros, ones, zeros))
        self._slope = torch.stack(
            (
                -self.lr * self.weight_decay,
                zeros + (1.0 - self.beta1),
                zeros - (1.0 - self.beta2),
                zeros + (1.0 - self.beta2),
            )
        )
        self._neg_lr = -self.lr
        self._betas = torch.tensor([[self.beta1], [self.beta2]], dtype=torch.float64, device=device)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _coefficients(self, active: torch.Tensor) -> list[torch.Tensor]:
        """Per-model float32 scalars ``[k]`` of this step (a dozen ops on k elements)."""
        k = active.shape[0]
        on = active.to(torch.float64)
        steps = self.steps[:k]
        steps += on
        t = steps.clamp(min=1.0)  # a model never active yet: any finite value, it is masked
        bias_correction = 1.0 - self._betas**t  # [2, k]: 1 - beta1**t, 1 - beta2**t
        linear = torch.addcmul(self._offset[:, :k], self._slope[:, :k], on)
        neg_step = self._neg_lr[:k] * on / bias_correction[0]
        coefficients = torch.cat((linear, neg_step[None], bias_correction[1:].sqrt())).float()
        return list(coefficients.unbind(0))

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One AdamW step for the models with ``active[i] > 0``.

        ``active``: ``[k]`` 0/1 on the device, ``k <= K``: the models past the first ``k`` are idle
        too (and cost nothing: the update runs on the first ``k`` rows).
        """
        k = active.shape[0]
        decay, keep_avg, keep_sq, add_sq, neg_step, bias2_sqrt = self._coefficients(active)
        for param, exp_avg_all, exp_avg_sq_all in zip(
            self.params, self.exp_avg, self.exp_avg_sq, strict=True
        ):
            if param.grad is None:
                continue
            if k == self.k:
                p, grad, exp_avg, exp_avg_sq = param, param.grad, exp_avg_all, exp_avg_sq_all
            else:  # leading rows of row-major tensors: contiguous views
                p, grad, exp_avg, exp_avg_sq = param[:k], param.grad[:k], exp_avg_all[:k], exp_avg_sq_all[:k]
            shape = (k,) + (1,) * (p.dim() - 1)
            p.mul_(decay.view(shape))
            exp_avg.lerp_(grad, keep_avg.view(shape))
            exp_avg_sq.mul_(keep_sq.view(shape)).addcmul_(grad * add_sq.view(shape), grad)
            denom = (exp_avg_sq.sqrt() / bias2_sqrt.view(shape)).add_(self.eps)
            # torch: p + (-step_size * m) / denom; here value=1 and -step_size folded into m's factor
            p.addcdiv_(exp_avg * neg_step.view(shape), denom)

    def select(self, rows: Sequence[int], params: Sequence[torch.Tensor]) -> StackedAdamW:
        """The optimizer of models ``rows`` for ``params`` (their re-stacked parameters): state copied."""
        index = list(rows)
        optimizer = StackedAdamW(
            params, self.lr[index], self.weight_decay[index], (self.beta1, self.beta2), self.eps
        )
        optimizer.steps.copy_(self.steps[index])
        for mine, theirs in zip(
            self.exp_avg + self.exp_avg_sq, optimizer.exp_avg + optimizer.exp_avg_sq, strict=True
        ):
            theirs.copy_(mine[index])
        return optimizer
