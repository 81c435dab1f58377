"""Packed training on one CPU thread: K separate models against one stack. Prints JSON.

``step``: ms per round of K optimizer steps of the default architecture (11 features, 64 wide,
depth 2, dropout 0.1, batch 256, real S&P 500 rows): K ``ForecastNet`` + ``torch.optim.AdamW``
through ``workers.steps.EagerStep`` one after the other, against one ``EagerStackedStep`` with
the exact CPU dropout streams (``stacked``: the hand-written backward of ``workers.stacked_grad``;
``stacked_autograd``: the same step through autograd). ``stacked_parts_K5_cpu_ms``: where a
stacked step's time goes at K=5 (the autograd parts measured after the step, for comparison).

``fit``: the default job's 5 real folds (``TrainConfig()``: 25 epochs, patience 10) trained by
``workers.train.fit`` one after the other against ``workers.packed.fit_pack`` (and against
``fit_pack`` keeping idle slots instead of re-stacking), each member with the callbacks
``run_fold`` gives (a no-op ``on_epoch``, a 0.25 s ``BatchReporter``), and a breakdown of each:
optimizer steps, per-epoch evaluation (forward passes, metrics, cal loss, final predictions), rest.

Two clocks: wall (``perf_counter``) and the thread's CPU time (``thread_time``). On a shared,
loaded machine the wall clock also counts the time other processes hold the core; CPU time does
not (it still pays for their cache and memory traffic). Every repetition runs the ways back to back
in one process, order rotated; medians are reported with every repetition's figure, and the
ratios are of the medians.

Usage: python bench/stacked_step.py [--repeats 5] [--rounds 200] [--ks 1,5,20] [--epochs 25]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import workers.packed as packed_module  # noqa: E402
import workers.train as train_module  # noqa: E402
from bench.machine import machine  # noqa: E402
from orchestrator.config import TrainConfig  # noqa: E402
from orchestrator.data.cache import run_data  # noqa: E402
from orchestrator.run.cv import plan_folds_for  # noqa: E402
from workers.features import Standardizer  # noqa: E402
from workers.fold import train_settings  # noqa: E402
from workers.model import ForecastNet  # noqa: E402
from workers.pack_stack import Stack  # noqa: E402
from workers.packed import PackMember, fit_pack  # noqa: E402
from workers.stacked import StackedForecastNet  # noqa: E402
from workers.stacked_dropout import ExactDropout, fork_global_rng  # noqa: E402
from workers.stacked_grad import stacked_loss_and_grad  # noqa: E402
from workers.stacked_optim import StackedAdamW  # noqa: E402
from workers.stacked_steps import EagerStackedStep, TrainTable, stacked_batch_loss  # noqa: E402
from workers.steps import EagerStep  # noqa: E402
from workers.train import BatchReporter, Segments, TrainOutcome, TrainSettings, fit  # noqa: E402

CPU = torch.device("cpu")


def folds(config: TrainConfig) -> list[tuple[Segments, TrainSettings]]:
    """The run's folds as ``workers.fold.run_fold`` builds them (train-segment scaling)."""
    features = run_data(config.data, config.date_format, config.lookback).features
    out = []
    for spec in plan_folds_for(config, len(features)):
        train, cal, val = spec.train.as_slice(), spec.calibration.as_slice(), spec.validation.as_slice()
        scaler = Standardizer.fit(features.X[train])
        segments = Segments(
            X_train=scaler.transform(features.X[train]),
            y_train=features.y[train],
            X_cal=scaler.transform(features.X[cal]),
            y_cal=features.y[cal],
            X_val=scaler.transform(features.X[val]),
            y_val=features.y[val],
        )
        out.append((segments, train_settings(config, spec.fold_id)))
    return out


class Clock:
    """Wall and thread-CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.thread_time() - self.cpu


def timed_rounds(step: Callable[[int], object], rounds: int) -> tuple[float, float]:
    """(wall, cpu) ms per call of ``step(i)`` over ``rounds`` calls (after 10 warm-up calls)."""
    for i in range(10):
        step(i)
    with Clock() as clock:
        for i in range(rounds):
            step(i)
    return clock.wall / rounds * 1e3, clock.cpu / rounds * 1e3


def summary(runs: dict[str, list[tuple[float, float]]], digits: int = 3) -> dict[str, Any]:
    """Medians per way and clock, every run's figures, and the ratio first way / each other way."""
    out: dict[str, Any] = {}
    names = list(runs)
    for index, clock in enumerate(("wall", "cpu")):
        medians = {name: statistics.median(run[index] for run in runs[name]) for name in names}
        out[clock] = {name: round(value, digits) for name, value in medians.items()}
        for name in names[1:]:
            out[clock][f"{names[0]}/{name}"] = round(medians[names[0]] / medians[name], 2)
    out["runs"] = {
        name: [[round(w, digits), round(c, digits)] for w, c in values] for name, values in runs.items()
    }
    return out


