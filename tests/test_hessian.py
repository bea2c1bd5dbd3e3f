"""lib.core.hessian against explicit float64 Hessians of small networks (torch.autograd.functional.hessian)."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from lib.core import hessian as H

N = 48


def _relu_mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _tanh_mlp():
    return nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))


def _nobias_mlp():
    return nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 4, bias=False), nn.ReLU(),
                         nn.Linear(4, 3, bias=False))


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def _dropout_mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 3))


NETS = {"relu": (_relu_mlp, (6,)), "tanh": (_tanh_mlp, (6,)), "nobias": (_nobias_mlp, (6,)),
        "cnn": (_cnn, (1, 6, 6)), "dropout": (_dropout_mlp, (6,))}
KINDS = ["relu", "tanh", "nobias", "cnn"]


def make(kind, seed=0):
    """(model float64, inputs, targets) drawn from fixed seeds."""
    builder, shape = NETS[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder().double()
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(N, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=gen)
    return model, x, y


def explicit_hessian(model, x, y):
    """Hessian of the mean cross-entropy w.r.t. the flat parameter vector, in eval mode."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]
    was_training = model.training
    model.eval()

    def loss(w):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(w, numels), shapes)}
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    hess = torch.autograd.functional.hessian(loss, w0)
    model.train(was_training)
    return hess


_CACHE = {}


def case(kind):
    """Model, data, explicit Hessian and its eigen-decomposition (descending), cached per kind."""
    if kind not in _CACHE:
        model, x, y = make(kind)
        hess = explicit_hessian(model, x, y)
        vals, vecs = np.linalg.eigh(hess.numpy())
        _CACHE[kind] = (model, x, y, hess, vals[::-1].copy(), vecs[:, ::-1].copy())
    return _CACHE[kind]


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
        for v in vs:
            torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-6, atol=1e-12)
        assert op.hvp_count == len(vs)


def test_gradient_matches_autograd():
    model, x, y, _, _, _ = case("tanh")
    params = list(model.parameters())
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)
    expected = torch.cat([g.reshape(-1) for g in grads])
    torch.testing.assert_close(H.HessianOperator(model, x, y, chunk_size=5).gradient(), expected)


def test_float32_model():
    model, x, y, hess, vals, _ = case("tanh")
    model32 = make("tanh")[0].float()
    op = H.HessianOperator(model32, x.float(), y)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv = op.hvp(v)
    assert hv.dtype == torch.float32
    torch.testing.assert_close(hv.double(), hess @ v, rtol=1e-4, atol=1e-5 * float(hess.abs().max()))
    eig = H.top_eigenpairs(model32, x.float(), y, k=3)
    assert eig.eigenvectors.dtype == torch.float32
    np.testing.assert_allclose(eig.eigenvalues.numpy(), vals[:3], rtol=0, atol=1e-4 * abs(vals).max())


