"""Stage of notebook 07: the method through the public API on a model and a dataset the main pipeline never sees.

The model family is defined here, not in ``lib.core.training.models``, so that nothing in the pipeline knows it: a small
residual CNN with tanh activations and biases (``ResidualCNN``: 3x3 convolution 1 -> c, two residual blocks
h -> tanh(h + conv(tanh(conv(h)))) with identity skips, global average pool, linear c -> 10; 36 c^2 + 24 c + 10
parameters). The data are scikit-learn's 8x8 digits (``lib.infra.data.digits``: the first ``n_train`` of a fixed
1,500-image training split, in that order; 297 test images). For every seed the stage trains the model (Adam,
``lib.core.training.recipe``), calls ``lib.api.analyze`` on it with the training tensors in insertion order, and
saves the
report's plain values (``LandscapeReport.to_dict()``) with the training record, the 5-95 % range over random orders,
the Delta_k slope and the mean loss over the thetas (one JSON result per seed in ``results/<profile>/your_model/``).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from lib.api import analyze
from lib.core.sample_size.decay import fit_slope
from lib.core.sample_size.sufficient import BAND_METHODS
from lib.core.tensors import n_params, torch_threads
from lib.core.training.recipe import TRAINER, evaluate, train
from lib.infra import data
from lib.infra.config import Common, YourModel
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.records.runs import run_name
from lib.records.your_model import DATASET, FOLDER, MODEL
from lib.stages.base import cached, run_missing

#: the smallest k of the Delta_k slope fit (as the main pipeline's slopes)
SLOPE_K_MIN = 10


class ResidualBlock(nn.Module):
    """h -> tanh(h + conv2(tanh(conv1(h)))): two 3x3 convolutions (c -> c, padding 1, biases), identity skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act1 = nn.Tanh()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act2 = nn.Tanh()

    def forward(self, h):
        return self.act2(h + self.conv2(self.act1(self.conv1(h))))


class ResidualCNN(nn.Module):
    """(n, 1, 8, 8) -> logits (n, 10): conv 3x3 (1 -> c) + tanh, two ``ResidualBlock``s, global average pool,
    linear c -> 10."""

    def __init__(self, channels: int, n_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.act = nn.Tanh()
        self.block1 = ResidualBlock(channels)
        self.block2 = ResidualBlock(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.head(self.flatten(self.pool(self.block2(self.block1(self.act(self.stem(x)))))))


def build_model(channels: int, seed: int) -> ResidualCNN:
    """The residual CNN with PyTorch's default initialisation drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return ResidualCNN(int(channels))


def parameter_count(channels: int) -> int:
    """36 c^2 + 24 c + 10: stem 9c + c, four block convolutions 9c^2 + c each, head 10c + 10."""
    c = int(channels)
    return 36 * c * c + 24 * c + 10


def run_params(seed: int, section: YourModel) -> dict:
    """The parameters that define one run (its identity in the result store)."""
    return {"dataset": DATASET, "model": MODEL, "seed": int(seed), "data_sha256": data.DIGITS_SHA256,
            "split_seed": data.DIGITS_SPLIT_SEED, "trainer": TRAINER, "band": BAND_METHODS[0],
            **dataclasses.asdict(section)}


def your_model_one(store: ResultStore, seed: int, section: YourModel, *, device: str = "cpu",
                   progress: bool = False) -> dict:
    """Train the residual CNN of ``seed`` on the first ``n_train`` digits, run ``lib.api.analyze`` on it, save."""
    s = section
    if s.D >= parameter_count(s.channels):
        raise ValueError(f"your_model.D={s.D} must be smaller than the parameter count of the residual CNN with "
                         f"channels={s.channels} ({parameter_count(s.channels)}); lower D or raise channels")
    params = run_params(seed, s)

    def compute():
        dev = resolve_device(device)
        with torch_threads(1 if dev.type == "cpu" else torch.get_num_threads()):
            return _compute(dev)

    def _compute(dev):
        x, y = data.digits("train", s.n_train)
        xt, yt = data.digits("test")
        net = build_model(s.channels, seed)
        hist = train(net, x, y, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=seed, device=dev,
                     progress=progress)
        on_train, on_test = evaluate(net, x, y, device=dev), evaluate(net, xt, yt, device=dev)
        t0 = time.perf_counter()
        rep = analyze(net, (x, y), D=s.D, sigma=s.sigma, n_samples=s.n_samples, n_orders=s.n_orders,
                      thresholds=s.thresholds, seed=seed, device=dev, tol=s.tol, batch_size=len(x),
                      quadratic=s.quadratic, progress=progress)
        analyze_seconds = time.perf_counter() - t0
        loss_theta = rep.curve.loss_theta                 # L_N(w* + P^T theta_t) over the curve's own thetas
        fit = fit_slope(rep.k, rep.delta, k_min=SLOPE_K_MIN)
        q05 = q95 = None
        if rep.curve.order_curves is not None:
            q05, q95 = np.quantile(rep.curve.order_curves, [0.05, 0.95], axis=0)
        payload = {"report": rep.to_dict(), "order_q05": q05, "order_q95": q95,
                   "loss_theta": loss_theta, "epoch_loss": hist.epoch_loss}
        summary = {
            "dataset": DATASET, "model": MODEL, "seed": int(seed), "n_params": n_params(net), "n_train": len(x),
            "n_test": len(xt), "train_loss": on_train["loss"], "train_accuracy": on_train["accuracy"],
            "test_loss": on_test["loss"], "test_accuracy": on_test["accuracy"], "train_seconds": hist.seconds,
            "analyze_seconds": analyze_seconds, "hvp_count": rep.hvp_count, "lambda_1": float(rep.eigenvalues[0]),
            "lambda_D": float(rep.eigenvalues[-1]), "vbar": rep.vbar, "vbar_stderr": rep.vbar_stderr,
            "slope": fit.slope, "slope_se": fit.slope_stderr, "loss_star": float(rep.curve.losses0.mean()),
            "loss_theta": float(loss_theta.mean()), "notes": list(rep.notes),
            "sample_sizes": [dataclasses.asdict(z) for z in rep.sample_sizes],
        }
        return payload, summary

    name = run_name(DATASET, MODEL, seed)
    summary, skipped = cached(store, FOLDER, name, params, compute, ext="json")
    return {**summary, "name": name, "skipped": skipped}


def run(store: ResultStore, common: Common, section: YourModel) -> list[dict]:
    """Every seed of the stage: one summary row each (printed as it goes). Seeds without a result run
    ``common.workers`` at a time (each with one thread on CPU, so the results do not depend on it)."""
    rows = run_missing(store, [{"folder": FOLDER, "name": run_name(DATASET, MODEL, seed),
                                "params": run_params(seed, section),
                                "kwargs": {"store": store, "seed": seed, "section": section, "device": common.device,
                                           "progress": common.progress}} for seed in common.seeds],
                       your_model_one, common.workers, report=_report, progress=common.progress, desc="seeds")
    return rows


def _report(row: dict) -> None:
    row["wall_seconds"] = 0.0 if row["skipped"] else row["seconds"]
    state = "skipped (identical parameters)" if row["skipped"] else f"computed in {row['seconds']:.1f} s"
    print(f"{row['name']}: {state}; test accuracy {row['test_accuracy']:.4f}", flush=True)
