"""Training recipe of SCIENCE.md section 1 (Adam 1e-3, batch 64, 10 epochs, seeded shuffling) and evaluation."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from lib.infra.device import resolve_device


@dataclass
class TrainHistory:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    epoch_loss: list[float] = field(default_factory=list)   # mean training minibatch loss per epoch
    seconds: float = 0.0


def check_recipe(epochs: int, batch_size: int, lr: float) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be an integer >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be > 0")


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 10, batch_size: int = 64,
          lr: float = 1e-3, seed: int = 0, device: str = "cpu", progress: bool = True) -> TrainHistory:
    """Train ``model`` in place on (x, y) with Adam and seeded minibatch shuffling.

    Same model initialisation, data and seed give bitwise identical weights on CPU. The model is moved
    back to the device it came from and left in eval mode.
    """
    check_recipe(epochs, batch_size, lr)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty with equal length, got {len(x)} and {len(y)}")
    dev = resolve_device(device)
    home = next(model.parameters()).device
    model.to(dev).train()
    xd, yd = x.to(dev), y.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    hist = TrainHistory(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    n = len(x)
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(n, generator=gen).to(dev)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xd[idx]), yd[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        hist.epoch_loss.append(total / n)
        bar.set_postfix(loss=f"{hist.epoch_loss[-1]:.4f}")
    hist.seconds = time.perf_counter() - t0
    model.to(home).eval()
    return hist


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 10_000,
             device: str = "cpu") -> dict:
    """Mean cross-entropy and accuracy of ``model`` on (x, y) in eval mode (mode restored)."""
    dev = resolve_device(device)
    was_training = model.training
    home = next(model.parameters()).device
    model.to(dev).eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size].to(dev), y[start:start + batch_size].to(dev)
        out = model(xb)
        loss_sum += nn.functional.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    model.to(home).train(was_training)
    return {"loss": loss_sum / len(x), "accuracy": correct / len(x), "n": len(x)}
