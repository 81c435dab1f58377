"""The forecasting network: pure computation, no side effects.

An MLP trunk with three heads: ``mu`` (mean of the next log return), ``sigma`` (its Gaussian
standard deviation, > 0) and the logit of ``p_up``. The network works in standardized target units
(the train segment's return scale); ``ForecastNet.forward`` returns those, and the train loop
multiplies ``mu`` and ``sigma`` by the scale, so the heads start near a sensible magnitude.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ForecastNet", "SIGMA_FLOOR", "forecast_loss"]

# Keeps sigma away from zero so log(sigma) and the z-scores stay finite (in standardized units).
SIGMA_FLOOR = 1e-3
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class ForecastNet(nn.Module):
    def __init__(self, n_features: int, hidden: int, depth: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.Linear(width, 3)  # mu, raw sigma, logit(p_up)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.heads(self.trunk(x))
        mu = out[:, 0]
        # softplus(0) + floor ~ 0.69: the initial sigma is of the order of the standardized target.
        sigma = F.softplus(out[:, 1]) + SIGMA_FLOOR
        logit = out[:, 2]
        return mu, sigma, logit


def forecast_loss(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    logit: torch.Tensor,
    y: torch.Tensor,
    y_up: torch.Tensor,
    weights: tuple[float, float, float],
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (loss, nll, bce, brier) of a batch, in the units of ``y``.

    NLL carries the 0.5*log(2*pi) constant so that it equals the reported metric (DESIGN 6).
    ``weight`` (0/1 per row) gives the means over the rows with weight 1: a padded batch.
    """
    w_nll, w_bce, w_brier = weights
    z = (y - mu) / sigma
    nll_rows = _HALF_LOG_2PI + torch.log(sigma) + 0.5 * z * z
    bce_rows = F.binary_cross_entropy_with_logits(logit, y_up, reduction="none")
    brier_rows = (torch.sigmoid(logit) - y_up) ** 2
    if weight is None:
        nll, bce, brier = nll_rows.mean(), bce_rows.mean(), brier_rows.mean()
    else:
        total = weight.sum()
        nll = (nll_rows * weight).sum() / total
        bce = (bce_rows * weight).sum() / total
        brier = (brier_rows * weight).sum() / total
    loss = w_nll * nll + w_bce * bce + w_brier * brier
    return loss, nll, bce, brier
