"""The stacked model, its dropout masks and its AdamW against the single-model torch originals."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from workers.model import ForecastNet, forecast_loss
from workers.stacked import StackedForecastNet, stacked_forecast_loss
from workers.stacked_dropout import ExactDropout, device_masks, fork_global_rng
from workers.stacked_grad import stacked_loss_and_grad
from workers.stacked_optim import StackedAdamW
from workers.stacked_steps import TrainTable, stacked_batch_loss

N_FEATURES, HIDDEN, DEPTH = 11, 16, 2


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread, as a fold's worker runs (two threads of tiny ops on a busy machine crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _models(k: int, depth: int = DEPTH) -> list[ForecastNet]:
    models = []
    for i in range(k):
        torch.manual_seed(100 + i)
        models.append(ForecastNet(N_FEATURES, HIDDEN, depth, 0.1))
    return models


@pytest.mark.parametrize("depth", [1, 3])
def test_stacked_forward_equals_each_forecastnet(depth: int) -> None:
    models = _models(4, depth)
    stack = StackedForecastNet.from_models(models)
    x = torch.randn(4, 37, N_FEATURES, generator=torch.Generator().manual_seed(0))
    mu, sigma, logit = stack(x)
    assert mu.shape == sigma.shape == logit.shape == (4, 37)
    for k, model in enumerate(models):
        model.eval()
        with torch.no_grad():
            expected = model(x[k])
        for got, want in zip((mu[k], sigma[k], logit[k]), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_state_dict_of_round_trips_forecastnet_state_exactly() -> None:
    models = _models(3)
    stack = StackedForecastNet.from_models(models)
    for k, model in enumerate(models):
        exported = stack.state_dict_of(k)
        assert list(exported) == list(model.state_dict())
        for name, tensor in model.state_dict().items():
            assert torch.equal(exported[name], tensor), name
    # import model 0's weights into slot 2; the export gives them back bit for bit
    stack.load_model_state(2, models[0].state_dict())
    assert all(torch.equal(stack.state_dict_of(2)[n], t) for n, t in models[0].state_dict().items())
    assert all(torch.equal(stack.state_dict_of(1)[n], t) for n, t in models[1].state_dict().items())
    # a snapshot row converts to the same state dict, and select keeps rows in the given order
    row = stack.snapshot(1)
    assert all(torch.equal(stack.state_dict_from_row(row)[n], t) for n, t in models[1].state_dict().items())
    picked = stack.select([2, 1])
    assert torch.equal(picked.flat, stack.flat[[2, 1]])
    # exports are copies: training the stack on does not change a best-epoch snapshot
    with torch.no_grad():
        stack.flat.add_(1.0)
    assert all(torch.equal(exported[n], t) for n, t in models[2].state_dict().items())
    assert all(torch.equal(stack.state_dict_from_row(row)[n], t) for n, t in models[1].state_dict().items())


def test_from_models_refuses_mixed_shapes_and_to_is_refused() -> None:
    with pytest.raises(ValueError, match="model 1 has weight shapes"):
        StackedForecastNet.from_models(
            [ForecastNet(N_FEATURES, 16, 2, 0.1), ForecastNet(N_FEATURES, 8, 2, 0.1)]
        )
    with pytest.raises(NotImplementedError, match="build it on the device"):
        StackedForecastNet.from_models(_models(2)).to(torch.float64)


def test_stacked_loss_equals_forecast_loss_over_each_models_real_rows() -> None:
    g = torch.Generator().manual_seed(1)
    k, batch = 3, 20
    mu, y = 0.01 * torch.randn(k, batch, generator=g), 0.01 * torch.randn(k, batch, generator=g)
    sigma, logit = 0.01 + 0.01 * torch.rand(k, batch, generator=g), torch.randn(k, batch, generator=g)
    counts = [20, 7, 0]
    weights = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.5, 2.0], [1.0, 1.0, 1.0]])
    row_weight = torch.zeros(k, batch)
    for i, count in enumerate(counts):
        row_weight[i, :count] = 1.0 / max(count, 1)
    stats = stacked_forecast_loss(mu, sigma, logit, y, (y > 0).float(), row_weight, weights)[0]
    for i, count in enumerate(counts[:2]):
        s = slice(0, count)
        w = (float(weights[i, 0]), float(weights[i, 1]), float(weights[i, 2]))
        want = forecast_loss(mu[i, s], sigma[i, s], logit[i, s], y[i, s], (y[i, s] > 0).float(), w)
        torch.testing.assert_close(stats[i], torch.stack(want), rtol=1e-6, atol=1e-7)
    assert torch.equal(stats[2], torch.zeros(4))  # no rows: zero loss, so zero gradient


def test_dropout_masks_are_bit_identical_to_nn_dropout_from_the_global_rng() -> None:
    """Each model's masks, for its real rows, as nn.Dropout draws them after that model's init."""
    batch, ps = 32, [0.1, 0.0, 0.3]
    counts_per_step = [[32, 32, 32], [32, 0, 32], [5, 0, 32], [0, 0, 9]]  # ragged, partial batches
    generators, expected = [], []
    for k, p in enumerate(ps):
        torch.manual_seed(7 + k)
        ForecastNet(N_FEATURES, HIDDEN, DEPTH, p)  # init draws from the global RNG, as in fit
        generators.append(fork_global_rng())
        dropout = nn.Dropout(p)
        masks = []
        for counts in counts_per_step:
            if counts[k]:  # nn.Dropout's mask shows in its output on an all-ones input
                masks.append([dropout(torch.ones(counts[k], HIDDEN)) for _ in range(DEPTH)])
        expected.append((masks, torch.get_rng_state()))
    draw = ExactDropout(
        generators, ps, batch_size=batch, hidden=HIDDEN, depth=DEPTH, device=torch.device("cpu")
    )
    seen = [0] * len(ps)
    for counts in counts_per_step:
        layers = draw.draw(counts)
        assert len(layers) == DEPTH and layers[0].shape == (len(ps), batch, HIDDEN)
        for k, count in enumerate(counts):
            if count:
                for layer in range(DEPTH):
                    assert torch.equal(layers[layer][k, :count], expected[k][0][seen[k]][layer])
                seen[k] += 1
        assert torch.isfinite(torch.stack(layers)).all()  # padding rows too: no NaN reaches a loss
    for k in range(len(ps)):
        assert torch.equal(generators[k].get_state(), expected[k][1])  # the streams advanced alike
    assert set(torch.unique(layers[0][0]).tolist()) <= {0.0, float(torch.ones(1) / 0.9)}


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_hand_written_backward_equals_autograd(depth: int) -> None:
    """stacked_loss_and_grad against autograd through stacked_batch_loss: the same statistics (the
    same forward ops) and the gradient to float32 rounding; dropout masks, a partial batch, a
    model without rows, per-model loss weights and target scales, the stack's first k models."""
    g = torch.Generator().manual_seed(11)
    models = _models(5, depth)
    for i, model in enumerate(models):  # trained-looking weights: sigma and p far from their start
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * (i + 1) * torch.randn(p.shape, generator=g))
    stack = StackedForecastNet.from_models(models)
    n, batch, k = 300, 32, 4  # the 5th model has no batch at this step: only the first 4 run
    rows = torch.randn(n, N_FEATURES + 2, generator=g)
    rows[:, N_FEATURES] *= 0.02
    rows[:, N_FEATURES + 1] = (rows[:, N_FEATURES] > 0).float()
    table = TrainTable(
        rows,
        torch.tensor([[0.02], [0.01], [0.03], [0.02], [0.01]]),
        torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.5, 2.0], [0.2, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]),
    )
    idx = torch.randint(0, n, (k, batch), generator=g)
    counts = [32, 32, 7, 0]
    row_weight = torch.zeros(k, batch)
    for i, count in enumerate(counts):
        row_weight[i, :count] = 1.0 / max(count, 1)
    masks = [(torch.rand(k, batch, HIDDEN, generator=g) < 0.8).float() / 0.8 for _ in range(depth)]

    stats = stacked_batch_loss(stack, table, idx, row_weight, masks, amp=False)
    torch.autograd.backward(stats[:, 0].sum())
    want = stack.flat.grad
    assert want is not None
    stale = torch.full_like(stack.flat, 7.0)
    got_stats = stacked_loss_and_grad(
        stack, table.rows, table.y_scale, table.loss_weights, idx, row_weight, masks, stale
    )
    assert torch.equal(got_stats, stats.detach())
    torch.testing.assert_close(stale[:k], want[:k], rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    assert torch.equal(stale[k:], torch.full_like(stale[k:], 7.0))  # rows past k are not written
    assert torch.equal(stale[3], torch.zeros_like(stale[3]))  # no rows: no gradient
    assert all(float(stale[i].abs().max()) > 0 for i in range(3))  # the models with rows learn


def test_device_masks_keep_each_models_rate_and_scale() -> None:
    """The graph's masks (device generator): per model 0 or 1/(1-p), kept at the rate 1-p."""
    keep = torch.tensor([0.9, 0.5, 1.0])
    torch.manual_seed(0)
    masks = device_masks(keep, 1.0 / keep, DEPTH, 256, 64)
    assert len(masks) == DEPTH and masks[0].shape == (3, 256, 64)
    for mask in masks:
        for k in range(3):
            assert set(torch.unique(mask[k]).tolist()) <= {0.0, float(1.0 / keep[k])}
            assert float((mask[k] > 0).float().mean()) == pytest.approx(float(keep[k]), abs=0.01)


def _stacked_and_torch(
    lrs: list[float], wds: list[float]
) -> tuple[StackedForecastNet, StackedAdamW, list[ForecastNet], list[torch.optim.AdamW]]:
    models = _models(len(lrs))
    for model in models:
        model.eval()  # no dropout: both sides compute the same gradients
    stack = StackedForecastNet.from_models(models)
    optimizer = StackedAdamW([stack.flat], lrs, wds)
    torch_optimizers = [
        torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd)
        for m, lr, wd in zip(models, lrs, wds, strict=True)
    ]
    return stack, optimizer, models, torch_optimizers


