"""Shared cases of the Hessian tests: an operator on a cached explicit-Hessian case, the checks of eigenpairs against
eigh, an engine's product without the operator, and a per-sample loss other than cross-entropy with its batches."""
import numpy as np
import torch
import torch.nn.functional as F

from lib.core import hessian as H
from lib.core.tensors import eval_mode, flat_params
from tests.cases import case

#: samples of a case; the cases that most tests run on
N = 48
KINDS = ["relu", "tanh", "nobias", "cnn"]


def operator(kind, chunk_size=None):
    """A fresh operator (product counter at 0) on the cached case ``kind``."""
    model, x, y = case(kind)[:3]
    return H.HessianOperator(model, x, y, chunk_size=chunk_size)


def separated(vals, i, scale, rel=1e-3):
    """True when eigenvalue i is at least rel * scale away from its neighbours."""
    gaps = [abs(vals[i] - vals[j]) for j in (i - 1, i + 1) if 0 <= j < len(vals)]
    return min(gaps) > rel * scale


def check_pairs(eig, hess, exact_vals, exact_vecs, rtol):
    """Values vs exact (relative to |lambda_1|), sorted, orthonormal, residuals recomputed, eigenvectors."""
    vals = eig.eigenvalues.numpy()
    vecs = eig.eigenvectors.double()
    scale = abs(exact_vals).max()
    assert np.all(np.diff(vals) <= 0), "eigenvalues must be sorted largest algebraic first"
    np.testing.assert_allclose(vals, exact_vals, rtol=0, atol=rtol * scale)
    np.testing.assert_allclose((vecs @ vecs.T).numpy(), np.eye(len(vals)), atol=1e-10)
    res = torch.linalg.norm(vecs @ hess - torch.from_numpy(vals)[:, None] * vecs, dim=1) / np.abs(vals).max()
    np.testing.assert_allclose(eig.residuals.numpy(), res.numpy(), rtol=1e-6, atol=1e-12)
    return vecs.numpy()


def mse_onehot(outputs, targets):
    """Per-sample squared error against one-hot targets (a loss other than cross-entropy)."""
    return ((outputs - F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)) ** 2).sum(1)


def batch_list(x, y, size=7):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def engine_product(engine, model, x, y, v):
    """H v of the loss sum over (x, y) straight from an engine object (``build``, ``start``, ``apply``,
    ``finish``), as ``HessianOperator.product`` drives it for one chunk without keeping its state."""
    w0 = flat_params(model)
    tangents, out = engine.start(v, w0)
    with eval_mode(model), torch.enable_grad():
        engine.apply(engine.build(x, y, w0, count=False), tangents, out)
    return engine.finish(out, w0)
