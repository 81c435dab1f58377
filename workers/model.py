"""The forecasting network: pure computation, no side effects.

An MLP trunk with three heads: ``mu`` (mean of the next log return), ``sigma`` (its Gaussian
standard deviation, > 0) and the logit of ``p_up``. The network works in standardized target units
(the train segment's return scale); ``ForecastNet.forward`` returns those, and the train loop
multiplies ``mu`` and ``sigma`` by the scale, so the heads start near a sensible magnitude.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ForecastNet", "SIGMA_FLOOR", "forecast_loss"]

# Keeps sigma away from zero so log(sigma) and the z-scores stay finite (in standardized units).
SIGMA_FLOOR = 1e-3


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (loss, nll, bce, brier) of a batch, in the units of ``y``.

    NLL carries the 0.5*log(2*pi) constant so that it equals the reported metric (DESIGN 6).
    """
    w_nll, w_bce, w_brier = weights
    z = (y - mu) / sigma
    nll = (0.5 * torch.log(torch.tensor(2.0 * torch.pi)) + torch.log(sigma) + 0.5 * z * z).mean()
    bce = F.binary_cross_entropy_with_logits(logit, y_up)
    brier = ((torch.sigmoid(logit) - y_up) ** 2).mean()
    loss = w_nll * nll + w_bce * bce + w_brier * brier
    return loss, nll, bce, brier
