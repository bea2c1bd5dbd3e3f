"""The solvers (``lib.core.hessian.solvers``) against explicit float64 Hessians of small networks
(torch.autograd.functional.hessian): one ``HessianOperator`` per case, passed to every solver (operator-first API):
Lanczos and power eigenpairs, the smallest eigenvalue, trace, density, BLAS threads, repeats and bad inputs."""
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn

from lib.core import hessian as H
from lib.core.checks import ParameterError
from lib.core.hessian import solvers as S
from tests.cases import case, make
from tests.core.hessian.conftest import KINDS, check_pairs, operator, separated


# ----------------------------------------------------------------------------------------------- eigenpairs
@pytest.mark.parametrize("kind", KINDS)
def test_lanczos_matches_eigh(kind):
    _, _, _, hess, vals, vecs = case(kind)
    k = 5
    op = operator(kind, chunk_size=17)
    eig = H.top_eigenpairs(op, k=k, tol=1e-10)
    assert eig.method == "lanczos" and eig.hvp_count > k and eig.seconds > 0
    assert eig.hvp_count == op.hvp_count
    got = check_pairs(eig, hess, vals[:k], vecs, rtol=1e-5)
    assert eig.residuals.max() < 1e-8
    scale = abs(vals).max()
    checked = 0
    for i in range(k):
        if separated(vals, i, scale):
            assert abs(got[i] @ vecs[:, i]) > 0.999
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("kind", ["relu", "cnn"])
def test_lanczos_ritz_step_reuses_recorded_products(kind, monkeypatch):
    """The final Rayleigh-Ritz step takes H v from the solver's own products: no new products, and the same
    eigenpairs and residuals as with k fresh products (linearity of H)."""
    _, _, _, _, vals, _ = case(kind)
    k = 4
    reused = H.top_eigenpairs(operator(kind), k=k, tol=1e-10, seed=3)
    calls = []
    real_eigsh = S._eigsh

    def counting_eigsh(op, *a, **kw):
        out = real_eigsh(op, *a, **kw)
        calls.append(op.hvp_count)
        return out
    monkeypatch.setattr(S, "_eigsh", counting_eigsh)
    op = operator(kind)
    again = H.top_eigenpairs(op, k=k, tol=1e-10, seed=3)
    assert len(calls) == 1 and calls[0] > k
    assert again.hvp_count == calls[0] == op.hvp_count, "the Ritz step made new products"
    monkeypatch.setattr(S, "REUSE_TOL", -1.0)            # forbid reuse: k fresh products
    fresh = H.top_eigenpairs(operator(kind), k=k, tol=1e-10, seed=3)
    assert fresh.hvp_count == reused.hvp_count + k
    torch.testing.assert_close(reused.eigenvalues, fresh.eigenvalues, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(reused.eigenvalues, torch.from_numpy(vals[:k].copy()), rtol=1e-8, atol=1e-12)
    assert reused.residuals.max() < 1e-8 and fresh.residuals.max() < 1e-8
    # the residuals are measured: a wrong product shows up in them
    assert torch.allclose(reused.residuals, fresh.residuals, atol=1e-9)


@pytest.mark.parametrize("kind", ["relu", "tanh", "cnn"])
def test_power_matches_eigh_largest_magnitude(kind):
    _, _, _, hess, vals, vecs = case(kind)
    k = 3
    op = operator(kind)
    eig = H.top_eigenpairs(op, k=k, method="power", tol=1e-8, max_iter=3000)
    assert eig.method == "power" and eig.hvp_count == op.hvp_count > k
    by_magnitude = vals[np.argsort(-np.abs(vals), kind="stable")[:k]]
    # PyHessian's power iteration finds the largest |lambda|; we report them sorted algebraically
    expected = np.sort(by_magnitude)[::-1]
    check_pairs(eig, hess, expected, vecs, rtol=1e-3)


def test_power_equals_top_algebraic_when_curvature_is_positive_dominated():
    _, _, _, hess, vals, vecs = case("relu")
    k = 2
    assert np.abs(vals[-1]) < vals[k - 1], "test premise: top-k by magnitude are the top-k algebraic"
    eig = H.top_eigenpairs(operator("relu"), k=k, method="power", tol=1e-10, max_iter=5000)
    got = check_pairs(eig, hess, vals[:k], vecs, rtol=1e-4)
    checked = 0
    for i in range(k):
        if separated(vals, i, abs(vals).max(), rel=1e-2):
            assert abs(got[i] @ vecs[:, i]) > 0.999
            checked += 1
    assert checked >= 1


def test_lanczos_needs_fewer_products_than_power():
    op = operator("tanh")
    lan = H.top_eigenpairs(op, k=3, tol=1e-6)
    pw = H.top_eigenpairs(op, k=3, method="power", tol=1e-6, max_iter=3000)
    assert lan.residuals.max() < 1e-3
    assert lan.hvp_count < pw.hvp_count
    assert lan.hvp_count + pw.hvp_count == op.hvp_count


@pytest.mark.parametrize("kind", ["relu", "tanh", "cnn"])
def test_smallest_eigenvalue_negative_and_exact(kind):
    _, _, _, hess, vals, vecs = case(kind)
    assert vals[-1] < -1e-3 * vals[0], "test premise: untrained net with negative curvature"
    op = operator(kind)
    res = H.smallest_eigenvalue(op, tol=1e-10)
    assert res.hvp_count == op.hvp_count > 2 and res.seconds > 0
    assert res.value == pytest.approx(vals[-1], abs=1e-6 * abs(vals[0]))
    assert res.largest == pytest.approx(vals[0], abs=1e-6 * abs(vals[0]))
    v = res.eigenvector.double()
    assert float(v @ v) == pytest.approx(1.0, abs=1e-10)
    expected = float(torch.linalg.norm(hess @ v - res.value * v)) / max(abs(vals[0]), abs(res.value))
    assert res.residual == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert res.residual < 1e-8
    if separated(vals, len(vals) - 1, abs(vals[0])):
        assert abs(v.numpy() @ vecs[:, -1]) > 0.999


# ----------------------------------------------------------------------------------------------- trace, density
@pytest.mark.parametrize("kind", KINDS)
def test_trace_within_three_standard_errors(kind):
    _, _, _, hess, _, _ = case(kind)
    est = H.trace(operator(kind), n_probes=100, seed=3)
    exact = float(torch.trace(hess))
    assert est.n_probes == 100 and est.hvp_count == 100 and len(est.samples) == 100
    assert est.stderr == pytest.approx(est.samples.std(ddof=1) / 10)
    assert est.stderr > 0
    assert abs(est.estimate - exact) < 3 * est.stderr


def test_trace_samples_are_the_probes_quadratic_forms():
    """Each sample is z^T H z for the seeded probe (Rademacher by default, Gaussian on request)."""
    _, _, _, hess, _, _ = case("relu")
    n = hess.shape[0]
    for probe in ("rademacher", "gaussian"):
        est = H.trace(operator("relu"), n_probes=4, probe=probe, seed=7)
        gen = torch.Generator().manual_seed(7)
        for sample in est.samples:
            if probe == "rademacher":
                z = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
            else:
                z = torch.randn(n, generator=gen, dtype=torch.float64)
            assert sample == pytest.approx(float(z @ hess @ z), rel=1e-9, abs=1e-12)
    default = H.trace(operator("relu"), n_probes=4, seed=7)
    gaussian = H.trace(operator("relu"), n_probes=4, probe="gaussian", seed=7)
    assert np.array_equal(default.samples, H.trace(operator("relu"), n_probes=4, probe="rademacher", seed=7).samples)
    assert not np.allclose(default.samples, gaussian.samples)


@pytest.mark.parametrize("kind", KINDS)
def test_density_moments(kind):
    _, _, _, hess, _, _ = case(kind)
    n = hess.shape[0]
    runs = 30
    d = H.density(operator(kind), n_runs=runs, n_iter=8, seed=1)
    assert d.nodes.shape == d.weights.shape == (runs, 8)
    assert d.hvp_count == runs * 8
    assert d.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-3)
    h = hess.numpy()
    for power, exact in ((1, np.trace(h) / n), (2, np.trace(h @ h) / n)):
        per_run = runs * (d.weights * d.nodes ** power).sum(axis=1)   # v_r^T H^p v_r, one value per probe
        se = per_run.std(ddof=1) / np.sqrt(runs)
        assert abs(per_run.mean() - exact) < 4 * se


