"""lib.core.hessian's trace estimators (Hutchinson, Hutch++, deflated) against exact traces of explicit float64
Hessians of small networks and of a matrix with a decaying spectrum: unbiased over seeds, reported standard errors
equal to the spread over seeds and to the closed-form variance, less error than Hutchinson at equal products,
exact when the subspace is the whole space, products counted, bad arguments refused."""
import numpy as np
import pytest
import torch
from torch import nn

from lib.core import hessian as H
from lib.core.checks import ParameterError
from tests.cases import MatrixOperator
from tests.cases import case as shared_case

SEEDS = 600          # seeds per statistical check (deterministic: seeds 0 .. SEEDS - 1)
PRODUCTS = 30        # the paper profile's trace budget
K = 8                # eigenpairs deflated on the small networks

def case(kind):
    """``tests.cases.case`` with the eigenvectors as rows (the layout deflation takes)."""
    model, x, y, hess, vals, vecs = shared_case(kind)
    return model, x, y, hess, vals, vecs.T.copy()


def decaying(n=300, seed=0):
    """(operator, matrix, eigenvalues, eigenvectors as rows) of U diag(1/i^2) U^T, U a seeded random rotation."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    lam = 1.0 / torch.arange(1, n + 1, dtype=torch.float64) ** 2
    mat = q @ torch.diag(lam) @ q.T
    return MatrixOperator(nn.Linear(n, 1, bias=False).double(), mat), mat, lam.numpy(), q.T.numpy()


def estimators(vals, vecs, k=K, products=PRODUCTS):
    """name -> f(op, seed) spending ``products`` products (the deflated one reuses k exact eigenpairs)."""
    pair = (vals[:k].copy(), vecs[:k].copy())
    return {"hutchinson": lambda op, s: H.trace(op, n_probes=products, seed=s),
            "hutch++": lambda op, s: H.hutchpp(op, n_products=products, seed=s),
            "deflated": lambda op, s: H.deflated_trace(op, pair, n_probes=products, seed=s)}


def over_seeds(op, f, n_seeds=SEEDS):
    return [f(op, s) for s in range(n_seeds)]


def rademacher_std(a: torch.Tensor, n_probes: int) -> float:
    """Closed-form std of the mean of n_probes Rademacher z^T A z (A symmetric): sqrt(2 (||A||_F^2 - sum A_ii^2)
    / n_probes)."""
    return float(torch.sqrt(2 * ((a ** 2).sum() - (torch.diagonal(a) ** 2).sum()) / n_probes))


# ----------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("kind", ["tanh", "relu", "cnn"])
@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "deflated"])
def test_unbiased_and_stderr_matches_spread_over_seeds(kind, method):
    """Over 600 seeds the mean estimate is within 4 standard errors of the exact trace (the tanh Hessian is
    indefinite), and the reported standard error (root mean square over seeds) equals the estimates' spread within
    20%."""
    model, _, _, hess, vals, vecs = case(kind)
    est = over_seeds(MatrixOperator(model, hess), estimators(vals, vecs)[method])
    values = np.array([e.estimate for e in est])
    spread = values.std(ddof=1)
    assert spread > 0
    assert abs(values.mean() - float(torch.trace(hess))) < 4 * spread / np.sqrt(len(values))
    reported = np.sqrt(np.mean([e.stderr ** 2 for e in est]))
    assert 0.8 < reported / spread < 1.25
    assert all(e.method == method and e.hvp_count == PRODUCTS for e in est)


@pytest.mark.parametrize("kind", ["tanh", "cnn"])
def test_spread_equals_closed_form_variance(kind):
    """Hutchinson's and the deflated estimator's spread over seeds is the closed-form Rademacher std of A = H and
    A = P H P (P = I - V V^T) respectively, within 10%; the reported standard errors too."""
    model, _, _, hess, vals, vecs = case(kind)
    op = MatrixOperator(model, hess)
    v = torch.from_numpy(vecs[:K])
    proj = torch.eye(hess.shape[0], dtype=torch.float64) - v.T @ v
    for method, a in (("hutchinson", hess), ("deflated", proj @ hess @ proj)):
        est = over_seeds(op, estimators(vals, vecs)[method])
        exact = rademacher_std(a, PRODUCTS)
        assert np.std([e.estimate for e in est], ddof=1) == pytest.approx(exact, rel=0.1)
        assert np.sqrt(np.mean([e.stderr ** 2 for e in est])) == pytest.approx(exact, rel=0.1)


def test_variance_reduction_on_a_decaying_spectrum():
    """On U diag(1/i^2) U^T (n = 300) at 60 products, Hutch++'s and the deflated estimator's (k = 20) error over
    seeds is under 1/20 of Hutchinson's (theory: Hutchinson's spread stays ~ ||H||_F, the others' falls with the
    discarded tail), each unbiased; the error per product ranks deflated < Hutch++ < Hutchinson."""
    op, mat, lam, vecs = decaying()
    exact = float(lam.sum())
    errors = {}
    for method, f in estimators(lam, vecs, k=20, products=60).items():
        est = over_seeds(op, f, 300)
        values = np.array([e.estimate for e in est])
        assert abs(values.mean() - exact) < 4 * values.std(ddof=1) / np.sqrt(len(values))
        errors[method] = H.error_per_product(est)
    assert errors["hutchinson"] == pytest.approx(rademacher_std(mat, 1), rel=0.1)
    assert errors["hutch++"] < errors["hutchinson"] / 20
    assert errors["deflated"] < errors["hutch++"] < errors["hutchinson"]


def test_deflation_and_hutchpp_beat_hutchinson_on_a_network_hessian():
    """On the tanh network's Hessian (indefinite, spectrum decaying from 0.82) at 30 products both estimators'
    spread over seeds is below Hutchinson's: deflated (k = 8) under 1/2, Hutch++ under 3/4."""
    model, _, _, hess, vals, vecs = case("tanh")
    op = MatrixOperator(model, hess)
    spread = {m: np.std([e.estimate for e in over_seeds(op, f, 300)], ddof=1)
              for m, f in estimators(vals, vecs).items()}
    assert spread["deflated"] < spread["hutchinson"] / 2
    assert spread["hutch++"] < 0.75 * spread["hutchinson"]


