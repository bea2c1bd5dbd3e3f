"""Many small independent trainings at once: stacked parameters, one vmapped forward, one Adam over the stack.

The prediction benchmark trains hundreds of small models (every size of a fine size grid x seeds, and the pilots'
folds). Trained one at a time, each step of a small model is dominated by per-call overhead; here M models of the
same architecture share one ``torch.func.vmap`` of ``functional_call`` over parameters stacked along a new first
axis, so each layer is one batched matrix product over the M models.

Why the result equals M separate trainings: the loss is the sum over models of each model's mean minibatch loss,
so the gradient of a model's slice is that model's own gradient; Adam acts elementwise, so one Adam over the stack is
M independent Adams (same hyperparameters). Differences are float rounding of the batched products (tested against
one-at-a-time loops: ``train_one`` here, the same minibatches).

The recipe (one fixed optimisation budget for every training set size, so small sets are not under-trained
relative to large ones): ``steps`` Adam steps with minibatches of ``batch_size`` drawn uniformly with replacement
from the model's own training indices by its own seeded generator (``minibatch_indices``).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lib.core.checks import ParameterError, check_int, check_positive

__all__ = ["minibatch_indices", "train_many", "train_one", "evaluate_many", "unstack", "TrainedStack"]


def minibatch_indices(subset: torch.Tensor, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """(steps, batch_size) indices drawn uniformly with replacement from ``subset`` (1-D indices into the pool)."""
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randint(0, len(subset), (steps, batch_size), generator=g)
    return subset[pick]


class TrainedStack:
    """M trained models of one architecture: ``params`` / ``buffers`` stacked on axis 0, the ``template`` module."""

    def __init__(self, template: nn.Module, params: dict, buffers: dict, seconds: float):
        self.template, self.params, self.buffers, self.seconds = template, params, buffers, seconds

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def model(self, i: int) -> nn.Module:
        """The i-th model as an ordinary module (a copy, eval mode)."""
        return unstack(self.template, self.params, self.buffers, i)


def unstack(template: nn.Module, params: dict, buffers: dict, i: int) -> nn.Module:
    """Model ``i`` of stacked ``params``/``buffers`` as a new module with the template's architecture."""
    net = copy.deepcopy(template)
    state = {k: v[i].detach().clone() for k, v in {**params, **buffers}.items()}
    net.load_state_dict(state)
    return net.eval()


def _stacked_forward(template: nn.Module):
    def one(p, b, x):
        return functional_call(template, (p, b), (x,))
    return vmap(one, in_dims=(0, 0, 0))


def train_many(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, subsets: Sequence[torch.Tensor],
               batch_seeds: Sequence[int], *, steps: int, batch_size: int = 64, lr: float = 1e-3,
               chunk: int = 64) -> TrainedStack:
    """Train ``models`` (same architecture, own initial weights) at once; model m sees only ``x[subsets[m]]``.

    ``chunk`` models go through one vmapped step at a time (memory: chunk x batch activations); the whole stack
    shares the pool ``x, y`` and the recipe. Returns the trained stack (the input modules are not modified)."""
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_positive("lr", lr)
    M = len(models)
    if not M or len(subsets) != M or len(batch_seeds) != M:
        raise ParameterError("subsets / batch_seeds", (len(subsets), len(batch_seeds)),
                             f"one training-index tensor and one batch seed per model ({M} models)")
    for m, s in enumerate(subsets):
        if len(s) == 0:
            raise ParameterError(f"subsets[{m}]", 0, "at least one training index")
    t0 = time.perf_counter()
    template = copy.deepcopy(models[0]).to("meta")
    params, buffers = stack_module_state([copy.deepcopy(m).train() for m in models])
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    forward = _stacked_forward(template.train())
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    idx = torch.stack([minibatch_indices(torch.as_tensor(s), steps, batch_size, seed)
                       for s, seed in zip(subsets, batch_seeds)], 1)                # (steps, M, batch)
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        for lo in range(0, M, chunk):
            hi = min(M, lo + chunk)
            rows = idx[t, lo:hi]
            logits = forward({k: v[lo:hi] for k, v in params.items()},
                             {k: v[lo:hi] for k, v in buffers.items()}, x[rows])
            loss = F.cross_entropy(logits.flatten(0, 1), y[rows].flatten(), reduction="sum") / batch_size
            loss.backward()
        opt.step()
    params = {k: v.detach() for k, v in params.items()}
    template = copy.deepcopy(models[0]).eval()
    return TrainedStack(template, params, buffers, time.perf_counter() - t0)


def train_one(model: nn.Module, x: torch.Tensor, y: torch.Tensor, subset: torch.Tensor, batch_seed: int, *,
              steps: int, batch_size: int = 64, lr: float = 1e-3) -> nn.Module:
    """The same recipe for one model as a plain loop (the reference ``train_many`` is tested against); trains a
    copy and returns it in eval mode."""
    net = copy.deepcopy(model).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    idx = minibatch_indices(torch.as_tensor(subset), steps, batch_size, batch_seed)
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[idx[t]]), y[idx[t]]).backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def evaluate_many(stack: TrainedStack, x: torch.Tensor, y: torch.Tensor, *, rows: int = 2048,
                  models_per_call: int = 16) -> dict:
    """Accuracy and mean cross-entropy of every model of ``stack`` on (x, y): {'accuracy': (M,), 'loss': (M,)}
    float64 tensors."""
    M = len(stack)
    forward = _stacked_forward(stack.template.eval())
    correct = torch.zeros(M, dtype=torch.float64)
    loss = torch.zeros(M, dtype=torch.float64)
    for lo in range(0, M, models_per_call):
        hi = min(M, lo + models_per_call)
        p = {k: v[lo:hi] for k, v in stack.params.items()}
        b = {k: v[lo:hi] for k, v in stack.buffers.items()}
        for start in range(0, len(x), rows):
            xb, yb = x[start:start + rows], y[start:start + rows]
            logits = forward(p, b, xb.expand(hi - lo, *xb.shape))                     # (m, rows, C)
            correct[lo:hi] += (logits.argmax(-1) == yb).sum(1).double()
            loss[lo:hi] += F.cross_entropy(logits.transpose(1, 2), yb.expand(hi - lo, -1),
                                           reduction="none").sum(1).double()
    return {"accuracy": correct / len(x), "loss": loss / len(x)}
