"""lib.core.hessian against explicit float64 Hessians of small networks (torch.autograd.functional.hessian):
one ``HessianOperator`` per case, passed to every solver (operator-first API)."""
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn

from lib.core import hessian as H
from lib.core.checks import ParameterError
from lib.core.hessian import solvers as S
from lib.core.hessian.products import ProductOperator
from lib.core.training.models import preferred_chunk
from tests.cases import MatrixOperator, case, explicit_hessian, make

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



# ----------------------------------------------------------------------------------------------- products
@pytest.mark.parametrize("kind", KINDS)
def test_hvp_matches_explicit_hessian_for_every_chunk_size(kind):
    model, x, y, hess, _, _ = case(kind)
    vs = torch.randn(3, hess.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for chunk in (5, 7, N, 4096):
        op = H.HessianOperator(model, x, y, chunk_size=chunk)
        assert op.n_params == hess.shape[0] and op.dtype == torch.float64 and op.device.type == "cpu"
        assert op.chunk_size == chunk and op.n_samples == N
        for v in vs:
            torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-6, atol=1e-12)
        assert op.hvp_count == len(vs)


def test_default_chunk_size_comes_from_the_model():
    assert operator("relu").chunk_size == H.DEFAULT_CHUNK
    cnn = operator("cnn")
    assert cnn.chunk_size == preferred_chunk(cnn.model) and cnn.chunk_size != H.DEFAULT_CHUNK
    pooled = operator("pooled_cnn")
    assert pooled.engine == "structured" and pooled.chunk_size == preferred_chunk(pooled.model)


def test_gradient_and_loss_match_autograd():
    model, x, y, _, _, _ = case("tanh")
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    expected = torch.cat([g.reshape(-1) for g in grads])
    op = H.HessianOperator(model, x, y, chunk_size=5)
    torch.testing.assert_close(op.gradient(), expected)
    assert op.grad_count == 1 and op.hvp_count == 0
    assert op.loss() == pytest.approx(float(loss.detach()), rel=1e-12)


def test_float32_model():
    _, x, y, hess, vals, _ = case("tanh")
    model32 = make("tanh")[0].float()
    op = H.HessianOperator(model32, x.float(), y)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv = op.hvp(v)
    assert hv.dtype == torch.float32
    torch.testing.assert_close(hv.double(), hess @ v, rtol=1e-4, atol=1e-5 * float(hess.abs().max()))
    eig = H.top_eigenpairs(op, k=3)
    assert eig.eigenvectors.dtype == torch.float32
    assert eig.hvp_count == op.hvp_count - 1 > 0            # the product above is not counted in the result
    np.testing.assert_allclose(eig.eigenvalues.numpy(), vals[:3], rtol=0, atol=1e-4 * abs(vals).max())


def test_eval_mode_is_used_with_dropout():
    model, x, y = make("dropout")
    hess = explicit_hessian(model, x, y)
    model.train()
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(H.HessianOperator(model, x, y).hvp(v), hess @ v, rtol=1e-6, atol=1e-12)
    assert model.training


def test_operator_reads_the_current_weights():
    model, x, y = make("relu")
    op = H.HessianOperator(model, x, y)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    before = op.hvp(v)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    after = op.hvp(v)
    torch.testing.assert_close(after, explicit_hessian(model, x, y) @ v, rtol=1e-6, atol=1e-12)
    assert not torch.allclose(before, after)


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


def test_density_on_given_grid_and_sigma():
    grid = np.linspace(-1, 1, 4001)
    d = H.density(operator("relu"), n_runs=2, n_iter=10, grid=grid, sigma_sq=1e-4)
    assert d.sigma_sq == 1e-4 and np.array_equal(d.grid, grid)
    expected = sum(w * np.exp(-(grid - t) ** 2 / 2e-4) / np.sqrt(2e-4 * np.pi)
                   for t, w in zip(d.nodes.ravel(), d.weights.ravel(), strict=True))
    np.testing.assert_allclose(d.density, expected, rtol=1e-10, atol=1e-12)
    assert np.abs(d.density).max() > 1.0