@pytest.mark.parametrize("kind", ["relu", "tanh"])
def test_density_full_lanczos_recovers_spectrum(kind):
    _, _, _, hess, vals, _ = case(kind)
    n = hess.shape[0]
    d = H.density(operator(kind), n_runs=1, n_iter=n, seed=0, probe="gaussian")
    assert d.weights.sum() == pytest.approx(1.0, abs=1e-12)
    nodes = d.nodes[0][d.weights[0] > 1e-12]
    distance = np.abs(nodes[:, None] - vals[None, :]).min(axis=1)
    assert distance.max() < 1e-6 * abs(vals).max()          # every node is an eigenvalue of H
    distinct = vals[np.concatenate([[True], np.abs(np.diff(vals)) > 1e-6 * abs(vals).max()])]
    assert len(nodes) >= len(distinct) - 2                   # and (almost) every distinct eigenvalue is a node


@pytest.mark.parametrize("kind, n_iter, probe", [("relu", 8, "rademacher"), ("cnn", 12, "gaussian"),
                                                  ("relu", None, "gaussian")])
def test_density_quadrature_equals_dense_eigh_of_the_tridiagonal(kind, n_iter, probe, monkeypatch):
    """Nodes/weights from eigh_tridiagonal equal those of a dense eigh of the same Lanczos tridiagonal
    (weights = squared first eigenvector components / n_runs), to 1e-12; n_iter=None runs to breakdown."""
    n = case(kind)[3].shape[0]
    n_iter = n if n_iter is None else n_iter
    tridiagonals = []
    real = H.lanczos_tridiagonal

    def keep(op, start, steps):
        alphas, betas = real(op, start, steps)
        tridiagonals.append((alphas, betas))
        return alphas, betas
    monkeypatch.setattr(S, "lanczos_tridiagonal", keep)
    runs = 3
    d = H.density(operator(kind), n_runs=runs, n_iter=n_iter, seed=2, probe=probe)
    assert len(tridiagonals) == runs
    for r, (alphas, betas) in enumerate(tridiagonals):
        m = len(alphas)
        assert len(betas) == m - 1 and m >= min(n_iter, 8)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        nodes, vecs = np.linalg.eigh(t)
        np.testing.assert_allclose(d.nodes[r, :m], nodes, rtol=0, atol=1e-12)
        np.testing.assert_allclose(d.weights[r, :m] * runs, vecs[0] ** 2, rtol=0, atol=1e-12)
        assert np.all(d.weights[r, m:] == 0) and np.all(d.nodes[r, m:] == nodes[-1])   # breakdown padding
    assert d.hvp_count == sum(len(a) for a, _ in tridiagonals)


