"""K ``ForecastNet``s of one shape as one module, and their loss: pure computation.

``StackedForecastNet`` holds the weights of K models in ONE parameter ``flat`` of shape
``[K, P]`` (P = the weights of one model), one row per model. The forward splits it into per-layer
views ``W [K, in, out]`` and ``b [K, 1, out]`` and runs one ``torch.baddbmm`` per layer, so K
models cost one op per layer instead of K; the split's backward is a single ``cat``, so the
gradient arrives as one ``[K, P]`` tensor that ``StackedAdamW`` updates with a few ops.

Row layout of one model, layer after layer: each trunk layer's ``W`` as ``[in, out]``
(``nn.Linear.weight`` transposed: ``h @ W``) then its bias ``[out]``; then the heads' ``W`` as
``[3, hidden]`` (``nn.Linear``'s own layout) and bias ``[3]``. The heads compute ``W @ h^T``, a
``[K, 3, B]`` result: a 3-wide output is a poor matmul shape the other way round (about 4x slower
forward and weight gradient at K=5, B=256) and the three heads come out as contiguous rows. ``state_dict_of(k)`` / ``load_model_state(k, ...)`` convert a row to and from
``ForecastNet``'s own ``state_dict``, exactly (a transpose and a copy), so best-epoch snapshots,
predictions and calibration run per model as they do for one ``ForecastNet``.

The maths are ``ForecastNet``'s: GELU after each trunk layer, then dropout (the caller passes the
masks: ``workers.stacked_dropout``), heads ``mu``, ``softplus(raw) + SIGMA_FLOOR``, ``logit``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NoReturn

import torch
from torch import nn
from torch.nn import functional as F

from workers.model import SIGMA_FLOOR, ForecastNet

__all__ = ["StackedForecastNet", "gather_batch", "stacked_forecast_loss"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _linear_names(depth: int) -> list[str]:
    """``ForecastNet``'s Linear modules in forward order (trunk is [Linear, GELU, Dropout] * depth)."""
    return [f"trunk.{3 * layer}" for layer in range(depth)] + ["heads"]