@dataclass(frozen=True)
class StepWays:
    """One round of K steps each way, and a timed split of one stacked step."""

    separate: Callable[[int], None]
    stacked: Callable[[int], None]
    stacked_autograd: Callable[[int], None]
    parts: Callable[[int], dict[str, float]]


def step_ways(k: int, segments: Segments, settings: TrainSettings) -> StepWays:
    """One round of K steps, both ways, on the same rows (each model its own random batches)."""
    X = torch.tensor(segments.X_train, dtype=torch.float32)
    y = torch.tensor(segments.y_train, dtype=torch.float32)
    y_scale = float(np.std(segments.y_train))
    batch, n = settings.batch_size, X.shape[0]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, n, (k, batch), generator=g) for _ in range(64)]
    nets, generators = [], []
    for i in range(k):
        torch.manual_seed(i)
        nets.append(ForecastNet(X.shape[1], settings.hidden, settings.depth, settings.dropout))
        generators.append(fork_global_rng())
    separate = [
        EagerStep(
            net,
            torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay),
            X,
            y,
            y_scale,
            settings.loss_weights,
        )
        for net in nets
    ]

    def separate_round(i: int) -> None:
        for j, step in enumerate(separate):
            step(batches[i % 64][j])

    stack = StackedForecastNet.from_models(nets)
    optimizer = StackedAdamW([stack.flat], [settings.lr] * k, [settings.weight_decay] * k)
    y_up = (y > 0).float()
    table = TrainTable(
        torch.cat([X, y[:, None], y_up[:, None]], dim=1),
        torch.full((k, 1), y_scale),
        torch.tensor([list(settings.loss_weights)] * k),
    )
    masks = ExactDropout(
        generators,
        [settings.dropout] * k,
        batch_size=batch,
        hidden=settings.hidden,
        depth=settings.depth,
        device=CPU,
    )
    stacked = EagerStackedStep(stack, optimizer, table, masks)
    reference = EagerStackedStep(stack, optimizer, table, masks, autograd=True)
    weight, active, counts = torch.full((k, batch), 1.0 / batch), torch.ones(k), [batch] * k

    def stacked_round(i: int) -> None:
        stacked(batches[i % 64], weight, active, counts)

    def stacked_autograd_round(i: int) -> None:
        reference(batches[i % 64], weight, active, counts)

    gradient = torch.zeros_like(stack.flat)  # the written-out backward's buffer, as the step has it

    def parts(i: int) -> dict[str, float]:
        clock = [time.thread_time()]

        def lap() -> float:
            clock.append(time.thread_time())
            return (clock[-1] - clock[-2]) * 1e3

        drawn = masks.draw(counts)
        t_masks = lap()
        stacked_loss_and_grad(
            stack, table.rows, table.y_scale, table.loss_weights, batches[i % 64], weight, drawn, gradient
        )
        stack.flat.grad = gradient
        t_forward_backward = lap()
        optimizer.step(active)
        t_optimizer = lap()
        stats = stacked_batch_loss(stack, table, batches[i % 64], weight, drawn, False)
        t_forward = lap()
        optimizer.zero_grad()
        torch.autograd.backward(stats[:, 0].sum())
        t_backward = lap()
        return {
            "masks": t_masks,
            "forward_backward": t_forward_backward,
            "optimizer": t_optimizer,
            "autograd_forward_loss": t_forward,
            "autograd_backward": t_backward,
        }

    return StepWays(separate_round, stacked_round, stacked_autograd_round, parts)