def test_gauss_quadrature_on_fixed_tridiagonals():
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 40):
        alphas, betas = rng.standard_normal(m), np.abs(rng.standard_normal(m - 1)) + 0.1
        nodes, weights = S._gauss_quadrature(alphas, betas)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        dense_nodes, dense_vecs = np.linalg.eigh(t)
        np.testing.assert_allclose(nodes, dense_nodes, rtol=0, atol=1e-12)
        np.testing.assert_allclose(weights, dense_vecs[0] ** 2, rtol=0, atol=1e-12)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert (weights * nodes).sum() == pytest.approx(alphas[0], abs=1e-12)   # e1^T T e1


# ------------------------------------------------------------------------------------------- one operator, any operator
def test_one_operator_serves_all_four_solvers():
    """One operator, four solvers: each result counts its own products, they add up to the operator's counter,
    and every result equals the one from a fresh operator (no state carried between calls)."""
    kind = "tanh"
    _, _, _, hess, vals, vecs = case(kind)
    op = operator(kind)
    v = torch.ones(op.n_params, dtype=torch.float64)
    op.hvp(v)                                               # an earlier product is nobody's count
    top = H.top_eigenpairs(op, 3, tol=1e-10)
    low = H.smallest_eigenvalue(op, tol=1e-10)
    tr = H.trace(op, n_probes=50, seed=1)
    dens = H.density(op, n_runs=4, n_iter=8, seed=1)
    counts = [top.hvp_count, low.hvp_count, tr.hvp_count, dens.hvp_count]
    assert min(counts) > 0 and tr.hvp_count == 50 and dens.hvp_count == 32
    assert 1 + sum(counts) == op.hvp_count
    check_pairs(top, hess, vals[:3], vecs, rtol=1e-5)
    assert low.value == pytest.approx(vals[-1], abs=1e-6 * abs(vals[0]))
    assert abs(tr.estimate - float(torch.trace(hess))) < 3 * tr.stderr
    alone = (H.top_eigenpairs(operator(kind), 3, tol=1e-10), H.smallest_eigenvalue(operator(kind), tol=1e-10),
             H.trace(operator(kind), n_probes=50, seed=1), H.density(operator(kind), n_runs=4, n_iter=8, seed=1))
    assert [r.hvp_count for r in alone] == counts
    assert torch.equal(alone[0].eigenvalues, top.eigenvalues) and torch.equal(alone[0].eigenvectors, top.eigenvectors)
    assert alone[1].value == low.value and torch.equal(alone[1].eigenvector, low.eigenvector)
    assert np.array_equal(alone[2].samples, tr.samples)
    assert np.array_equal(alone[3].nodes, dens.nodes) and np.array_equal(alone[3].weights, dens.weights)