def test_stacked_adamw_equals_torch_adamw_per_model_with_ragged_activity() -> None:
    lrs, wds = [1e-2, 3e-3, 1e-3, 5e-2], [0.0, 1e-2, 1e-4, 0.1]
    stack, optimizer, models, torch_optimizers = _stacked_and_torch(lrs, wds)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(lrs), 24, N_FEATURES, generator=g)
    y = 0.01 * torch.randn(len(lrs), 24, generator=g)
    activity = (torch.rand(40, len(lrs), generator=g) < 0.6).float()
    activity[:5, 3] = 0.0  # model 3 starts late: its first step count is 1 at its first step
    assert len(models) == len(torch_optimizers) == len(lrs) and activity.sum() > 0
    for active in activity:
        frozen = stack.flat.detach().clone()
        # the same gradients on both sides: each model's loss on its own rows
        mu, sigma, logit = stack(x)
        weight = torch.full((len(lrs), 24), 1 / 24)
        loss_weights = torch.ones(len(lrs), 3)
        optimizer.zero_grad()
        torch.autograd.backward(
            stacked_forecast_loss(mu, sigma, logit, y, (y > 0).float(), weight, loss_weights)[0][:, 0].sum()
        )
        optimizer.step(active)
        for k, (model, torch_optimizer) in enumerate(zip(models, torch_optimizers, strict=True)):
            if not active[k]:
                assert torch.equal(stack.flat[k].detach(), frozen[k])  # idle: untouched, bit for bit
                continue
            torch_optimizer.zero_grad()
            mu_k, sigma_k, logit_k = model(x[k])
            stats = forecast_loss(mu_k, sigma_k, logit_k, y[k], (y[k] > 0).float(), (1.0, 1.0, 1.0))
            torch.autograd.backward(stats[0])
            torch_optimizer.step()
    for k, model in enumerate(models):
        got = stack.state_dict_of(k)
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=2e-5)  # 40 steps of float32 drift
        steps = torch_optimizers[k].state[next(model.parameters())]["step"]
        assert float(optimizer.steps[k]) == float(steps) == float(activity[:, k].sum())