def bench_steps(
    ks: list[int], repeats: int, rounds: int, fold: tuple[Segments, TrainSettings]
) -> dict[str, Any]:
    out: dict[str, Any] = {"unit": "ms per round of K steps; runs are [wall, cpu]"}
    for k in ks:
        ways = step_ways(k, *fold)
        names = ["separate", "stacked", "stacked_autograd"]
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for r in range(repeats):
            for name in names[r % 3 :] + names[: r % 3]:
                runs[name].append(timed_rounds(getattr(ways, name), max(rounds // k, 20)))
        out[f"K={k}"] = summary(runs)
        if k == 5:
            samples = [ways.parts(i) for i in range(rounds)]
            out["stacked_parts_K5_cpu_ms"] = {
                key: round(statistics.median(s[key] for s in samples), 3) for key in samples[0]
            }
    return out


class Sections:
    """Thread CPU time inside wrapped functions, by section (``time.thread_time`` around each call:
    on a shared machine the time other processes take the core is not counted)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def wrap(self, section: str, owner: object, name: str) -> Iterator[None]:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[section] = self.seconds.get(section, 0.0) + time.thread_time() - started

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


def _callbacks() -> dict[str, Any]:
    """What run_fold gives fit when nobody watches: a no-op publisher behind each callback."""
    return {
        "on_epoch": lambda record: None,
        "elapsed": lambda: 0.0,
        "on_batch": BatchReporter(0.25, lambda *report: None),
    }


def fit_separately(data: list[tuple[Segments, TrainSettings]]) -> None:
    for segments, settings in data:
        fit(segments, settings, device=CPU, **_callbacks())


def fit_packed(data: list[tuple[Segments, TrainSettings]], restack: bool = True) -> None:
    fit_pack([PackMember(s, t, **_callbacks()) for s, t in data], device=CPU, restack=restack)


def breakdown(way: str, data: list[tuple[Segments, TrainSettings]]) -> dict[str, float]:
    """One instrumented run: CPU seconds in steps, per-epoch evaluation and the rest."""
    sections = Sections()
    started = time.thread_time()
    if way == "separate":
        with (
            sections.wrap("steps", train_module, "run_epoch"),
            sections.wrap("evaluation", train_module, "predict"),
            sections.wrap("evaluation", train_module, "evaluate_epoch"),
            sections.wrap("evaluation", train_module, "segment_loss"),
        ):
            fit_separately(data)
    else:
        with (
            sections.wrap("steps", packed_module, "_train_epoch"),
            sections.wrap("evaluation", Stack, "evaluate"),
            sections.wrap("evaluation", packed_module, "predict"),
            sections.wrap("evaluation", packed_module, "evaluate_epoch"),
            sections.wrap("evaluation", packed_module, "evaluate_epochs"),
            sections.wrap("evaluation", packed_module, "segment_loss"),
        ):
            fit_packed(data)
    total = time.thread_time() - started
    out = {key: round(value, 3) for key, value in sections.seconds.items()}
    out["rest"] = round(total - sum(sections.seconds.values()), 3)
    out["total"] = round(total, 3)
    return out


def bench_fit(repeats: int, epochs: int) -> dict[str, Any]:
    config = TrainConfig(epochs=epochs)
    data = folds(config)
    ways: dict[str, Callable[[], None]] = {
        "separate": lambda: fit_separately(data),
        "packed": lambda: fit_packed(data),
        "packed_no_restack": lambda: fit_packed(data, restack=False),
    }
    for way in ways.values():  # warm-up: lazy imports, first-call costs
        way()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            with Clock() as clock:
                ways[name]()
            runs[name].append((clock.wall, clock.cpu))
    outcomes = fit_pack([PackMember(s, t, **_callbacks()) for s, t in data], device=CPU)
    return {
        "folds": len(data),
        "epochs": epochs,
        "train_rows": [len(s.y_train) for s, _ in data],
        "epochs_run": [o.epochs_run if isinstance(o, TrainOutcome) else None for o in outcomes],
        "unit": "seconds for all folds; runs are [wall, cpu]",
        **summary(runs),
        "breakdown_cpu_s": {way: breakdown(way, data) for way in ("separate", "packed")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=200, help="steps per timing (rounds = steps / K)")
    parser.add_argument("--ks", default="1,5,20")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread per worker: a second one never helps a small model
    config = TrainConfig()
    result: dict[str, Any] = {"machine": machine(), "torch_threads": torch.get_num_threads()}
    result["step"] = bench_steps(
        [int(k) for k in args.ks.split(",")], args.repeats, args.rounds, folds(config)[-1]
    )
    if not args.skip_fit:
        result["fit"] = bench_fit(args.repeats, args.epochs)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