# ----------------------------------------------------------------------------------------------- one operator
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


# ----------------------------------------------------------------------------------------------- state, repeats
def _state(model):
    return ([m.training for m in model.modules()],
            [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()])


def _assert_state(model, state):
    modes, grads = state
    assert [m.training for m in model.modules()] == modes
    for p, (obj, values) in zip(model.parameters(), grads, strict=True):
        assert p.grad is obj
        if obj is not None:
            assert torch.equal(p.grad, values)


CALLS = {
    "hvp": lambda op: op.hvp(torch.ones(op.n_params)),
    "gradient": lambda op: op.gradient(),
    "loss": lambda op: op.loss(),
    "lanczos": lambda op: H.top_eigenpairs(op, k=2),
    "power": lambda op: H.top_eigenpairs(op, k=2, method="power", max_iter=50),
    "smallest": lambda op: H.smallest_eigenvalue(op, tol=1e-3),
    "trace": lambda op: H.trace(op, n_probes=3),
    "density": lambda op: H.density(op, n_iter=4),
}


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("setup", ["train_nograd", "eval_grad", "mixed_graphgrad"])
def test_mode_and_grads_restored(name, setup):
    model, x, y = make("dropout")
    if setup == "train_nograd":
        model.train()
    elif setup == "eval_grad":
        model.eval()
        nn.functional.cross_entropy(model(x), y).backward()
    else:
        model.train()
        model[2].eval()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
        model[0].bias.grad = None
    state = _state(model)
    out = CALLS[name](H.HessianOperator(model, x, y))
    assert out is not None
    _assert_state(model, state)
    for p in model.parameters():    # drop graph-carrying grads (reference cycle)
        p.grad = None


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


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_raw_pyhessian_doubles_on_second_instance():
    """Documents the PyHessian 0.1 bug we avoid: its single-batch path reads param.grad after
    backward(create_graph=True), so a second instance without zero_grad doubles the Hessian. Its dataloader
    path (batch-size weighted mean) is exact."""
    from pyhessian import hessian as pyhessian_hessian
    from pyhessian.utils import hessian_vector_product

    model, x, y = make("tanh")
    hess = explicit_hessian(model, x, y)
    shapes = [p.shape for p in model.parameters()]
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pieces = torch.split(v, [int(np.prod(s)) for s in shapes])
    v_list = [t.view(s) for t, s in zip(pieces, shapes, strict=True)]

    def flat(parts):
        return torch.cat([t.reshape(-1) for t in parts])

    try:
        loader = [(x[i:i + 10], y[i:i + 10]) for i in range(0, N, 10)]
        ph = pyhessian_hessian(model, nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
        torch.testing.assert_close(flat(ph.dataloader_hv_product(v_list)[1]), hess @ v)
        model.zero_grad()
        once = pyhessian_hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        torch.testing.assert_close(flat(hessian_vector_product(once.gradsH, once.params, v_list)), hess @ v)
        twice = pyhessian_hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        torch.testing.assert_close(flat(hessian_vector_product(twice.gradsH, twice.params, v_list)), 2 * hess @ v)
    finally:
        for p in model.parameters():
            p.grad = None


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
    with pytest.raises(ParameterError, match=r"^method='arnoldi' is not allowed: one of \['lanczos', 'power'\]$"):
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


# ----------------------------------------------------------------------------------------------- kept state
def _study_cnn_case(n=6, seed=0):
    """The study CNN's class at small channel counts, on 28 x 28 images: its exact Hessian is affordable."""
    from lib.core.training.models import cnn
    from tests.cases import seeded_data, seeded_model
    net = seeded_model(lambda: cnn((2, 3)), seed)
    x, y = seeded_data(n, (1, 28, 28), 10, seed=5)
    return net, x, y


def _two_channel_cnn():
    """Conv-pool stages on two-channel 8 x 8 images (a first stage with C > 1), bias-free second stage."""
    from tests.cases import seeded_data, seeded_model
    net = seeded_model(lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                             nn.Conv2d(3, 2, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                                             nn.Flatten(), nn.Linear(2 * 2 * 2, 3)), 0)
    x, y = seeded_data(20, (2, 8, 8), 3, seed=6)
    return net, x, y


def _mlp_with_constant_columns():
    """Sequential(Flatten, Linear, ReLU, Linear, ReLU, Linear) on inputs with constant columns (the first Linear
    then skips them, their contribution is a rank-one term)."""
    from tests.cases import seeded_data, seeded_model
    net = seeded_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                             nn.Linear(8, 3)), 0)
    x, y = seeded_data(30, (1, 3, 4), 3)
    x[:, 0, 0, :3] = 0.7
    return net, x, y