# ----------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kind", ["relu", "tanh"])
def test_exact_when_the_subspace_is_the_whole_space(kind):
    """Deflation by all n eigenpairs returns tr(H) to rounding with a zero standard error, as does Hutch++ once its
    sketch has n columns (n_products = 3n: Q is a full orthogonal matrix even where H is singular)."""
    model, x, y, hess, vals, vecs = case(kind)
    n, exact = hess.shape[0], float(torch.trace(hess))
    op = H.HessianOperator(model, x, y)
    full = H.deflated_trace(op, (vals, vecs), n_probes=3, seed=1)
    pp = H.hutchpp(op, n_products=3 * n, seed=1)
    for est in (full, pp):
        assert est.estimate == pytest.approx(exact, rel=1e-10, abs=1e-12)
        assert est.stderr < 1e-12 * np.abs(vals).max() and est.rank == n
    assert full.exact_part == pytest.approx(vals.sum(), rel=1e-12)
    assert pp.hvp_count == 3 * n and pp.n_probes == n


def test_hutchpp_reproduces_its_algorithm_step_by_step():
    """An independent loop on the explicit Hessian (same seeded Rademacher probes: 10 for S, then 10 for G):
    Q = orth(H S), tr(Q^T H Q) and the samples z^T H z, z = (I - Q Q^T) g."""
    model, x, y, hess, _, _ = case("relu")
    est = H.hutchpp(H.HessianOperator(model, x, y), n_products=30, seed=5)
    gen = torch.Generator().manual_seed(5)
    n = hess.shape[0]
    draw = lambda: torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1  # noqa: E731
    s = torch.stack([draw() for _ in range(10)], dim=1)
    q, _ = torch.linalg.qr(hess @ s)
    assert est.exact_part == pytest.approx(float(torch.trace(q.T @ hess @ q)), rel=1e-10)
    expected = []
    for _ in range(10):
        z = draw()
        z = z - q @ (q.T @ z)
        expected.append(float(z @ hess @ z))
    np.testing.assert_allclose(est.samples, expected, rtol=1e-9, atol=1e-13)
    assert est.estimate == pytest.approx(est.exact_part + np.mean(expected), rel=1e-10)
    assert est.stderr == pytest.approx(np.std(expected, ddof=1) / np.sqrt(10), rel=1e-8)


def test_deflated_reuses_top_eigenpairs_without_products():
    """``deflated_trace(op, top_eigenpairs(op, k))``: no product spent on the pairs, the exact part is the sum of
    the Ritz values = tr(V^T H V) even from a loose tolerance, so the estimate stays unbiased; float32 rows (as
    the spectrum stage stores them) are accepted."""
    model, x, y, hess, _, _ = case("tanh")
    op = H.HessianOperator(model, x, y)
    top = H.top_eigenpairs(op, k=5, tol=1e-2, seed=0)
    count = op.hvp_count
    est = H.deflated_trace(op, top, n_probes=12, seed=3)
    assert op.hvp_count - count == est.hvp_count == est.n_probes == 12 and est.rank == 5
    v = top.eigenvectors.double()
    assert est.exact_part == pytest.approx(float(top.eigenvalues.sum()), rel=1e-12)
    assert est.exact_part == pytest.approx(float(torch.trace(v @ hess @ v.T)), rel=1e-9)
    as_pair = H.deflated_trace(op, (top.eigenvalues.numpy(), top.eigenvectors.float()), n_probes=12, seed=3)
    assert as_pair.estimate == pytest.approx(est.estimate, rel=1e-5)


