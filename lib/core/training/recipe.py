"""Training recipe of docs/specification.md section 1 (Adam 1e-3, batch 64, 10 epochs, seeded shuffling) and evaluation.

How it runs (``TRAINER``, part of every trained result's parameters): torch's fused Adam kernel (one kernel for
every parameter instead of a loop of small ones: 1.3x faster steps for mlp2 at batch 64). Conv-pool CNNs on a CPU
where ``lib.core.native.fused_cnn`` is built take each minibatch's gradient from that kernel (one forward and backward
pass per image in cache, eight images per register: 0.66 against 3.6 ms per step of the study CNN at batch 64 on
one thread); other models with a 2-D convolution train in channels-last memory (the input batch and the 4-D
weights; torch's oneDNN convolution and max-pooling run 1.8x faster there at the study CNN's 4 and 8 channels;
``make bench``, docs/benchmarks.md). The numbers are those of the textbook Adam to float rounding; the weights are
returned in the default memory format.

``device`` is a ``torch.device`` or a string that ``torch.device`` accepts ("cpu", "cuda", "cuda:0"); choosing a
device from a user setting such as "auto" is the caller's job (the stages resolve it before calling).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from lib.core.checks import ParameterError, check_data, check_int, check_positive
from lib.core.native import fused_cnn
from lib.core.tensors import chunks, eval_mode
from lib.core.training.models import plan, plan_accepts

__all__ = ["TRAINER", "TrainHistory", "check_recipe", "train", "textbook_train", "evaluate"]

#: how ``train`` runs the recipe (saved with trained results so that a change of implementation is a new result)
TRAINER = "adam-fused/fused-cnn-gradient/channels-last-conv"


@dataclass
class TrainHistory:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    epoch_loss: list[float] = field(default_factory=list)   # mean training minibatch loss per epoch
    step_loss: list[float] = field(default_factory=list)    # mean loss of each minibatch, in step order
    seconds: float = 0.0


def check_recipe(epochs: int, batch_size: int, lr: float) -> None:
    """Validate the recipe: ``epochs`` and ``batch_size`` integers >= 1, ``lr`` a finite number > 0."""
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    check_positive("lr", lr)


def _torch_device(device: torch.device | str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ParameterError("device", device, "a torch.device or a device string such as 'cpu', 'cuda' or "
                             "'cuda:0'", hint="a setting such as 'auto' must be resolved by the caller") from None


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 10, batch_size: int = 64,
          lr: float = 1e-3, seed: int = 0, device: torch.device | str = "cpu", progress: bool = True) -> TrainHistory:
    """Train ``model`` in place on (x, y) with Adam and seeded minibatch shuffling.

    Same model initialisation, data and seed give bitwise identical weights on CPU. The model is moved
    back to the device it came from and left in eval mode.
    """
    check_recipe(epochs, batch_size, lr)
    n = check_data(x, y)
    dev = _torch_device(device)
    home = next(model.parameters()).device
    model.to(dev).train()
    xd, yd = x.to(dev), y.to(dev)
    steps = _fused_steps(model, xd, yd)
    channels_last = steps is None and xd.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if channels_last:
        model.to(memory_format=torch.channels_last)
        xd = xd.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=_fused_ok(model))
    gen = torch.Generator().manual_seed(int(seed))
    hist = TrainHistory(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(n, generator=gen).to(dev)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            if steps is not None:
                batch_sum = _fused_gradient(steps, xd[idx], yd[idx])
            else:
                loss = nn.functional.cross_entropy(model(xd[idx]), yd[idx])
                loss.backward()
                batch_sum = loss.item() * len(idx)
            total += batch_sum
            hist.step_loss.append(batch_sum / len(idx))
            opt.step()
        hist.epoch_loss.append(total / n)
        bar.set_postfix(loss=f"{hist.epoch_loss[-1]:.4f}")
    hist.seconds = time.perf_counter() - t0
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.to(home).eval()
    return hist


def textbook_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                   seed: int) -> None:
    """The recipe as the plain loop (torch's single-tensor Adam, default memory format, the model's train-mode
    forward, CPU): the reference that the tests and ``make bench`` compare ``train`` with. Same minibatches as
    ``train`` for the same seed; leaves the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=False)
    gen = torch.Generator().manual_seed(int(seed))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            loss.item()                  # as train's loop does, so that both synchronise alike
    model.eval()


def _fused_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The model's ``plan`` when its minibatch gradients may come from ``lib.core.native.fused_cnn`` (float32 CPU
    conv-pool stages and one Linear, no Dropout, class targets in range, the kernel built here), else None."""
    steps = plan(model)
    if steps is None or any(isinstance(m, nn.Dropout) for m in model.modules()):
        return None                        # the plan reads Dropout as an identity: right in eval mode only
    if x.device.type != "cpu" or x.dtype != torch.float32 or not plan_accepts(steps, x[:1]):
        return None
    return steps if fused_cnn.applies(steps, list(model.parameters()), y) else None


def _fused_gradient(steps, x: torch.Tensor, y: torch.Tensor) -> float:
    """Set the ``.grad`` of every parameter to the minibatch's mean cross-entropy gradient; return its loss sum."""
    weights = [None if s.module is None else (s.module.weight, s.module.bias) for s in steps]
    grads, loss_sum = fused_cnn.gradient(steps, weights, x, y)
    n = len(x)
    for s, (gw, gb) in zip([s for s in steps if s.module is not None], grads):
        s.module.weight.grad = gw.div_(n)
        if gb is not None:
            s.module.bias.grad = gb.div_(n)
    return loss_sum


def _fused_ok(model: nn.Module) -> bool:
    """torch's fused Adam takes floating parameters on CPU or CUDA."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 10_000,
             device: torch.device | str = "cpu") -> dict:
    """Mean cross-entropy and accuracy of ``model`` on (x, y) in eval mode (every module's mode restored)."""
    n = check_data(x, y)
    batch_size = check_int("batch_size", batch_size)
    dev = _torch_device(device)
    home = next(model.parameters()).device
    loss_sum, correct = 0.0, 0
    with eval_mode(model.to(dev)):
        for xb, yb in chunks(x, y, batch_size, dev):
            out = model(xb)
            loss_sum += nn.functional.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
    model.to(home)
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": n}