def test_solvers_take_an_operator_not_a_model():
    model, _, _, _, _, _ = case("relu")
    for call in (lambda: H.top_eigenpairs(model, 1), lambda: H.smallest_eigenvalue(model),
                 lambda: H.trace(model), lambda: H.density(model)):
        with pytest.raises(TypeError, match="pass a HessianOperator.* got Sequential"):
            call()


# ----------------------------------------------------------------------------------------------- BLAS threads
def _blas_threads() -> dict:
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


@pytest.mark.parametrize("solver", ["lanczos", "smallest"])
def test_blas_limited_to_one_thread_inside_the_solver_and_restored(solver):
    """threadpoolctl sets every BLAS (scipy's OpenBLAS that ARPACK calls among them) to one thread while eigsh
    runs, read from inside the products it asks for, and restores the previous count afterwards."""
    op = operator("relu")
    inside = []
    real = op.hvp_numpy

    def spy(v):                                             # eigsh's matvec: called from inside ARPACK
        inside.append(_blas_threads())
        return real(v)
    op.hvp_numpy = spy
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert any("scipy" in path for path in before), "test premise: scipy's OpenBLAS is loaded"
        assert set(before.values()) == {2}, "test premise: BLAS runs 2 threads outside the solver"
        if solver == "lanczos":
            result = H.top_eigenpairs(op, 2)
        else:
            result = H.smallest_eigenvalue(op)
        after = _blas_threads()
    assert len(inside) == op.hvp_count == result.hvp_count > 0   # every product went through eigsh
    for seen in inside:
        assert set(seen) == set(before) and set(seen.values()) == {1}
    assert after == before


def test_blas_threads_restored_when_eigsh_fails():
    op = operator("tanh")
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        with pytest.raises(RuntimeError, match="did not converge"):
            H.top_eigenpairs(op, 3, tol=1e-15, max_iter=1, ncv=4)
        assert _blas_threads() == before and set(before.values()) == {2}


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_power_twice_and_after_backward_is_identical():
    """PyHessian's doubling bug (grads accumulated by backward(create_graph=True)) must not reach our results."""
    model, x, y, _, vals, _ = case("relu")
    op = operator("relu")
    first = H.top_eigenpairs(op, k=2, method="power", tol=1e-8, max_iter=3000)
    second = H.top_eigenpairs(op, k=2, method="power", tol=1e-8, max_iter=3000)
    nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
    try:
        third = H.top_eigenpairs(op, k=2, method="power", tol=1e-8, max_iter=3000)
    finally:
        for p in model.parameters():
            p.grad = None
    for other in (second, third):
        assert torch.equal(first.eigenvalues, other.eigenvalues)
        assert torch.equal(first.eigenvectors, other.eigenvectors)
        assert first.hvp_count == other.hvp_count
    assert op.hvp_count == 3 * first.hvp_count
    np.testing.assert_allclose(third.eigenvalues.numpy(), vals[:2], rtol=0, atol=1e-4 * vals[0])


