"""The stacked step's forward and backward written out: the loss and its gradient without autograd.

Why hand-written: at the default job's size (K=5 models, batch 256, 64 wide) autograd's graph of a
stacked step is about 40 nodes, and recording and walking it cost as much as the arithmetic of
the small ops. Here the forward (the model's and the loss's own code) keeps the few activations
the backward needs, and the backward
is the chain rule written as 5 batched matmuls, 2 ``gelu_backward`` calls (the kernel autograd
itself calls) and a dozen elementwise ops on ``[k, B]``; the gradient is written once into the
caller's ``[K, P]`` buffer in the parameter's row layout. ``bench/stacked_step.py`` measures it
against autograd (``step.K=5``); ``tests/test_stacked.py`` holds its statistics and gradient equal
to autograd's through ``stacked_forecast_loss`` (float32 rounding) at depth 1 to 3, with dropout,
padded rows, models without rows and per-model loss weights.

The derivatives, per row ``b`` of model ``k`` with weight ``w = row_weight[k, b]`` and loss
weights ``(a, c, d) = loss_weights[k]``, in the units of ``y`` (``mu = o_0 * s_y``,
``sigma = (softplus(o_1) + SIGMA_FLOOR) * s_y``, ``z = (y - mu) / sigma``, ``p = sigmoid(o_2)``):

- ``d nll / d mu = -z / sigma`` and ``d nll / d sigma = (1 - z^2) / sigma`` (Gaussian NLL);
  ``d sigma / d o_1 = s_y * sigmoid(o_1)`` (softplus' derivative);
- ``d bce / d o_2 = p - y_up`` (binary cross-entropy on logits);
  ``d brier / d o_2 = 2 (p - y_up) p (1 - p)``.

So ``d loss_k / d o = w * (a * s_y * (-z / sigma), a * s_y * sigmoid(o_1) * (1 - z^2) / sigma,
c * (p - y_up) + d * 2 (p - y_up) p (1 - p))``, and the trunk's gradients follow by the chain rule
through each ``h @ W + b``, the dropout mask and GELU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from workers.model import SIGMA_FLOOR
from workers.stacked import StackedForecastNet, gather_batch, stacked_forecast_loss

__all__ = ["stacked_loss_and_grad"]


@torch.no_grad()
def stacked_loss_and_grad(
    model: StackedForecastNet,
    rows: torch.Tensor,
    y_scale: torch.Tensor,
    loss_weights: torch.Tensor,
    idx: torch.Tensor,
    row_weight: torch.Tensor,
    masks: Sequence[torch.Tensor] | None,
    grad: torch.Tensor,
) -> torch.Tensor:
    """``[k, 4]`` per-model ``(loss, nll, bce, brier)`` of the padded batch ``idx [k, B]`` of the
    stack's first ``k`` models, and the gradient of the sum of their losses in ``grad[:k]``.

    ``rows``, ``y_scale``, ``loss_weights``: a ``workers.stacked_steps.TrainTable``'s (``[N,
    n_features + 2]``, ``[K, 1]``, ``[K, 3]``); ``grad``: ``[K, P]`` float32 like ``model.flat``
    (rows past ``k`` are left as they are); ``row_weight [k, B]`` and ``masks`` (one
    ``[k, B, hidden]`` per trunk layer, or ``None``) as ``stacked_batch_loss`` takes them. The
    statistics are that function's (the same ops: ``head_outputs``, ``stacked_forecast_loss``), the
    gradient ``torch.autograd.backward``'s of its loss column's sum, to float32 rounding.
    """
    k = idx.shape[0]
    x, y, y_up = gather_batch(rows, idx)
    layers = model.layers(model.flat.detach()[:k])
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # each layer's input and output
    out = model.head_outputs(x, masks, layers, saved)  # then stacked_batch_loss's ops, in its order
    y_scale, loss_weights = y_scale[:k], loss_weights[:k]
    raw = out[:, 1]
    sigma = (F.softplus(raw) + SIGMA_FLOOR) * y_scale
    stats, z, p = stacked_forecast_loss(
        out[:, 0] * y_scale, sigma, out[:, 2], y, y_up, row_weight, loss_weights
    )
    miss = p - y_up

    # d(sum of losses) / d out, [k, 3, B]
    w_nll = row_weight * (loss_weights[:, 0:1] * y_scale) / sigma
    d_mu = -(w_nll * z)
    d_raw = w_nll * (1.0 - z * z) * torch.sigmoid(raw)
    d_logit = row_weight * miss * (loss_weights[:, 1:2] + 2.0 * loss_weights[:, 2:3] * p * (1.0 - p))
    d_out = torch.stack((d_mu, d_raw, d_logit), dim=1)

    heads_input = saved[-1][0]
    pieces: list[torch.Tensor] = [torch.bmm(d_out, heads_input).view(k, -1), d_out.sum(dim=2)]  # W, b
    d_h = torch.bmm(d_out.transpose(1, 2), layers[-1][0])  # [k, B, hidden]
    for i in reversed(range(len(layers) - 1)):
        layer_input, pre = saved[i]
        if masks is not None:
            d_h = d_h * masks[i]
        d_a = torch.ops.aten.gelu_backward(d_h, pre)
        pieces[:0] = [torch.bmm(layer_input.transpose(1, 2), d_a).view(k, -1), d_a.sum(dim=1)]
        if i:
            d_h = torch.bmm(d_a, layers[i][0].transpose(1, 2))
    torch.cat(pieces, dim=1, out=grad[:k])
    return stats