# ----------------------------------------------------------------------------------------------- products, arguments
@pytest.mark.parametrize("n_products, sketch", [(4, 1), (5, 1), (30, 10), (31, 10), (32, 10)])
def test_hutchpp_counts_its_products(n_products, sketch):
    """n_products = s + s + (n_products - 2 s), s = n_products // 3, all through the operator's counter."""
    model, x, y, _, _, _ = case("relu")
    op = H.HessianOperator(model, x, y)
    op.hvp(torch.ones(op.n_params, dtype=torch.float64))
    est = H.hutchpp(op, n_products=n_products, seed=0)
    assert est.hvp_count == op.hvp_count - 1 == n_products
    assert est.rank == sketch and est.n_probes == n_products - 2 * sketch == len(est.samples)


def test_hutchpp_with_a_sketch_wider_than_the_space():
    """s > n_params: Q has n_params columns, so H Q costs n_params products (not s) and the count says so."""
    model, x, y, hess, _, _ = case("relu")
    n = hess.shape[0]
    op = H.HessianOperator(model, x, y)
    est = H.hutchpp(op, n_products=3 * n + 6, seed=0)
    assert est.rank == n and est.hvp_count == op.hvp_count == (n + 2) + n + (n + 2)
    assert est.estimate == pytest.approx(float(torch.trace(hess)), rel=1e-10)


def test_error_per_product():
    """std(ddof=1) of the estimates x sqrt(products); estimates of unequal products or fewer than 2 refused."""
    model, _, _, hess, _, _ = case("relu")
    op = MatrixOperator(model, hess)
    est = [H.trace(op, n_probes=4, seed=s) for s in range(5)]
    assert H.error_per_product(est) == pytest.approx(np.std([e.estimate for e in est], ddof=1) * 2, rel=1e-12)
    with pytest.raises(ParameterError, match="estimates"):
        H.error_per_product(est[:1])
    with pytest.raises(ParameterError, match="equal products"):
        H.error_per_product(est + [H.trace(op, n_probes=5)])


def test_arguments_are_checked_before_any_product():
    model, x, y, _, vals, vecs = case("relu")
    op = H.HessianOperator(model, x, y)
    pair = (vals[:3], vecs[:3])
    bad = [(lambda: H.hutchpp(op, n_products=3), "n_products"),
           (lambda: H.hutchpp(op, n_products=30.0), "n_products"),
           (lambda: H.hutchpp(op, probe="normal"), "probe"),
           (lambda: H.deflated_trace(op, pair, n_probes=1), "n_probes"),
           (lambda: H.deflated_trace(op, pair, probe="sphere"), "probe"),
           (lambda: H.deflated_trace(op, vals[:3]), "eigenpairs"),
           (lambda: H.deflated_trace(op, (vals[:3], vecs[:2])), "eigenpairs"),
           (lambda: H.deflated_trace(op, (vals[:3], vecs[:3, :10])), "eigenpairs"),
           (lambda: H.deflated_trace(op, (vals[:3], 2 * vecs[:3])), "eigenpairs"),
           (lambda: H.deflated_trace(op, (np.array([1.0, np.nan, 0.0]), vecs[:3])), "eigenpairs")]
    for call, name in bad:
        with pytest.raises(ParameterError) as err:
            call()
        assert err.value.name == name and name in str(err.value)
    assert "orthonormal" in str(pytest.raises(ParameterError, H.deflated_trace, op, (vals[:3], 2 * vecs[:3])).value)
    with pytest.raises(TypeError, match="ProductOperator"):
        H.hutchpp(model)
    assert op.hvp_count == 0


def test_estimate_trace_dispatches_by_name_at_equal_products():
    """``estimate_trace`` (the spectrum stage's entry) gives each named estimator's own result for the same seed and
    products, and asks for the eigenpairs that deflation needs."""
    model, x, y, hess, _, _ = shared_case("relu")
    op = H.HessianOperator(model, x, y)
    top = H.top_eigenpairs(op, 4, tol=1e-10)
    same = {"hutchinson": H.trace(op, n_probes=12, seed=3), "hutchpp": H.hutchpp(op, n_products=12, seed=3),
            "deflated": H.deflated_trace(op, top, n_probes=12, seed=3)}
    for name, expected in same.items():
        got = H.estimate_trace(op, name, 12, eigenpairs=top, seed=3)
        assert got.estimate == pytest.approx(expected.estimate, rel=1e-12) and got.hvp_count == 12
        assert got.stderr == pytest.approx(expected.stderr, rel=1e-12)
    assert abs(same["deflated"].estimate - float(torch.trace(hess))) < 4 * same["deflated"].stderr + 1e-9
    with pytest.raises(ParameterError, match="eigenpairs"):
        H.estimate_trace(op, "deflated", 12)
    with pytest.raises(ParameterError, match="estimator"):
        H.estimate_trace(op, "exact", 12)
