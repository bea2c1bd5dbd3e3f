"""Thick-restart Lanczos (``lib.core.hessian.lanczos``, ``top_eigenpairs(method="thick-restart")``) against explicit
Hessians of small float64 and float32 networks and explicit matrices: eigenpairs, measured residuals, restarts,
breakdowns on invariant subspaces, products counted, bad inputs, and its peak memory on a 2M-parameter operator."""
import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lib.core import hessian as H
from lib.core.checks import ParameterError
from lib.core.hessian import lanczos as L
from lib.core.hessian.products import ProductOperator
from lib.core.hessian.solvers import canonical_signs, canonical_signs_
from tests.cases import MatrixOperator, case, explicit_hessian, make
from tests.core.hessian.conftest import KINDS, check_pairs, operator, separated

METHOD = "thick-restart"


class Watched(MatrixOperator):
    """An explicit matrix whose products are listed (inputs cloned) and that fails if a product is recorded."""

    def __init__(self, model, hess):
        super().__init__(model, hess)
        self.inputs = []

    def product(self, v):
        assert self._records is None, "thick-restart must not record products"
        self.inputs.append(v.clone())
        return super().product(v)


def params(n: int, dtype=torch.float64) -> nn.Module:
    """A module with n parameters (gives a ProductOperator its n_params, dtype and device)."""
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(n, dtype=dtype))
    return module


def spectrum_matrix(values, seed=0) -> torch.Tensor:
    """Q diag(values) Q^T for a seeded random orthogonal Q (float64)."""
    n = len(values)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.as_tensor(values, dtype=torch.float64)) @ q.T


def independent_residuals(eig, hess):
    vecs = eig.eigenvectors.double()
    vals = (vecs @ hess * vecs).sum(1)
    return torch.linalg.norm(vecs @ hess - vals[:, None] * vecs, dim=1) / vals.abs().max()


# ----------------------------------------------------------------------------------------------- float64
@pytest.mark.parametrize("kind", KINDS)
def test_matches_eigh_float64(kind):
    _, _, _, hess, vals, vecs = case(kind)
    k = 5
    op = operator(kind, chunk_size=17)
    eig = H.top_eigenpairs(op, k=k, tol=1e-12, method=METHOD)
    assert eig.method == METHOD and eig.hvp_count == op.hvp_count > k and eig.seconds > 0
    assert eig.eigenvalues.dtype == torch.float64 and eig.eigenvectors.dtype == torch.float64
    assert eig.eigenvectors.shape == (k, op.n_params)
    scale = abs(vals).max()
    # eigenvalues to 1e-10 relative, residuals as recomputed from the explicit Hessian
    got = check_pairs(eig, hess, vals[:k], vecs, rtol=1e-10)
    assert eig.residuals.max() <= 1e-10
    torch.testing.assert_close(eig.residuals, independent_residuals(eig, hess), rtol=1e-6, atol=1e-13)
    checked = 0
    for i in range(k):
        if separated(vals, i, scale):
            assert abs(got[i] @ vecs[:, i]) > 1 - 1e-10
            checked += 1
    assert checked >= 2
    # the same eigenvalues as ARPACK's path
    arpack = H.top_eigenpairs(operator(kind), k=k, tol=1e-12)
    torch.testing.assert_close(eig.eigenvalues, arpack.eigenvalues, rtol=0, atol=1e-10 * scale)