class StackedForecastNet(nn.Module):
    """K ``ForecastNet(n_features, hidden, depth, ...)`` as one module with weights ``flat [K, P]``.

    The parameter is built on its device and its layer tensors are views of it: ``.to()`` and
    the other ``nn.Module._apply`` conversions are refused (build another one on the device).
    """

    def __init__(
        self, k: int, n_features: int, hidden: int, depth: int, *, device: torch.device | None = None
    ) -> None:
        super().__init__()
        if k < 1 or n_features < 1 or hidden < 1 or depth < 1:
            raise ValueError(
                f"k, n_features, hidden and depth must be >= 1, got k={k}, "
                f"n_features={n_features}, hidden={hidden}, depth={depth}"
            )
        self.k, self.n_features, self.hidden, self.depth = k, n_features, hidden, depth
        widths = [n_features] + [hidden] * depth + [3]
        self.shapes: list[tuple[int, int]] = list(zip(widths[:-1], widths[1:], strict=True))
        self.sizes: list[int] = [
            size for fan_in, fan_out in self.shapes for size in (fan_in * fan_out, fan_out)
        ]
        self.flat = nn.Parameter(torch.zeros(k, sum(self.sizes), device=device))

    @classmethod
    def from_models(
        cls, models: Sequence[ForecastNet], device: torch.device | None = None
    ) -> StackedForecastNet:
        """The stack of ``models`` (in order); raises ``ValueError`` if their shapes differ."""
        if not models:
            raise ValueError("from_models needs at least one ForecastNet, got none")
        first = models[0].state_dict()
        depth = len(_linear_names_of(first)) - 1
        hidden, n_features = first["trunk.0.weight"].shape
        for i, model in enumerate(models):
            shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
            if shapes != {name: tuple(t.shape) for name, t in first.items()}:
                raise ValueError(f"model {i} has weight shapes {shapes}, model 0 has other ones")
        stack = cls(len(models), int(n_features), int(hidden), depth, device=device)
        for i, model in enumerate(models):
            stack.load_model_state(i, model.state_dict())
        return stack

    def _apply(self, fn: object, recurse: bool = True) -> NoReturn:
        raise NotImplementedError(
            "StackedForecastNet's layer tensors are views of its one parameter: build it on the "
            "device it should live on (StackedForecastNet.from_models(models, device)) instead of .to()"
        )

    def layers(self, flat: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of ``flat`` (default: the parameter): per trunk layer ``(W [K, in, out], b [K, 1, out])``,
        then the heads' ``(W [K, 3, hidden], b [K, 3, 1])``."""
        source = self.flat if flat is None else flat
        k = source.shape[0]
        pieces = torch.split(source, self.sizes, dim=1)  # one autograd node; its backward is one cat
        trunk = [
            (pieces[2 * i].view(k, fan_in, fan_out), pieces[2 * i + 1].view(k, 1, fan_out))
            for i, (fan_in, fan_out) in enumerate(self.shapes[:-1])
        ]
        heads = (pieces[-2].view(k, 3, self.hidden), pieces[-1].view(k, 3, 1))
        return [*trunk, heads]

    def _linear_weights(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(weight [K, out, in], bias [K, out])`` per Linear, as ``nn.Linear`` holds them (views)."""
        layers = self.layers(flat)
        out = [(weight.transpose(1, 2), bias[:, 0]) for weight, bias in layers[:-1]]
        weight, bias = layers[-1]
        return [*out, (weight, bias[:, :, 0])]

    def forward(
        self, x: torch.Tensor, masks: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [k, B, n_features]`` -> ``(mu, sigma, logit)``, each ``[k, B]`` (standardized units).

        ``k <= K``: the first ``k`` models run (a step at which the last models of the stack have
        no batch skips their compute; their gradient rows are zero). ``masks``: one
        ``[k, B, hidden]`` per trunk layer, multiplied after its GELU (dropout's scaled keep
        mask, ``0`` or ``1 / (1 - p)``); ``None``: no dropout (evaluation).
        """
        k = x.shape[0]
        out = self.head_outputs(x, masks, self.layers(self.flat if k == self.k else self.flat[:k]))
        return out[:, 0], F.softplus(out[:, 1]) + SIGMA_FLOOR, out[:, 2]

    def head_outputs(
        self,
        x: torch.Tensor,
        masks: Sequence[torch.Tensor] | None,
        layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
        saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """The heads' raw outputs ``[k, 3, B]`` (``mu``, the pre-softplus ``sigma``, ``logit``) of
        ``x [k, B, n_features]`` through ``layers`` (``self.layers`` of the first ``k`` rows).
        ``saved``: gets each layer's ``(input, output)``, the trunk's before GELU, then the heads':
        what a backward needs."""
        h = x
        for i, (weight, bias) in enumerate(layers[:-1]):
            a = torch.baddbmm(bias, h, weight)
            if saved is not None:
                saved.append((h, a))
            h = F.gelu(a)
            if masks is not None:
                h = h * masks[i]
        weight, bias = layers[-1]
        out = torch.baddbmm(bias, weight, h.transpose(1, 2))  # [k, 3, B]: see the module doc
        if saved is not None:
            saved.append((h, out))
        return out

    def snapshot(self, k: int) -> torch.Tensor:
        """A copy of model ``k``'s weights as one row ``[P]`` (one op; ``state_dict_from_row`` reads it)."""
        return self.flat.detach()[k].clone()

    def state_dict_from_row(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """``ForecastNet``'s ``state_dict`` of one weight row ``[P]`` (copies, contiguous)."""
        out: dict[str, torch.Tensor] = {}
        for name, (weight, bias) in zip(
            _linear_names(self.depth), self._linear_weights(row[None]), strict=True
        ):
            out[f"{name}.weight"] = weight[0].clone(memory_format=torch.contiguous_format)
            out[f"{name}.bias"] = bias[0].clone()
        return out

    def state_dict_of(self, k: int) -> dict[str, torch.Tensor]:
        """Model ``k``'s weights as ``ForecastNet.state_dict()`` gives them (same keys and shapes)."""
        return self.state_dict_from_row(self.flat.detach()[k])

    def load_model_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Set model ``k``'s weights from a ``ForecastNet`` state dict (``KeyError`` if one is missing)."""
        with torch.no_grad():
            linears = self._linear_weights(self.flat)
            for name, (weight, bias) in zip(_linear_names(self.depth), linears, strict=True):
                weight[k].copy_(state[f"{name}.weight"])
                bias[k].copy_(state[f"{name}.bias"])

    def select(self, rows: Sequence[int]) -> StackedForecastNet:
        """A new stack of models ``rows`` (in that order), their weights copied: re-stacking."""
        stack = StackedForecastNet(
            len(rows), self.n_features, self.hidden, self.depth, device=self.flat.device
        )
        with torch.no_grad():
            stack.flat.copy_(self.flat[list(rows)])
        return stack


def _linear_names_of(state: dict[str, torch.Tensor]) -> list[str]:
    names = [key[: -len(".weight")] for key in state if key.endswith(".weight")]
    depth = len(names) - 1
    if names != _linear_names(depth):
        raise ValueError(f"not a ForecastNet state dict: weights {names}")
    return names


def gather_batch(rows: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x [k, B, n_features], y [k, B], y_up [k, B])`` of the padded batch ``idx [k, B]`` of a
    train table ``rows [N, n_features + 2]`` (features, ``y``, ``y > 0``): one gather, views."""
    k, batch = idx.shape
    gathered = torch.index_select(rows, 0, idx.view(-1)).view(k, batch, -1)
    n_features = rows.shape[1] - 2
    return gathered[..., :n_features], gathered[..., n_features], gathered[..., n_features + 1]


def stacked_forecast_loss(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    logit: torch.Tensor,
    y: torch.Tensor,
    y_up: torch.Tensor,
    row_weight: torch.Tensor,
    loss_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-model ``[loss, nll, bce, brier]`` (``[K, 4]``) of a stacked batch, in the units of ``y``,
    and the ``z = (y - mu) / sigma`` and ``p = sigmoid(logit)`` (``[K, B]``) computed on the way
    (what ``workers.stacked_grad``'s backward reuses).

    ``mu, sigma, logit, y, y_up``: ``[K, B]``. ``row_weight [K, B]``: ``1 / count`` on a model's
    real rows and 0 on padding, so each row of the result is ``forecast_loss`` over that model's
    real rows (a model with no rows gets zeros, and zero gradients). ``loss_weights [K, 3]``:
    ``(w_nll, w_bce, w_brier)`` per model. The formulas are ``forecast_loss``'s.
    """
    z = (y - mu) / sigma
    nll = _HALF_LOG_2PI + torch.log(sigma) + 0.5 * z * z
    bce = F.binary_cross_entropy_with_logits(logit, y_up, reduction="none")
    p = torch.sigmoid(logit)
    brier = (p - y_up) ** 2
    rows = torch.stack((nll, bce, brier), dim=2)  # [K, B, 3]
    means = torch.bmm(row_weight.unsqueeze(1), rows).squeeze(1)  # [K, 3]: one op for all means
    loss = (means * loss_weights).sum(dim=1, keepdim=True)
    return torch.cat((loss, means), dim=1), z, p
