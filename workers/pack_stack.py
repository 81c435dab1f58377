"""The stack a pack trains now: its models' weights, optimizer, data, dropout and step, and re-stacking.

``Stack`` is the compute side of ``workers.packed.fit_pack``: it knows tensors, not callbacks.
Models are stacked in descending order of train size, so at any step of an epoch the models that
still have a batch are a prefix of the stack. ``plan_epoch`` draws each model's epoch order from
that model's own generator (``torch.randperm``, as ``workers.train.run_epoch`` does) and lays the
epoch out as padded ``[steps, K, batch]`` index and weight tensors, uploaded once per epoch.
``evaluate`` runs the calibration and validation segments of every model in one stacked forward.
``restack`` builds the stack of the survivors (weights, moments, step counts and generators carried
over); ``retire`` keeps a model's slot but gives it no rows (no re-capture of a CUDA graph).

Memory on the device: every model's train rows once (``[N, n_features + 2]`` float32), their
calibration and validation rows zero-padded to the longest (``[K, M, n_features]``), one epoch's
padded plan (``[steps, K, batch]`` indices and weights), weights and two moments (``3 x [K, P]``);
on the CPU the dropout buffers (``[K, depth * batch * hidden]`` int64, bool and float32: 2.1 MB at
K=5 of the default job). Best-epoch snapshots are ``ForecastNet`` state dicts, one per model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workers.metrics import Forecast
from workers.model import ForecastNet
from workers.stacked import StackedForecastNet
from workers.stacked_dropout import ExactDropout
from workers.stacked_optim import StackedAdamW
from workers.stacked_steps import EagerStackedStep, GraphedStackedStep, StackedStep, TrainTable
from workers.train import Segments, TrainSettings

__all__ = ["Slot", "EpochPlan", "Stack"]


@dataclass(frozen=True)
class Slot:
    """One model of a pack as the stack sees it (``index``: its position among the pack's members)."""

    index: int
    segments: Segments
    settings: TrainSettings
    y_scale: float
    order: torch.Generator  # the epoch orders, as fit's generator (seeded with settings.seed)
    dropout: torch.Generator  # the mask stream (workers.stacked_dropout.fork_global_rng)

    @property
    def n_train(self) -> int:
        return int(self.segments.X_train.shape[0])


@dataclass(frozen=True)
class EpochPlan:
    """One epoch of the stack, padded: step ``t`` trains model ``k`` on ``counts[t, k]`` rows.

    ``idx``, ``row_weight``: ``[steps, K, batch]`` on the device; ``active``: ``[steps, K]``
    (0/1 float); ``counts``: host ints; ``n``: each model's train rows this epoch (0: retired);
    ``width[t]``: the models a step must run, a prefix of the stack (the last one with rows, + 1).
    """

    idx: torch.Tensor
    row_weight: torch.Tensor
    active: torch.Tensor
    counts: np.ndarray
    n: np.ndarray
    width: list[int]

    @property
    def steps(self) -> int:
        return int(self.counts.shape[0])


class Stack:
    """The models ``slots`` (in stack order) stacked on ``device``; see the module doc."""

    def __init__(
        self, slots: Sequence[Slot], net: StackedForecastNet, optimizer: StackedAdamW, device: torch.device
    ) -> None:
        self.slots = list(slots)
        self.net, self.optimizer, self.device = net, optimizer, device
        self.live = [True] * len(self.slots)
        first = self.slots[0].settings
        self.batch_size = first.batch_size
        self.graphed = first.cuda_graphs and device.type == "cuda"
        sizes = [slot.n_train for slot in self.slots]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.table = _train_table(self.slots, device)
        self.eval_x, self.eval_rows = _eval_inputs(self.slots, device)
        self.step: StackedStep = self._make_step()

    @classmethod
    def build(cls, slots: Sequence[Slot], models: Sequence[ForecastNet], device: torch.device) -> Stack:
        """The stack of fresh ``models`` (one per slot, in the same order)."""
        order = sorted(range(len(slots)), key=lambda i: -slots[i].n_train)  # stable: ties by index
        net = StackedForecastNet.from_models([models[i] for i in order], device)
        optimizer = StackedAdamW(
            [net.flat],
            [slots[i].settings.lr for i in order],
            [slots[i].settings.weight_decay for i in order],
        )
        return cls([slots[i] for i in order], net, optimizer, device)

    def restack(self, keep: Sequence[int]) -> Stack:
        """The stack of the models at positions ``keep`` (in that order), state carried over."""
        net = self.net.select(keep)
        return Stack([self.slots[i] for i in keep], net, self.optimizer.select(keep, [net.flat]), self.device)

    def retire(self, position: int) -> None:
        """Give the model at ``position`` no more rows (its slot stays; its state is frozen)."""
        self.live[position] = False

    def member_order(self) -> list[int]:
        """The positions of the live models, in the order of their members (callbacks run so)."""
        live = [p for p in range(len(self.slots)) if self.live[p]]
        return sorted(live, key=lambda p: self.slots[p].index)

    def _make_step(self) -> StackedStep:
        settings = [slot.settings for slot in self.slots]
        first = settings[0]
        dropout = [s.dropout for s in settings]
        if self.graphed:
            keep = torch.tensor([1.0 - p for p in dropout], device=self.device)
            return GraphedStackedStep(
                self.net,
                self.optimizer,
                self.table,
                keep if any(dropout) else None,
                1.0 / keep if any(dropout) else None,
                self.batch_size,
                first.mixed_precision,
            )
        masks = None
        if any(dropout):
            masks = ExactDropout(
                [slot.dropout for slot in self.slots],
                dropout,
                batch_size=self.batch_size,
                hidden=first.hidden,
                depth=first.depth,
                device=self.device,
            )
        return EagerStackedStep(self.net, self.optimizer, self.table, masks, first.mixed_precision)

    def plan_epoch(self) -> EpochPlan:
        """Draw each live model's epoch order (advancing its generator) and lay the epoch out."""
        batch = self.batch_size
        n = np.array([slot.n_train if live else 0 for slot, live in zip(self.slots, self.live, strict=True)])
        steps = max(math.ceil(int(n.max()) / batch), 1)
        idx = np.repeat(self.offsets[:, None], steps * batch, axis=1)  # padding: a real row of the model
        for k, slot in enumerate(self.slots):
            if n[k]:
                order = torch.randperm(int(n[k]), generator=slot.order).numpy()
                idx[k, : n[k]] = order + self.offsets[k]
        counts = np.clip(n[None, :] - batch * np.arange(steps)[:, None], 0, batch)  # [steps, K]
        weight = (np.arange(batch)[None, None, :] < counts[:, :, None]) / np.maximum(counts, 1)[:, :, None]
        last_with_rows = len(n) - 1 - np.argmax(counts[:, ::-1] > 0, axis=1)
        # a CUDA graph has one shape: it always runs every slot
        width = [len(n)] * steps if self.graphed else [int(w) + 1 for w in last_with_rows]
        return EpochPlan(
            idx=torch.from_numpy(idx.reshape(len(n), steps, batch).transpose(1, 0, 2).copy()).to(self.device),
            row_weight=torch.from_numpy(weight.astype(np.float32)).to(self.device),
            active=torch.from_numpy((counts > 0).astype(np.float32)).to(self.device),
            counts=counts,
            n=n,
            width=width,
        )

    def train_step(self, plan: EpochPlan, t: int) -> torch.Tensor:
        """Step ``t`` of ``plan``: ``[width, 4]`` per-model (loss, nll, bce, brier) means of the
        stack's first ``plan.width[t]`` models, on the device."""
        k = plan.width[t]
        return self.step(
            plan.idx[t, :k], plan.row_weight[t, :k], plan.active[t, :k], plan.counts[t, :k].tolist()
        )

    def train_means(self, plan: EpochPlan, stats: Sequence[torch.Tensor]) -> np.ndarray:
        """``[K, 4]`` float64 means over each model's rows of the epoch (nan for a retired model).

        The one host read of the epoch's train loop (a sync on a GPU).
        """
        counts = torch.from_numpy(plan.counts).to(self.device, torch.float64)
        sums = torch.zeros(len(self.slots), 4, dtype=torch.float64, device=self.device)
        start = 0
        for end in range(1, plan.steps + 1):  # steps of one width are consecutive: one sum each
            if end == plan.steps or plan.width[end] != plan.width[start]:
                k = plan.width[start]
                group = torch.stack(list(stats[start:end])).double() * counts[start:end, :k, None]
                sums[:k] += group.sum(dim=0)
                start = end
        with np.errstate(invalid="ignore", divide="ignore"):
            means: np.ndarray = sums.cpu().numpy() / plan.n[:, None]
        return means

    def evaluate(self) -> list[tuple[Forecast, Forecast]]:
        """Every model's calibration and validation forecasts, from one stacked forward."""
        with torch.no_grad():
            mu, sigma, logit = self.net(self.eval_x)
            scale = self.table.y_scale
            # .cpu() is a host-device sync: once per epoch for the whole stack
            out = torch.stack(
                ((mu * scale).double(), (sigma * scale).double(), torch.sigmoid(logit.double()))
            )
            values = out.cpu().numpy()
        forecasts = []
        for k, (n_cal, n_val) in enumerate(self.eval_rows):
            cal, val = slice(0, n_cal), slice(n_cal, n_cal + n_val)
            forecasts.append(
                (
                    Forecast(mu=values[0, k, cal], sigma=values[1, k, cal], p_up=values[2, k, cal]),
                    Forecast(mu=values[0, k, val], sigma=values[1, k, val], p_up=values[2, k, val]),
                )
            )
        return forecasts


def _train_table(slots: Sequence[Slot], device: torch.device) -> TrainTable:
    parts = []
    for slot in slots:
        y = slot.segments.y_train.astype(np.float32)  # y > 0 as fit sees it: in float32
        parts.append(np.column_stack([slot.segments.X_train.astype(np.float32), y, y > 0]).astype(np.float32))
    return TrainTable(
        rows=torch.from_numpy(np.concatenate(parts)).to(device),
        y_scale=torch.tensor([[slot.y_scale] for slot in slots], dtype=torch.float32, device=device),
        loss_weights=torch.tensor([list(slot.settings.loss_weights) for slot in slots], device=device),
    )


def _eval_inputs(slots: Sequence[Slot], device: torch.device) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``[K, M, n_features]``: each model's calibration rows, then its validation rows, zero-padded."""
    rows = [(len(slot.segments.y_cal), len(slot.segments.y_val)) for slot in slots]
    width = max(n_cal + n_val for n_cal, n_val in rows)
    x = np.zeros((len(slots), width, slots[0].segments.X_cal.shape[1]), dtype=np.float32)
    for k, (slot, (n_cal, n_val)) in enumerate(zip(slots, rows, strict=True)):
        x[k, :n_cal] = slot.segments.X_cal
        x[k, n_cal : n_cal + n_val] = slot.segments.X_val
    return torch.from_numpy(x).to(device), rows