def test_signs_canonical_and_in_place_version_equals_canonical_signs():
    eig = H.top_eigenpairs(operator("relu"), k=4, tol=1e-10, method=METHOD)
    assert torch.equal(eig.eigenvectors, canonical_signs(eig.eigenvectors))
    x = torch.randn(6, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[1, 7], x[1, 3] = 9.0, -9.0          # a tie in magnitude: the first one (negative) decides
    x[2, 5], x[2, 900] = 9.0, -9.0        # the first one (positive) decides
    x[3] = 0.0
    expected = canonical_signs(x)
    assert canonical_signs_(x) is x
    assert torch.equal(x, expected)


def test_float32_model():
    model, x, y = make("relu", dtype=torch.float32)
    hess = explicit_hessian(model.double(), x.double(), y)
    model.float()
    vals, vecs = np.linalg.eigh(hess.numpy())
    vals, vecs = vals[::-1], vecs[:, ::-1]
    k = 3
    op = H.HessianOperator(model, x, y)
    assert op.dtype == torch.float32
    eig = H.top_eigenpairs(op, k=k, tol=1e-5, method=METHOD)
    assert eig.eigenvectors.dtype == torch.float32 and eig.eigenvalues.dtype == torch.float64
    scale = abs(vals).max()
    np.testing.assert_allclose(eig.eigenvalues.numpy(), vals[:k], rtol=0, atol=1e-5 * scale)
    assert eig.residuals.max() <= 1e-4
    got = eig.eigenvectors.double()
    np.testing.assert_allclose((got @ got.T).numpy(), np.eye(k), atol=1e-5)
    for i in range(k):
        if separated(vals, i, scale):
            assert abs(float(got[i] @ torch.from_numpy(vecs[:, i].copy()))) > 1 - 1e-5


# ----------------------------------------------------------------------------------------------- restarts
def test_restarts_with_a_small_basis():
    """n = 240, k = 3, ncv = 6: several thick restarts, converged to eigh's top 3 (the lowest of them close to
    the 4th)."""
    n, k = 240, 3
    values = np.concatenate([[10.0, 9.0, 8.5, 8.2], np.linspace(8.0, 0.0, n - 4)])
    hess = spectrum_matrix(values)
    op = Watched(params(n), hess)
    res = L.thick_restart_lanczos(op, k, tol=1e-12, ncv=6, seed=1)
    assert res.ncv == 6 and res.restarts >= 5 and res.breakdowns == 0
    np.testing.assert_allclose(res.values.numpy(), values[:k], rtol=1e-10)
    vecs = res.vectors
    np.testing.assert_allclose((vecs @ vecs.T).numpy(), np.eye(k), atol=1e-12)
    resid = torch.linalg.norm(vecs @ hess - res.values[:, None] * vecs, dim=1) / 10.0
    torch.testing.assert_close(res.residuals, resid, rtol=1e-6, atol=1e-14)
    assert res.residuals.max() <= 1e-10
    # products: every one counted, the last k on the returned vectors (one each), none recorded
    assert res.hvp_count == op.hvp_count == len(op.inputs)
    for v, x in zip(vecs, op.inputs[-k:]):
        assert torch.equal(v, x)
    # the basis size and fill count set the products: m products first, then m - p per restart
    p = k + (6 - k) // 2
    assert res.hvp_count <= 6 + res.restarts * (6 - p) + k


def test_max_iter_exhausted_raises():
    n = 240
    op = MatrixOperator(params(n), spectrum_matrix(np.concatenate([[10.0, 9.99], np.linspace(9.9, 0, n - 2)])))
    with pytest.raises(RuntimeError, match=r"did not converge to tol=1e-14 in max_iter=2 .*raise max_iter"):
        H.top_eigenpairs(op, k=2, tol=1e-14, max_iter=2, ncv=4, method=METHOD)
    assert op.hvp_count == 4 + 1       # the first fill (4 products) and one restart (4 - 3 = 1 more)


# ----------------------------------------------------------------------------------------------- breakdown
@pytest.mark.parametrize("head, rest", [([5.0, 4.0, 3.0], 0.0), ([5.0, 5.0, 5.0], 1.0)])
def test_breakdown_on_invariant_subspace(head, rest):
    """A diagonal operator with few distinct eigenvalues: every Krylov space from one vector is invariant after
    a few steps (||w|| ~ 1e-16); the solver goes on from random vectors orthogonal to the basis and finds the top
    3, repeated ones included."""
    n, k = 200, 3
    diag = torch.tensor(head + [rest] * (n - len(head)), dtype=torch.float64)
    op = Watched(params(n), torch.diag(diag))
    res = L.thick_restart_lanczos(op, k, tol=1e-12, seed=2)
    assert res.breakdowns >= 1
    np.testing.assert_allclose(res.values.numpy(), head, rtol=1e-12)
    vecs = res.vectors
    np.testing.assert_allclose((vecs @ vecs.T).numpy(), np.eye(k), atol=1e-12)
    assert float(vecs[:, 3:].abs().max()) < 1e-8            # in the span of the top eigenvectors
    assert res.residuals.max() <= 1e-12
    assert res.hvp_count == op.hvp_count


# ----------------------------------------------------------------------------------------------- api
def test_seeded_and_repeatable():
    op = operator("cnn")
    a, b = (H.top_eigenpairs(op, k=3, tol=1e-10, seed=4, method=METHOD) for _ in range(2))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    assert torch.equal(a.residuals, b.residuals) and a.hvp_count == b.hvp_count
    c = H.top_eigenpairs(op, k=3, tol=1e-10, seed=5, method=METHOD)
    torch.testing.assert_close(a.eigenvalues, c.eigenvalues, rtol=1e-9, atol=0)
    assert op.hvp_count == 2 * a.hvp_count + c.hvp_count


def test_bad_inputs():
    op = operator("relu")
    n = op.n_params
    with pytest.raises(ParameterError, match=f"^k={n} is not allowed: an integer smaller than n_params={n}; lower k$"):
        H.top_eigenpairs(op, k=n, method=METHOD)
    with pytest.raises(ParameterError, match=r"^k=0 is not allowed"):
        H.top_eigenpairs(op, k=0, method=METHOD)
    with pytest.raises(ParameterError, match=rf"^ncv=3 is not allowed: an integer in \[4, {n}\]$"):
        H.top_eigenpairs(op, k=3, ncv=3, method=METHOD)
    with pytest.raises(ParameterError, match=r"^max_iter=0 is not allowed"):
        H.top_eigenpairs(op, k=3, max_iter=0, method=METHOD)
    with pytest.raises(ParameterError, match=r"^tol=0 is not allowed"):
        L.thick_restart_lanczos(op, 3, tol=0)
    assert op.hvp_count == 0


def test_whole_space_basis():
    """ncv = n: the basis fills the space; k = n - 1 works."""
    _, _, _, hess, vals, vecs = case("relu")
    op = operator("relu")
    n = op.n_params
    eig = H.top_eigenpairs(op, k=n - 1, tol=1e-10, method=METHOD)
    np.testing.assert_allclose(eig.eigenvalues.numpy(), vals[:n - 1], rtol=0, atol=1e-10 * abs(vals).max())


# ----------------------------------------------------------------------------------------------- memory
def _kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


class Diagonal(ProductOperator):
    def __init__(self, diag):
        super().__init__(params(1, diag.dtype))
        self.n_params = diag.numel()
        self.diag = diag

    def product(self, v):
        return self.diag * v


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_peak_memory_is_the_basis_and_a_few_vectors(dtype):
    """n = 2e6: the peak resident memory grows by at most (m + 1 + 4) vectors of the dtype (the basis, the
    product, and a margin) plus 16 MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("/proc/self/clear_refs is not writable: no resettable peak RSS")
    if _kib("VmHWM") is None:
        pytest.skip("no VmHWM in /proc/self/status")
    n, k = 2_000_000, 3
    gen = torch.Generator().manual_seed(0)
    diag = torch.cat([torch.tensor([10.0, 9.0, 8.0]), 6.0 * torch.rand(n - 3, generator=gen, dtype=torch.float64)])
    op = Diagonal(diag.to(dtype))
    del diag
    m = L.default_ncv(k, n)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS") * 1024
    eig = H.top_eigenpairs(op, k=k, tol=1e-6, method=METHOD)
    growth = _kib("VmHWM") * 1024 - before
    itemsize = torch.finfo(dtype).bits // 8
    assert growth <= (m + 1 + 4) * n * itemsize + 16 * 2 ** 20, f"peak grew {growth / (n * itemsize):.1f} vectors"
    np.testing.assert_allclose(eig.eigenvalues.numpy(), [10.0, 9.0, 8.0], rtol=1e-5)
    assert eig.eigenvectors.shape == (k, n) and eig.eigenvectors.dtype == dtype
    # the returned vectors hold k rows, not the basis
    assert eig.eigenvectors.untyped_storage().nbytes() == k * n * itemsize
