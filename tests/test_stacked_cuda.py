"""The stacked step on a CUDA device: the graph replays the eager step; fit_pack equals fit there.

Dropout is off in the comparisons: on a device the graph draws its masks from the device's
generator, not from the per-model CPU streams, so only dropout-free runs can match step for step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from orchestrator.config import config_from_mapping
from tests.synthetic import ar1_ohlcv
from tests.test_stacked_fit import _folds
from workers.features import build_features
from workers.model import ForecastNet
from workers.packed import PackMember, fit_pack
from workers.stacked import StackedForecastNet
from workers.stacked_optim import StackedAdamW
from workers.stacked_steps import EagerStackedStep, GraphedStackedStep, TrainTable
from workers.train import EpochRecord, TrainOutcome, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _stack(device: torch.device, lrs: list[float]) -> tuple[StackedForecastNet, StackedAdamW]:
    models = []
    for i in range(len(lrs)):
        torch.manual_seed(i)
        models.append(ForecastNet(11, 32, 2, 0.0))
    net = StackedForecastNet.from_models(models, device)
    return net, StackedAdamW([net.flat], lrs, [1e-4, 1e-2, 0.0][: len(lrs)])


def test_graphed_stacked_step_replays_the_eager_step() -> None:
    device = torch.device("cuda")
    lrs, batch, n = [1e-3, 3e-3, 1e-2], 64, 500
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 11, generator=g), 0.01 * torch.randn(n, generator=g)
    table = TrainTable(
        torch.cat([x, y[:, None], (y > 0).float()[:, None]], dim=1).to(device),
        torch.full((3, 1), 0.01, device=device),
        torch.ones(3, 3, device=device),
    )
    eager_net, eager_opt = _stack(device, lrs)
    graph_net, graph_opt = _stack(device, lrs)
    eager = EagerStackedStep(eager_net, eager_opt, table, None)
    graphed = GraphedStackedStep(graph_net, graph_opt, table, None, None, batch)
    counts = [[64, 64, 64], [64, 10, 64], [64, 0, 30], [5, 0, 0]]  # ragged, partial, idle models
    stats = []
    for step_counts in counts * 3:
        idx = torch.randint(0, n, (3, batch), generator=g).to(device)
        weight = torch.zeros(3, batch)
        for k, count in enumerate(step_counts):
            weight[k, :count] = 1.0 / max(count, 1)
        active = torch.tensor([float(c > 0) for c in step_counts])
        args = (idx, weight.to(device), active.to(device), step_counts)
        stats.append((eager(*args).cpu(), graphed(*args).cpu()))
    for want, got in stats:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(graph_net.flat, eager_net.flat, rtol=1e-4, atol=1e-6)
    assert graph_opt.steps.tolist() == eager_opt.steps.tolist() == [12.0, 6.0, 6.0]


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_fit_pack_equals_fit_on_cuda_without_dropout(cuda_graphs: bool) -> None:
    device = torch.device("cuda")
    config = config_from_mapping(
        {
            "folds": 3,
            "epochs": 4,
            "lookback": 10,
            "hidden": 16,
            "batch_size": 64,
            "patience": 1,
            "dropout": 0.0,
        }
    )
    features = build_features(ar1_ohlcv(1500, seed=3, phi=0.3), config.lookback)
    folds = [(s, dataclasses.replace(t, cuda_graphs=cuda_graphs)) for s, t in _folds(features, config)]
    fitted = [fit(s, t, device=device, on_epoch=lambda r: None, elapsed=lambda: 0.0) for s, t in folds]
    records: list[list[EpochRecord]] = [[] for _ in folds]
    members = [
        PackMember(s, t, on_epoch=records[i].append, elapsed=lambda: 0.0) for i, (s, t) in enumerate(folds)
    ]
    packed = fit_pack(members, device=device)
    assert len(packed) == len(fitted)
    for want, got in zip(fitted, packed, strict=True):
        assert isinstance(got, TrainOutcome)
        assert (got.best_epoch, got.epochs_run) == (want.best_epoch, want.epochs_run)
        for got_record, want_record in zip(got.history, want.history, strict=True):
            for key in ("train_loss", "val_loss", "cal_loss", "val_nll"):
                assert got_record[key] == pytest.approx(want_record[key], rel=1e-3, abs=1e-4)
        np.testing.assert_allclose(got.val.mu, want.val.mu, rtol=1e-3, atol=1e-6)
