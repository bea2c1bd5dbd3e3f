"""lib.core.hessian.pyhessian: each fix of PyHessian 0.1 is shown by a check that fails on the unpatched package (or,
where the unpatched call cannot get that far, with only that fix switched off) and passes through the wrapper;
PyHessian's eigenvalues, trace and density through the wrapper, and our density, against an explicit float64
Hessian of a small network (tests.cases "tanh": 63 parameters, 48 samples)."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pyhessian import hessian as unpatched  # the installed PyHessian 0.1 class, used as its users call it
from torch import nn

from lib.core import hessian as H
from lib.core.checks import ParameterError
from lib.core.hessian import pyhessian as P
from tests.cases import explicit_hessian, make
from tests.core.hessian.conftest import N

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # the unpatched package's backward(create_graph=True) warns of the .grad cycle it leaves behind
              pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")]

#: agreement promised with the explicit Hessian (float64), relative to |lambda_1| (or its powers for moments)
RTOL_EXACT = 1e-10       # Gauss-quadrature moments, quadratic forms z^T H z, same-probe densities
RTOL_POWER = 1e-6        # power-iteration eigenvalues at tol=1e-10
#: stochastic agreement of a 30-run, 20-step SLQ density with the explicit eigenvalue histogram (sigma^2 =
#: 2.5e-3, L1 distance of densities that integrate to 1): measured 0.028-0.050 over seeds 0-5, ours and PyHessian's
L1_HISTOGRAM = 0.08


def without(*names):
    return tuple(f for f in P.FIXES if f not in names)


@pytest.fixture(scope="module")
def explicit():
    """(explicit Hessian, ascending eigenvalues, eigenvectors as columns) of the "tanh" case."""
    model, x, y = make("tanh")
    hess = explicit_hessian(model, x, y).numpy()
    vals, vecs = np.linalg.eigh(hess)
    return hess, vals, vecs


def probes(seed, count, n):
    """The Rademacher probes lib.core.hessian draws for ``seed`` (rows), the reference for shared probes."""
    gen = torch.Generator().manual_seed(seed)
    return np.stack([(torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1).numpy()
                     for _ in range(count)])


def moment_errors(nodes, weights, hess, z, lam1, k_max):
    """max_k |sum_j w_j theta_j^k - z^T H^k z / z^T z| / lam1^k for k < k_max (Gauss rule with m nodes is
    exact up to degree 2m - 1)."""
    errs, hz = [], z.copy()
    for k in range(k_max):
        exact = (z @ hz) / (z @ z)
        errs.append(abs(np.sum(weights * nodes ** k) - exact) / lam1 ** k)
        hz = hess @ hz
    return max(errs)


# ----------------------------------------------------------------------------------------------- fix 1: torch.eig
def test_unpatched_density_calls_the_removed_torch_eig():
    model, x, y = make("tanh")
    with pytest.raises(RuntimeError, match="torch.linalg.eig"):
        unpatched(model, F.cross_entropy, data=(x, y), cuda=False).density(iter=5)
    with P.session(model, data=(x, y), fixes=without("eig")) as h, pytest.raises(RuntimeError, match="linalg.eig"):
        h.density(iter=5)
    with P.session(model, data=(x, y)) as h:
        nodes, weights = h.density(iter=5)
    assert np.shape(nodes) == np.shape(weights) == (1, 5)
    assert abs(np.sum(weights) - 1) < 1e-12 and np.all(np.diff(nodes[0]) > 0)


# ----------------------------------------------------------------------------------------------- fix 2: weights
def test_weights_are_gauss_weights_in_the_models_dtype(explicit):
    """Nodes and weights reproduce z^T H^k z / z^T z for k <= 2m - 1 (only the squared first components of the
    eigenvectors do); 0.1 builds T in float32, which costs 3e-7 here."""
    hess, vals, _ = explicit
    model, x, y = make("tanh")
    n_iter, n_runs = 10, 2
    zs = probes(0, n_runs, len(vals))
    op = H.HessianOperator(model, x, y)
    ours = H.density(op, n_runs=n_runs, n_iter=n_iter, seed=0)
    theirs = P.density(model, x, y, n_iter=n_iter, n_runs=n_runs, seed=0, shared_probes=True)
    with P.session(model, data=(x, y), shared_probes=True, fixes=without("dtype")) as h:
        f32_nodes, f32_weights = (np.array(a, dtype=np.float64) for a in h.density(iter=n_iter, n_v=n_runs))
    for r, z in enumerate(zs):
        for d in (ours, theirs):
            assert abs(d.weights[r].sum() * n_runs - 1) < 1e-13
            assert moment_errors(d.nodes[r], d.weights[r] * n_runs, hess, z, vals[-1], 2 * n_iter) < RTOL_EXACT
        assert abs(f32_weights[r].sum() - 1) > 1e-8
        assert moment_errors(f32_nodes[r], f32_weights[r], hess, z, vals[-1], 2 * n_iter) > 1e-8
    np.testing.assert_allclose(theirs.nodes, ours.nodes, rtol=0, atol=RTOL_EXACT * vals[-1])
    np.testing.assert_allclose(theirs.weights, ours.weights, rtol=0, atol=RTOL_EXACT)


# ----------------------------------------------------------------------------------------------- fix 3: trace rule
def test_trace_stop_rule_divides_by_the_absolute_trace():
    """A negative running mean makes 0.1's ratio negative: it stops after 2 probes. The loss -CE has exactly
    the negated Hessian, so the fixed rule stops after as many probes as for CE, with negated samples."""
    model, x, y = make("tanh")
    neg = lambda out, t: -F.cross_entropy(out, t)
    for seed in (0, 1):
        torch.manual_seed(seed)
        raw_neg = unpatched(model, neg, data=(x, y), cuda=False).trace()
        model.zero_grad()
        torch.manual_seed(seed)
        raw_pos = unpatched(model, F.cross_entropy, data=(x, y), cuda=False).trace()
        model.zero_grad()
        fixed_neg = P.trace(model, x, y, criterion=neg, seed=seed)
        fixed_pos = P.trace(model, x, y, seed=seed)
        assert len(raw_neg) == 2 and len(raw_pos) > 10 and raw_neg[0] < 0
        np.testing.assert_allclose(fixed_pos.samples, raw_pos, rtol=1e-12)      # same probes, same rule for tr > 0
        assert fixed_neg.n_probes == fixed_pos.n_probes == len(raw_pos)
        np.testing.assert_allclose(fixed_neg.samples, -fixed_pos.samples, rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------------------------- fix 4: device
def test_cuda_default_fails_on_a_cpu_model_and_the_wrapper_uses_the_models_device():
    model, x, y = make("tanh")
    with pytest.raises((RuntimeError, AssertionError)):       # no driver, or data on cuda and model on cpu
        unpatched(model, F.cross_entropy, data=(x, y))
    with P.session(model, data=(x.float(), y)) as h:          # floating inputs cast to the model's dtype
        assert h.device == "cpu" and h.inputs.dtype == torch.float64
        (value,), _ = h.eigenvalues(top_n=1, maxIter=5)
    assert np.isfinite(value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_cuda_model_runs_on_its_device(explicit):
    _, vals, _ = explicit
    model, x, y = make("tanh")
    model = model.cuda()
    with P.session(model, data=(x, y)) as h:
        assert h.device == str(next(model.parameters()).device) and h.inputs.is_cuda
    top = P.eigenvalues(model, x, y, top_n=1, max_iter=2000, tol=1e-10)
    dens = P.density(model, x, y, n_iter=10, n_runs=1, shared_probes=True)
    assert abs(top.eigenvalues[0] - vals[-1]) < RTOL_POWER * vals[-1]
    assert abs(dens.weights.sum() - 1) < 1e-12


# ----------------------------------------------------------------------------------------------- fix 5: .grad
def test_second_object_without_zero_grad_doubles_the_hessian_and_the_wrapper_does_not(explicit):
    _, vals, _ = explicit
    model, x, y = make("tanh")
    unpatched(model, F.cross_entropy, data=(x, y), cuda=False)
    second = unpatched(model, F.cross_entropy, data=(x, y), cuda=False)
    torch.manual_seed(0)
    (doubled,), _ = second.eigenvalues(top_n=1, maxIter=2000, tol=1e-10)
    assert abs(doubled - 2 * vals[-1]) < 1e-5 * vals[-1]
    assert all(p.grad is None for p in model.parameters())    # its zero_grad dropped the gradients

    model, x, y = make("tanh")
    kept = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), kept):
        p.grad = g
    with P.session(model, data=(x, y)) as outer, P.session(model, data=(x, y)) as inner:
        (a,), _ = inner.eigenvalues(top_n=1, maxIter=2000, tol=1e-10)
        (b,), _ = outer.eigenvalues(top_n=1, maxIter=2000, tol=1e-10)
    first = P.eigenvalues(model, x, y, top_n=2, max_iter=500, tol=1e-8, seed=4)
    again = P.eigenvalues(model, x, y, top_n=2, max_iter=500, tol=1e-8, seed=4)
    assert abs(a - vals[-1]) < RTOL_POWER * vals[-1] and abs(b - vals[-1]) < RTOL_POWER * vals[-1]
    np.testing.assert_array_equal(first.eigenvalues, again.eigenvalues)
    for p, g in zip(model.parameters(), kept):
        assert p.grad is g and torch.equal(g, torch.full_like(p, 3.0))


# ----------------------------------------------------------------------------------------------- fix 6: mode
def test_train_mode_is_restored():
    model, x, y = make("dropout")
    model.train()
    model[2].eval()                                           # mixed flags survive too
    unpatched(model, F.cross_entropy, data=(x, y), cuda=False)
    assert not any(m.training for m in model.modules())
    model.train()
    model[2].eval()
    with P.session(model, data=(x, y)) as h:
        assert not model.training                             # PyHessian computes in eval mode, as ours does
        h.trace(maxIter=3)
    assert [m.training for m in model.modules()] == [True, True, True, False, True]


# ----------------------------------------------------------------------------------------------- fix 7: norm + 1e-6
@pytest.mark.parametrize("scale, unfixed_error", [(1.0, 1e-6), (1e-4, 1e-2)])
def test_lanczos_vectors_are_unit_length(explicit, scale, unfixed_error):
    """norm + 1e-6 in PyHessian's normalization makes T inconsistent: its moments are off by 5e-6 (loss as is)
    and 3e-2 (loss scaled by 1e-4); divided by the exact norm they are exact."""
    hess, vals, _ = explicit
    model, x, y = make("tanh")
    crit = lambda out, t: scale * F.cross_entropy(out, t)
    z = probes(0, 1, len(vals))[0]
    errors = {}
    for fixes in (P.FIXES, without("normalization")):
        with P.session(model, crit, data=(x, y), shared_probes=True, fixes=fixes) as h:
            nodes, weights = (np.array(a, dtype=np.float64)[0] for a in h.density(iter=10))
        errors[fixes] = moment_errors(nodes, weights, scale * hess, z, scale * vals[-1], 20)
    assert errors[P.FIXES] < RTOL_EXACT
    assert errors[without("normalization")] > unfixed_error


# ----------------------------------------------------------------------------------------------- the wrapper
def test_products_are_counted_and_the_dataloader_path_agrees():
    model, x, y = make("tanh")
    single = P.density(model, x, y, n_iter=8, n_runs=2, shared_probes=True)
    loader = P.density(model, x, y, n_iter=8, n_runs=2, shared_probes=True, batch_size=7)
    assert single.hvp_count == loader.hvp_count == 16 and single.seconds > 0
    np.testing.assert_allclose(loader.nodes, single.nodes, rtol=0, atol=1e-12)
    np.testing.assert_allclose(loader.weights, single.weights, rtol=0, atol=1e-12)
    tr = P.trace(model, x, y, max_iter=7, tol=1e-12, batch_size=20)
    assert tr.n_probes == tr.hvp_count == 7 == len(tr.samples)
    with P.session(model, data=(x, y)) as h:
        h.eigenvalues(top_n=1, maxIter=6, tol=1e-30)
        assert h.hvp_count == 6


def test_the_installed_package_is_left_as_it_was():
    module, utils = sys.modules["pyhessian.hessian"], sys.modules["pyhessian.utils"]
    before = (module.torch, module.normalization, module.hessian_vector_product, utils.normalization)
    model, x, y = make("tanh")
    with pytest.raises(ZeroDivisionError), P.session(model, data=(x, y)):
        assert module.torch is not torch and module.normalization is not before[1]
        raise ZeroDivisionError
    assert (module.torch, module.normalization, module.hessian_vector_product, utils.normalization) == before
    with pytest.raises(ParameterError):
        with P.session(model, data=(x, y), fixes=("eig", "nope")):
            pass
    with pytest.raises(ValueError, match="exactly one"):
        with P.session(model):
            pass


# ----------------------------------------------------------------------------------------------- vs explicit
def test_eigenvalues_and_trace_match_the_explicit_hessian(explicit):
    hess, vals, vecs = explicit
    model, x, y = make("tanh")
    top = P.eigenvalues(model, x, y, top_n=2, max_iter=2000, tol=1e-10)
    np.testing.assert_allclose(top.eigenvalues, vals[::-1][:2], rtol=0, atol=RTOL_POWER * vals[-1])
    overlap = np.abs(top.eigenvectors.numpy() @ vecs[:, ::-1][:, :2])
    np.testing.assert_allclose(np.diag(overlap), 1, atol=1e-4)
    tr = P.trace(model, x, y, max_iter=200, tol=1e-12, shared_probes=True)
    zs = probes(0, 200, len(vals))
    np.testing.assert_allclose(tr.samples, np.einsum("pi,ij,pj->p", zs, hess, zs), rtol=0,
                               atol=RTOL_EXACT * vals[-1])
    assert tr.n_probes == 200 and abs(tr.estimate - np.trace(hess)) < 3 * tr.stderr


def test_density_matches_the_explicit_eigenvalue_histogram(explicit):
    """Same probe, n_iter = n_params: both SLQ densities are the explicit eigenvalues smoothed with the probe's
    weights (u_i . z)^2 / n. Independent probes, 30 runs of 20 steps: both are within L1_HISTOGRAM of the
    explicit eigenvalues' smoothed histogram (weights 1/n), on the same grid and sigma."""
    hess, vals, vecs = explicit
    model, x, y = make("tanh")
    n = len(vals)
    op = H.HessianOperator(model, x, y)
    z = probes(0, 1, n)[0]
    ours = H.density(op, n_runs=1, n_iter=n, seed=0)
    theirs = P.density(model, x, y, n_iter=n, n_runs=1, grid=ours.grid, sigma_sq=ours.sigma_sq, shared_probes=True)
    probe_weighted = H.smooth_density(vals, (vecs.T @ z) ** 2 / n, ours.grid, ours.sigma_sq)
    peak = probe_weighted.max()
    assert np.abs(ours.density - probe_weighted).max() < 1e-6 * peak
    assert np.abs(theirs.density - probe_weighted).max() < 1e-6 * peak

    grid = np.linspace(vals[0] - 0.3, vals[-1] + 0.3, 2000)
    sigma_sq = 2.5e-3
    histogram = H.smooth_density(vals, np.full(n, 1 / n), grid, sigma_sq)
    ours = H.density(op, n_runs=30, n_iter=20, seed=0, grid=grid, sigma_sq=sigma_sq)
    theirs = P.density(model, x, y, n_iter=20, n_runs=30, seed=1, grid=grid, sigma_sq=sigma_sq)
    l1 = {name: P.l1_distance(grid, d.density, histogram) for name, d in (("ours", ours), ("pyhessian", theirs))}
    assert max(l1.values()) < L1_HISTOGRAM, l1
    assert abs(P.l1_distance(grid, histogram, 0 * grid) - 1) < 1e-6