def test_repeated_calls_identical():
    op = operator("cnn")
    a, b = (H.top_eigenpairs(op, k=3, seed=4) for _ in range(2))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    assert a.hvp_count == b.hvp_count > 3
    t1, t2 = (H.trace(op, n_probes=5, seed=4) for _ in range(2))
    assert np.array_equal(t1.samples, t2.samples)
    d1, d2 = (H.density(op, n_runs=2, n_iter=6, seed=4) for _ in range(2))
    assert np.array_equal(d1.nodes, d2.nodes) and np.array_equal(d1.density, d2.density)
    t3 = H.trace(op, n_probes=5, seed=5)
    assert not np.array_equal(t1.samples, t3.samples)


# ----------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_helpful_errors():
    model, x, y, _, _, _ = case("relu")
    op = operator("relu")
    n = op.n_params
    with pytest.raises(ParameterError, match=r"^k=0 is not allowed: an integer in \[1, inf\]$"):
        H.top_eigenpairs(op, k=0)
    with pytest.raises(ParameterError, match=f"^k={n} is not allowed: an integer smaller than n_params={n}; lower k$"):
        H.top_eigenpairs(op, k=n)
    with pytest.raises(ValueError, match="empty data"):
        H.HessianOperator(model, x[:0], y[:0])
    with pytest.raises(ValueError, match="same length, got 48 and 47"):
        H.HessianOperator(model, x, y[:-1])
    with pytest.raises(ValueError, match="the model has no parameters"):
        H.HessianOperator(nn.ReLU(), x, y)
    with pytest.raises(ParameterError,
                       match=r"^method='arnoldi' is not allowed: one of \['lanczos', 'power', 'thick-restart'\]$"):
        H.top_eigenpairs(op, k=1, method="arnoldi")
    for tol in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ParameterError, match=r"^tol=.* is not allowed: a finite number in \(0\.0, inf\]$"):
            H.top_eigenpairs(op, k=1, tol=tol)
    with pytest.raises(ParameterError, match=r"^tol=0 is not allowed"):
        H.smallest_eigenvalue(op, tol=0)
    with pytest.raises(ParameterError, match=r"^max_iter=0 is not allowed: an integer in \[1, inf\]$"):
        H.top_eigenpairs(op, k=1, method="power", max_iter=0)
    with pytest.raises(ParameterError, match=r"^n_probes=1 is not allowed: an integer in \[2, inf\]$"):
        H.trace(op, n_probes=1)
    with pytest.raises(ParameterError, match=r"^probe='normal' is not allowed: one of \['rademacher', 'gaussian'\]$"):
        H.trace(op, probe="normal")
    with pytest.raises(ParameterError, match=r"^chunk_size=0 is not allowed: an integer in \[1, inf\]$"):
        H.HessianOperator(model, x, y, chunk_size=0)
    with pytest.raises(ParameterError, match=rf"^n_iter={n + 1} is not allowed: an integer in \[1, n_params={n}\]"):
        H.density(op, n_iter=n + 1)
    with pytest.raises(ParameterError, match=r"^n_runs=0 is not allowed"):
        H.density(op, n_runs=0)
    with pytest.raises(ParameterError, match=r"^probe='normal' is not allowed"):
        H.density(op, probe="normal")
    with pytest.raises(ParameterError, match=r"^sigma_sq=0\.0 is not allowed: a finite number in \(0\.0, inf\]$"):
        H.density(op, n_iter=2, sigma_sq=0.0)
    with pytest.raises(ParameterError, match=r"^n_grid=1 is not allowed: an integer in \[2, inf\]$"):
        H.density(op, n_iter=2, n_grid=1)
    with pytest.raises(ValueError, match="vector has 3 entries"):
        op.hvp(torch.ones(3))
    assert op.hvp_count == 2                                # only the two n_grid-check runs made products


def test_eigenvector_signs_are_canonical():
    """The entry of largest magnitude of every returned eigenvector is positive, whatever the start vector."""
    model, x, y = make("tanh")
    op = H.HessianOperator(model, x, y)
    a = H.top_eigenpairs(op, 3, tol=1e-10, seed=0).eigenvectors
    b = H.top_eigenpairs(op, 3, tol=1e-10, seed=7).eigenvectors
    rows = torch.arange(3)
    assert (a[rows, a.abs().argmax(1)] > 0).all() and (b[rows, b.abs().argmax(1)] > 0).all()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    flipped = H.canonical_signs(-a)
    torch.testing.assert_close(flipped, a, rtol=0, atol=0)
