"""Shared test cases: tiny seeded networks, seeded data and independent references (explicit Hessians, an explicit
matrix as a product operator, per-sample losses from a plain forward pass). One copy for every test module."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lib.core.hessian.products import ProductOperator


def relu_mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def tanh_mlp():
    return nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))


def nobias_mlp():
    return nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 4, bias=False), nn.ReLU(),
                         nn.Linear(4, 3, bias=False))


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def pooled_cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 3 * 3, 4))


def dropout_mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 3))


#: name -> (builder, input shape of one sample, number of classes)
NETS = {"relu": (relu_mlp, (6,), 3), "tanh": (tanh_mlp, (6,), 3), "nobias": (nobias_mlp, (6,), 3),
        "cnn": (small_cnn, (1, 6, 6), 3), "pooled_cnn": (pooled_cnn, (1, 6, 6), 4),
        "dropout": (dropout_mlp, (6,), 3)}


def seeded_model(builder, seed: int = 0, dtype=torch.float64) -> nn.Module:
    """``builder()`` with PyTorch's initialisation drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder().to(dtype)


def seeded_data(n: int, shape, classes: int, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def make(kind: str, n: int = 48, seed: int = 0, dtype=torch.float64):
    """(model, inputs, targets) of a named case, all drawn from fixed seeds."""
    builder, shape, classes = NETS[kind]
    x, y = seeded_data(n, shape, classes, seed=100 + seed, dtype=dtype)
    return seeded_model(builder, seed, dtype), x, y


def explicit_hessian(model: nn.Module, x, y, loss=None) -> torch.Tensor:
    """Hessian of the mean loss (default cross-entropy) w.r.t. the flat parameter vector, in eval mode, by
    ``torch.autograd.functional.hessian``."""
    loss = loss or (lambda out, t: F.cross_entropy(out, t))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]
    was_training = model.training
    model.eval()

    def objective(w):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(w, numels), shapes)}
        return loss(functional_call(model, params, (x,)), y)

    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    hess = torch.autograd.functional.hessian(objective, w0)
    model.train(was_training)
    return hess


def explicit_losses(model: nn.Module, x, y, w) -> torch.Tensor:
    """Per-sample cross-entropy at flat weights ``w`` from a deep copy and a plain forward pass (eval mode)."""
    m = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(w, m.parameters())
    m.eval()
    with torch.no_grad():
        return F.cross_entropy(m(x), y, reduction="none")


class MatrixOperator(ProductOperator):
    """The protocol on an explicit matrix: no chunks, no engine, only ``product`` (the solvers see no difference).
    ``model`` only gives n_params, dtype and device (any module with as many parameters as ``hess`` has rows)."""

    def __init__(self, model: nn.Module, hess: torch.Tensor):
        super().__init__(model)
        self.hess = hess

    def product(self, v):
        return self.hess @ v


_CASES: dict = {}


def case(kind: str):
    """Model, data, explicit Hessian, its eigenvalues (descending) and eigenvectors as columns, cached per kind."""
    if kind not in _CASES:
        model, x, y = make(kind)
        hess = explicit_hessian(model, x, y)
        vals, vecs = np.linalg.eigh(hess.numpy())
        _CASES[kind] = (model, x, y, hess, vals[::-1].copy(), vecs[:, ::-1].copy())
    return _CASES[kind]