def test_compare_density_and_trace_in_one_call():
    model, x, y = make("tanh")
    ours = H.density(H.HessianOperator(model, x, y), n_runs=2, n_iter=12, seed=5, n_grid=500)
    out = P.compare_density(model, x, y, n_iter=12, n_runs=2, seed=5, ours=ours)
    assert out["ours"]["products"] == out["pyhessian"]["products"] == 24
    assert out["grid"].shape == out["ours"]["density"].shape == out["pyhessian"]["density"].shape == (500,)
    assert out["pyhessian"]["nodes"].shape == (2, 12) and out["ours"]["seconds"] > 0 < out["pyhessian"]["seconds"]
    assert out["l1_difference"] < 1e-10 and out["max_difference"] < 1e-10
    assert out["ours"]["seconds"] == ours.seconds and np.array_equal(out["grid"], ours.grid)
    with pytest.raises(ParameterError):
        P.compare_density(model, x, y, n_iter=10, n_runs=2, seed=5, ours=ours)
    with pytest.raises(TypeError, match="ours"):
        P.compare_density(model, x, y, n_iter=12, n_runs=2, seed=5)      # ours is computed by lib.core.hessian
    tr = P.compare_trace(model, x, y, n_probes=20, tol=1e-3, seed=2,
                         ours=H.trace(H.HessianOperator(model, x, y), n_probes=20, seed=2))
    k = tr["pyhessian"]["n_probes"]
    assert tr["ours"]["n_probes"] == tr["ours"]["products"] == 20 and tr["pyhessian"]["products"] == k
    np.testing.assert_allclose(tr["pyhessian"]["samples"], tr["ours"]["samples"][:k], rtol=1e-12)
    with pytest.raises(ParameterError):
        P.compare_trace(model, x, y, n_probes=10, seed=2, ours=H.trace(H.HessianOperator(model, x, y), n_probes=5))
    # fed probes do not come from torch's RNG (on CPU its stream happens to equal ours for the same seed)
    with P.session(model, data=(x, y), seed=2, shared_probes=True) as h:
        torch.manual_seed(123)
        fed = h.trace(maxIter=5, tol=1e-30)
    np.testing.assert_allclose(fed, tr["ours"]["samples"][:5], rtol=1e-12)


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