def test_stacked_adamw_update_is_torchs_bit_for_bit_on_equal_gradients() -> None:
    """Given the same gradients, the update is torch's op for op (single-tensor AdamW on a CPU)."""
    lrs, wds = [1e-2, 3e-3, 1e-3], [0.0, 1e-2, 0.1]
    stack, optimizer, models, torch_optimizers = _stacked_and_torch(lrs, wds)
    g = torch.Generator().manual_seed(3)
    assert len(models) == len(torch_optimizers) == len(lrs)
    for step in range(25):
        active = torch.tensor([1.0, float(step % 3 != 0), float(step >= 10)])
        grads = torch.randn(stack.flat.shape, generator=g)
        stack.flat.grad = grads.clone()
        optimizer.step(active)
        for k, model in enumerate(models):
            if active[k]:
                grad_state = stack.state_dict_from_row(grads[k])
                for name, p in model.named_parameters():
                    p.grad = grad_state[name].clone()
                torch_optimizers[k].step()
    for k, model in enumerate(models):
        got = stack.state_dict_of(k)
        assert all(torch.equal(got[name], tensor) for name, tensor in model.state_dict().items())


def test_stacked_adamw_select_carries_each_models_state() -> None:
    lrs, wds = [1e-2, 3e-3, 1e-3], [0.0, 1e-2, 0.1]
    stack, optimizer, _, _ = _stacked_and_torch(lrs, wds)
    g = torch.Generator().manual_seed(5)
    for active in ([1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]):
        stack.flat.grad = torch.randn(stack.flat.shape, generator=g)
        optimizer.step(torch.tensor(active))
    picked = stack.select([2, 0])
    moved = optimizer.select([2, 0], [picked.flat])
    assert moved.steps.tolist() == [2.0, 3.0]
    assert moved.lr.tolist() == [1e-3, 1e-2] and moved.weight_decay.tolist() == [0.1, 0.0]
    assert torch.equal(moved.exp_avg[0], optimizer.exp_avg[0][[2, 0]])
    grad = torch.randn(stack.flat.shape, generator=g)
    stack.flat.grad, picked.flat.grad = grad.clone(), grad[[2, 0]].clone()
    optimizer.step(torch.ones(3))
    moved.step(torch.ones(2))
    np.testing.assert_array_equal(picked.flat.detach().numpy(), stack.flat.detach()[[2, 0]].numpy())
