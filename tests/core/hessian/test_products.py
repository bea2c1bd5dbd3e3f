"""The product protocol (``lib.core.hessian.products.ProductOperator``): recorded products serve the Ritz step and
fresh ones are made outside their span, every solver runs on any operator of the protocol, an operator without a
product says so."""
import numpy as np
import pytest
import torch

from lib.core import hessian as H
from lib.core.hessian import solvers as S
from lib.core.hessian.products import ProductOperator
from tests.cases import MatrixOperator, case


def test_products_fall_back_to_fresh_ones_outside_the_recorded_span():
    model, x, y, hess, _, _ = case("relu")
    op = H.HessianOperator(model, x, y)
    with op.recording():
        basis = torch.linalg.qr(torch.randn(op.n_params, 3, dtype=torch.float64,
                                            generator=torch.Generator().manual_seed(6)))[0]
        for col in basis.T[:2]:
            op.hvp(col)
        before = op.hvp_count
        hq = S._products(op, basis)                       # 2 columns recorded, the third is not in their span
    assert op.hvp_count == before + 1
    torch.testing.assert_close(hq, hess @ basis, rtol=1e-8, atol=1e-10)
    assert op.records() is None                          # records are dropped after the block


@pytest.mark.parametrize("kind", ["relu", "tanh"])
def test_solvers_run_on_any_product_operator(kind):
    """Every solver (Lanczos and power eigenpairs, smallest eigenvalue, trace, density) takes a ProductOperator
    that is not a HessianOperator, records and counts its products through the protocol's one ``hvp``, and
    returns what it returns on the HessianOperator of the same Hessian, to rounding."""
    model, x, y, hess, vals, _ = case(kind)
    ours, mat = H.HessianOperator(model, x, y), MatrixOperator(model, hess)
    assert not isinstance(mat, H.HessianOperator)
    for op in (ours, mat):
        top = H.top_eigenpairs(op, k=3, tol=1e-10, seed=1)
        np.testing.assert_allclose(top.eigenvalues.numpy(), vals[:3], rtol=1e-8, atol=1e-12)
        assert top.residuals.max() < 1e-8
    a, b = (H.top_eigenpairs(op, k=2, method="power", tol=1e-10, max_iter=3000) for op in (ours, mat))
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=1e-8, atol=1e-12)
    a, b = (H.smallest_eigenvalue(op, tol=1e-10) for op in (ours, mat))
    assert a.value == pytest.approx(vals[-1], rel=1e-6, abs=1e-10) and b.value == pytest.approx(a.value, abs=1e-9)
    a, b = (H.trace(op, n_probes=5, seed=2) for op in (ours, mat))
    np.testing.assert_allclose(b.samples, a.samples, rtol=1e-10)
    a, b = (H.density(op, n_runs=2, n_iter=6, seed=3, n_grid=50) for op in (ours, mat))
    np.testing.assert_allclose(b.nodes, a.nodes, rtol=1e-8, atol=1e-12)
    assert mat.hvp_count == ours.hvp_count > 0
    with mat.recording():
        v = torch.ones(mat.n_params, dtype=torch.float64)
        mat.hvp(v)
        X, HX = mat.records()
    assert torch.equal(X[0], v) and torch.equal(HX[0], hess @ v) and mat.records() is None
    mat.max_records = 0
    with mat.recording():
        mat.hvp(v)
        assert mat.records() is None                       # the cap applies to every operator alike


def test_an_operator_without_a_product_says_so():
    model = case("relu")[0]
    with pytest.raises(NotImplementedError, match="must implement product"):
        ProductOperator(model).hvp(torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64))
