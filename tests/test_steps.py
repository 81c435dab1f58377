"""The train step: weighted (padded) loss equals the plain loss; graphed equals eager on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.model import ForecastNet, forecast_loss
from workers.steps import EagerStep, GraphedStep, make_step


def _data(n: int = 300, f: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, f, generator=g)
    y = 0.01 * torch.randn(n, generator=g) + 0.002 * X[:, 0]
    return X, y


def test_padded_weighted_loss_equals_plain_loss() -> None:
    g = torch.Generator().manual_seed(1)
    mu, y = 0.01 * torch.randn(50, generator=g), 0.01 * torch.randn(50, generator=g)
    sigma, logit = 0.01 + torch.rand(50, generator=g) * 0.01, torch.randn(50, generator=g)
    plain = forecast_loss(mu[:30], sigma[:30], logit[:30], y[:30], (y[:30] > 0).float(), (1.0, 0.5, 2.0))
    weight = torch.zeros(50)
    weight[:30] = 1.0
    padded = forecast_loss(mu, sigma, logit, y, (y > 0).float(), (1.0, 0.5, 2.0), weight=weight)
    assert len(plain) == 4  # (loss, nll, bce, brier)
    for a, b in zip(plain, padded, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_nll_in_loss_matches_scipy() -> None:
    from scipy import stats

    g = torch.Generator().manual_seed(2)
    mu, y = (
        torch.randn(40, generator=g, dtype=torch.float64),
        torch.randn(40, generator=g, dtype=torch.float64),
    )
    sigma = 0.5 + torch.rand(40, generator=g, dtype=torch.float64)
    _, nll, _, _ = forecast_loss(
        mu, sigma, torch.zeros(40, dtype=torch.float64), y, (y > 0).double(), (1, 1, 1)
    )
    assert float(nll) == pytest.approx(-stats.norm.logpdf(y, mu, sigma).mean(), rel=1e-12)


def test_eager_step_is_chosen_on_cpu_and_learns() -> None:
    torch.manual_seed(0)
    X, y = _data()
    model = ForecastNet(X.shape[1], 32, 2, 0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = make_step(model, opt, X, y, float(y.std()), (1.0, 1.0, 1.0), 64, cuda_graphs=True, amp=False)
    assert isinstance(step, EagerStep)
    first = float(step(torch.arange(64))[0])
    for _ in range(60):
        last = float(step(torch.arange(64))[0])
    assert last < first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_step_matches_eager_on_cuda() -> None:
    device = torch.device("cuda")
    X, y = (t.to(device) for t in _data(n=1000))
    results = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = ForecastNet(X.shape[1], 64, 2, 0.0).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, capturable=graphed)
        args = (model, opt, X, y, float(y.std()), (1.0, 1.0, 1.0))
        step = GraphedStep(*args, batch_size=256) if graphed else EagerStep(*args)
        order = torch.randperm(1000, generator=torch.Generator().manual_seed(3)).to(device)
        losses = [step(order[i : i + 256]) for i in range(0, 1000, 256)]  # last batch is partial
        results.append(
            (torch.stack(losses).cpu().numpy(), [p.detach().cpu().numpy() for p in model.parameters()])
        )
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