def test_eval_mode_is_used_with_dropout():
    model, x, y = make("dropout")
    hess = explicit_hessian(model, x, y)
    model.train()
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(H.HessianOperator(model, x, y).hvp(v), hess @ v, rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------------------------- eigenpairs
@pytest.mark.parametrize("kind", KINDS)
def test_lanczos_matches_eigh(kind):
    model, x, y, hess, vals, vecs = case(kind)
    k = 5
    eig = H.top_eigenpairs(model, x, y, k=k, tol=1e-10, chunk_size=17)
    assert eig.method == "lanczos" and eig.hvp_count > k and eig.seconds > 0
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
    model, x, y, hess, vals, vecs = case(kind)
    k = 4
    reused = H.top_eigenpairs(model, x, y, k=k, tol=1e-10, seed=3)
    calls = []
    real_eigsh = H._eigsh

    def counting_eigsh(op, *a, **kw):
        out = real_eigsh(op, *a, **kw)
        calls.append(op.hvp_count)
        return out
    monkeypatch.setattr(H, "_eigsh", counting_eigsh)
    again = H.top_eigenpairs(model, x, y, k=k, tol=1e-10, seed=3)
    assert again.hvp_count == calls[0], "the Ritz step made new products"
    monkeypatch.setattr(H, "REUSE_TOL", -1.0)            # forbid reuse: k fresh products
    fresh = H.top_eigenpairs(model, x, y, k=k, tol=1e-10, seed=3)
    assert fresh.hvp_count == reused.hvp_count + k
    torch.testing.assert_close(reused.eigenvalues, fresh.eigenvalues, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(reused.eigenvalues, torch.from_numpy(vals[:k].copy()), rtol=1e-8, atol=1e-12)
    assert reused.residuals.max() < 1e-8 and fresh.residuals.max() < 1e-8
    # the residuals are measured: a wrong product shows up in them
    assert torch.allclose(reused.residuals, fresh.residuals, atol=1e-9)


def test_products_fall_back_to_fresh_ones_outside_the_recorded_span():
    model, x, y, hess, vals, vecs = case("relu")
    op = H.HessianOperator(model, x, y)
    with op.recording():
        basis = torch.linalg.qr(torch.randn(op.n_params, 3, dtype=torch.float64))[0]
        for col in basis.T[:2]:
            op.hvp(col)
        before = op.hvp_count
        hq = H._products(op, basis)                       # 2 columns recorded, the third is not in their span
    assert op.hvp_count == before + 1
    torch.testing.assert_close(hq, hess @ basis, rtol=1e-8, atol=1e-10)
    assert op.records() is None                          # records are dropped after the block


@pytest.mark.parametrize("kind", ["relu", "tanh", "cnn"])
def test_power_matches_eigh_largest_magnitude(kind):
    model, x, y, hess, vals, vecs = case(kind)
    k = 3
    eig = H.top_eigenpairs(model, x, y, k=k, method="power", tol=1e-8, max_iter=3000)
    assert eig.method == "power"
    by_magnitude = vals[np.argsort(-np.abs(vals), kind="stable")[:k]]
    # PyHessian's power iteration finds the largest |lambda|; we report them sorted algebraically
    expected = np.sort(by_magnitude)[::-1]
    check_pairs(eig, hess, expected, vecs, rtol=1e-3)


def test_power_equals_top_algebraic_when_curvature_is_positive_dominated():
    model, x, y, hess, vals, vecs = case("relu")
    k = 2
    assert np.abs(vals[-1]) < vals[k - 1], "test premise: top-k by magnitude are the top-k algebraic"
    eig = H.top_eigenpairs(model, x, y, k=k, method="power", tol=1e-10, max_iter=5000)
    got = check_pairs(eig, hess, vals[:k], vecs, rtol=1e-4)
    for i in range(k):
        if separated(vals, i, abs(vals).max(), rel=1e-2):
            assert abs(got[i] @ vecs[:, i]) > 0.999


def test_lanczos_needs_fewer_products_than_power():
    model, x, y, _, _, _ = case("tanh")
    lan = H.top_eigenpairs(model, x, y, k=3, tol=1e-6)
    pw = H.top_eigenpairs(model, x, y, k=3, method="power", tol=1e-6, max_iter=3000)
    assert lan.residuals.max() < 1e-3
    assert lan.hvp_count < pw.hvp_count


@pytest.mark.parametrize("kind", ["relu", "tanh", "cnn"])
def test_smallest_eigenvalue_negative_and_exact(kind):
    model, x, y, hess, vals, vecs = case(kind)
    assert vals[-1] < -1e-3 * vals[0], "test premise: untrained net with negative curvature"
    res = H.smallest_eigenvalue(model, x, y, tol=1e-10)
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
    model, x, y, hess, _, _ = case(kind)
    est = H.trace(model, x, y, n_probes=100, seed=3)
    exact = float(torch.trace(hess))
    assert est.n_probes == 100 and est.hvp_count == 100 and len(est.samples) == 100
    assert est.stderr == pytest.approx(est.samples.std(ddof=1) / 10)
    assert est.stderr > 0
    assert abs(est.estimate - exact) < 3 * est.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_density_moments(kind):
    model, x, y, hess, _, _ = case(kind)
    n = hess.shape[0]
    runs = 30
    d = H.density(model, x, y, n_runs=runs, n_iter=8, seed=1)
    assert d.nodes.shape == d.weights.shape == (runs, 8)
    assert d.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-3)
    h = hess.numpy()
    for power, exact in ((1, np.trace(h) / n), (2, np.trace(h @ h) / n)):
        per_run = runs * (d.weights * d.nodes ** power).sum(axis=1)   # v_r^T H^p v_r, one value per probe
        se = per_run.std(ddof=1) / np.sqrt(runs)
        assert abs(per_run.mean() - exact) < 4 * se


@pytest.mark.parametrize("kind", ["relu", "tanh"])
def test_density_full_lanczos_recovers_spectrum(kind):
    model, x, y, hess, vals, _ = case(kind)
    n = hess.shape[0]
    d = H.density(model, x, y, n_runs=1, n_iter=n, seed=0, probe="gaussian")
    assert d.weights.sum() == pytest.approx(1.0, abs=1e-12)
    nodes = d.nodes[0][d.weights[0] > 1e-12]
    distance = np.abs(nodes[:, None] - vals[None, :]).min(axis=1)
    assert distance.max() < 1e-6 * abs(vals).max()          # every node is an eigenvalue of H
    distinct = vals[np.concatenate([[True], np.abs(np.diff(vals)) > 1e-6 * abs(vals).max()])]
    assert len(nodes) >= len(distinct) - 2                   # and (almost) every distinct eigenvalue is a node


def test_density_on_given_grid_and_sigma():
    model, x, y, _, _, _ = case("relu")
    grid = np.linspace(-1, 1, 4001)
    d = H.density(model, x, y, n_runs=2, n_iter=10, grid=grid, sigma_sq=1e-4)
    assert d.sigma_sq == 1e-4 and np.array_equal(d.grid, grid)
    expected = sum(w * np.exp(-(grid - t) ** 2 / 2e-4) / np.sqrt(2e-4 * np.pi)
                   for t, w in zip(d.nodes.ravel(), d.weights.ravel()))
    np.testing.assert_allclose(d.density, expected, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------- state, repeats
def _state(model):
    return ([m.training for m in model.modules()],
            [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()])


def _assert_state(model, state):
    modes, grads = state
    assert [m.training for m in model.modules()] == modes
    for p, (obj, values) in zip(model.parameters(), grads):
        assert p.grad is obj
        if obj is not None:
            assert torch.equal(p.grad, values)


CALLS = {
    "hvp": lambda m, x, y: H.HessianOperator(m, x, y).hvp(torch.ones(H.HessianOperator(m, x, y).n_params)),
    "gradient": lambda m, x, y: H.HessianOperator(m, x, y).gradient(),
    "lanczos": lambda m, x, y: H.top_eigenpairs(m, x, y, k=2),
    "power": lambda m, x, y: H.top_eigenpairs(m, x, y, k=2, method="power", max_iter=50),
    "smallest": lambda m, x, y: H.smallest_eigenvalue(m, x, y, tol=1e-3),
    "trace": lambda m, x, y: H.trace(m, x, y, n_probes=3),
    "density": lambda m, x, y: H.density(m, x, y, n_iter=4),
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
    CALLS[name](model, x, y)
    _assert_state(model, state)
    for p in model.parameters():    # drop graph-carrying grads (reference cycle)
        p.grad = None


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_power_twice_and_after_backward_is_identical():
    """PyHessian's doubling bug (grads accumulated by backward(create_graph=True)) must not reach our results."""
    model, x, y, hess, vals, _ = case("relu")
    first = H.top_eigenpairs(model, x, y, k=2, method="power", tol=1e-8, max_iter=3000)
    second = H.top_eigenpairs(model, x, y, k=2, method="power", tol=1e-8, max_iter=3000)
    nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
    try:
        third = H.top_eigenpairs(model, x, y, k=2, method="power", tol=1e-8, max_iter=3000)
    finally:
        for p in model.parameters():
            p.grad = None
    for other in (second, third):
        assert torch.equal(first.eigenvalues, other.eigenvalues)
        assert torch.equal(first.eigenvectors, other.eigenvectors)
        assert first.hvp_count == other.hvp_count
    np.testing.assert_allclose(third.eigenvalues.numpy(), vals[:2], rtol=0, atol=1e-4 * vals[0])


def test_repeated_calls_identical():
    model, x, y, _, _, _ = case("cnn")
    a, b = (H.top_eigenpairs(model, x, y, k=3, seed=4) for _ in range(2))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    t1, t2 = (H.trace(model, x, y, n_probes=5, seed=4) for _ in range(2))
    assert np.array_equal(t1.samples, t2.samples)
    d1, d2 = (H.density(model, x, y, n_runs=2, n_iter=6, seed=4) for _ in range(2))
    assert np.array_equal(d1.nodes, d2.nodes) and np.array_equal(d1.density, d2.density)
    t3 = H.trace(model, x, y, n_probes=5, seed=5)
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
    v_list = [t.view(s) for t, s in zip(torch.split(v, [int(np.prod(s)) for s in shapes]), shapes)]

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
    n = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="k=0 .*|k must be an integer >= 1"):
        H.top_eigenpairs(model, x, y, k=0)
    with pytest.raises(ValueError, match=f"k={n} must be smaller than n_params={n}"):
        H.top_eigenpairs(model, x, y, k=n)
    with pytest.raises(ValueError, match="empty data"):
        H.top_eigenpairs(model, x[:0], y[:0], k=1)
    with pytest.raises(ValueError, match="same length, got 48 and 47"):
        H.trace(model, x, y[:-1])
    with pytest.raises(ValueError, match="unknown method 'arnoldi'"):
        H.top_eigenpairs(model, x, y, k=1, method="arnoldi")
    for tol in (0.0, -1e-3):
        with pytest.raises(ValueError, match="tol must be > 0"):
            H.top_eigenpairs(model, x, y, k=1, tol=tol)
    with pytest.raises(ValueError, match="tol must be > 0"):
        H.smallest_eigenvalue(model, x, y, tol=0)
    with pytest.raises(ValueError, match="n_probes must be an integer >= 2"):
        H.trace(model, x, y, n_probes=1)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        H.HessianOperator(model, x, y, chunk_size=0)
    with pytest.raises(ValueError, match=f"n_iter={n + 1} exceeds n_params={n}"):
        H.density(model, x, y, n_iter=n + 1)
    with pytest.raises(ValueError, match="unknown probe 'normal'"):
        H.density(model, x, y, probe="normal")
    with pytest.raises(ValueError, match="vector has 3 entries"):
        H.HessianOperator(model, x, y).hvp(torch.ones(3))


def test_scipy_blas_threads_restored():
    lib = H._scipy_openblas()
    if lib is None:
        pytest.skip("scipy's bundled OpenBLAS not found (non-Linux wheel): nothing to limit")
    before = lib.scipy_openblas_get_num_threads()
    with H._one_blas_thread():
        assert lib.scipy_openblas_get_num_threads() == 1
    assert lib.scipy_openblas_get_num_threads() == before