@pytest.mark.parametrize("build, engine", [(lambda: make("relu"), "structured"), (lambda: make("nobias"), "structured"),
                                           (lambda: make("pooled_cnn"), "structured"),
                                           (_mlp_with_constant_columns, "structured"),
                                           (_study_cnn_case, "structured"), (_two_channel_cnn, "structured"),
                                           (lambda: make("tanh"), "graph"),
                                           (lambda: make("cnn"), "graph"), (lambda: make("dropout"), "graph")])
def test_every_engine_matches_the_explicit_hessian(build, engine):
    """'auto' picks the structured R-op for ReLU MLPs and conv-pool CNNs, the kept graph otherwise; every engine
    gives the explicit Hessian's products, whatever the chunking."""
    model, x, y = build()
    hess = explicit_hessian(model, x, y)
    vs = torch.randn(3, hess.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert H.HessianOperator(model, x, y).engine == engine
    for eng in ("auto", "graph", "rebuild"):
        for chunk in (4, len(x)):
            op = H.HessianOperator(model, x, y, chunk_size=chunk, engine=eng)
            for v in vs:
                torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-9, atol=1e-12 * float(hess.abs().max()))
            assert op.hvp_count == 3
            kept = 0 if eng == "rebuild" else -(-len(x) // chunk)
            assert op.kept_chunks == kept and (op.kept_bytes > 0) == (kept > 0)
            assert op.state_builds == (0 if eng == "rebuild" else 1)


def test_kept_state_equals_rebuilt_products_on_the_study_models():
    """Float32 study networks: the kept-state products equal the products rebuilt from scratch to float tolerance
    (structured R-op for mlp1 and the CNN, kept autograd graph, rebuild)."""
    from lib.core.training import models
    g = torch.Generator().manual_seed(0)
    for name in ("mlp1", "cnn"):
        net = models.build(name, 0)
        x = torch.randn(300, 1, 28, 28, generator=g)
        x[:, :, :3] = -0.42                                  # constant border rows, as in MNIST
        y = torch.randint(0, 10, (300,), generator=g)
        v = torch.randn(models.n_params(net), generator=g)
        products = {eng: H.HessianOperator(net, x, y, chunk_size=128, engine=eng).hvp(v)
                    for eng in ("structured", "graph", "rebuild")}
        scale = float(products["rebuild"].abs().max())
        for eng in ("structured", "graph"):
            torch.testing.assert_close(products[eng], products["rebuild"], rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("engine", ["structured", "graph"])
def test_a_weight_change_invalidates_the_kept_state(engine):
    """In-place edits, edits through .data (no version bump), load_state_dict and vector_to_parameters all rebuild
    the state at the next product; products are always those of the current weights."""
    model, x, y = make("relu")
    op = H.HessianOperator(model, x, y, chunk_size=20, engine=engine)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    original = {k: t.clone() for k, t in model.state_dict().items()}

    def check(builds):
        torch.testing.assert_close(op.hvp(v), explicit_hessian(model, x, y) @ v, rtol=1e-9, atol=1e-12)
        assert op.state_builds == builds and op.kept_chunks == 3

    try:
        check(1)
        op.hvp(v)
        assert op.state_builds == 1                               # unchanged weights: state reused
        with torch.no_grad():
            model[0].weight.mul_(1.5)
        check(2)
        model[2].bias.data.add_(0.25)                             # .data: the version counter does not move
        check(3)
        model.load_state_dict(original)
        check(4)
        flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        torch.nn.utils.vector_to_parameters(flat * 0.5, model.parameters())
        check(5)
        op.drop_state()
        assert op.kept_chunks == 0 and op.kept_bytes == 0
        check(6)
    finally:
        model.load_state_dict(original)


@pytest.mark.parametrize("engine", ["structured", "graph"])
def test_memory_bound_keeps_what_fits_and_rebuilds_the_rest(engine):
    model, x, y = make("pooled_cnn" if engine == "structured" else "tanh")
    hess = explicit_hessian(model, x, y)
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    full = H.HessianOperator(model, x, y, chunk_size=12, engine=engine)
    full.hvp(v)
    assert full.kept_chunks == 4
    per_chunk = full.kept_bytes / 4
    for budget_chunks in (0, 1, 2.5):
        mb = budget_chunks * per_chunk * 1.01 / 2 ** 20
        op = H.HessianOperator(model, x, y, chunk_size=12, engine=engine, keep_graphs_mb=mb)
        for _ in range(2):
            torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-9, atol=1e-12)
        assert op.kept_chunks == int(budget_chunks)
        assert op.kept_bytes <= mb * 2 ** 20
    assert op.hvp_count == 2


def test_engine_choice_is_checked():
    model, x, y = make("tanh")
    with pytest.raises(ParameterError, match="engine='structured' is not allowed"):
        H.HessianOperator(model, x, y, engine="structured")
    with pytest.raises(ParameterError, match="engine='fast' is not allowed"):
        H.HessianOperator(model, x, y, engine="fast")
    with pytest.raises(ParameterError, match="keep_graphs_mb=-1 is not allowed"):
        H.HessianOperator(model, x, y, keep_graphs_mb=-1)
    # class probabilities as targets: the structured R-op (class-index cross-entropy) does not apply
    relu, xr, yr = make("relu")
    soft = torch.nn.functional.one_hot(yr, 3).double() * 0.8 + 0.2 / 3
    op = H.HessianOperator(relu, xr, soft)
    assert op.engine == "graph"
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = explicit_hessian(relu, xr, soft, loss=lambda out, t: torch.nn.functional.cross_entropy(out, t)) @ v
    torch.testing.assert_close(op.hvp(v), expected, rtol=1e-9, atol=1e-12)
    # odd image sizes: the CNN's conv-pool stages do not apply, the kept graph does
    net, _, _ = _study_cnn_case()
    xo = torch.randn(3, 1, 26, 26, dtype=torch.float64)
    assert H.HessianOperator(net, xo, torch.zeros(3, dtype=torch.long)).engine == "graph"


def test_relu_units_inactive_on_a_chunk_are_dropped_exactly():
    """Units inactive on every sample of a chunk contribute zero rows and columns: the structured engine drops
    them (compacted state, smaller products) and still gives the explicit Hessian's products."""
    from tests.cases import seeded_data, seeded_model
    net = seeded_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(),
                                             nn.Linear(7, 3)), 1)
    with torch.no_grad():
        net[1].bias[:3] = -100.0                     # dead on every input
        net[3].bias[5:] = -100.0
    x, y = seeded_data(24, (6,), 3, seed=2)
    hess = explicit_hessian(net, x, y)
    op = H.HessianOperator(net, x, y, chunk_size=10)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-9, atol=1e-12)
    units = [u for u in op._states[0].units if u is not None]
    assert [(None if i is None else len(i), None if o is None else len(o)) for i, o in units] == \
        [(None, 5), (5, 5), (5, None)]                # 8 - 3 and 7 - 2 units kept; the head keeps its outputs
