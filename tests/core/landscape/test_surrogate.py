"""Logit-space surrogate: jets against torch.func and finite differences, its loss expansion is the quadratic model,
agreement with Monte Carlo (tiny sigma: with Q_k too; moderate sigma: V-bar; affine logits: exactly), same thetas
and insertion orders as ``delta_curve``."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from lib.core.landscape.delta import delta_curve, loss_differences
from lib.core.landscape.quadratic import delta_quadratic, per_sample_terms, quadratic_losses, variance_quadratic
from lib.core.landscape.sampling import Curvature, Gaussian, Sphere
from lib.core.landscape.subspace import per_sample_losses, random_basis
from lib.core.landscape.surrogate import LogitJets, logit_jets, surrogate_curve, surrogate_losses
from lib.core.tensors import flat_params, n_params, unflatten
from tests.cases import explicit_hessian, make, seeded_data, seeded_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

CURVE_FIELDS = ("delta", "stderr", "centred", "centred_stderr", "d0sq", "losses0", "batch_means")


def logits_of(model, P, x):
    """theta -> logits at w* + P^T theta (eval mode), for torch.func references."""
    w0 = flat_params(model)
    model.eval()
    return lambda th: functional_call(model, unflatten(model, w0 + th @ P), (x,))


def hessian_basis_of(model, x, y, D):
    """Top-D eigenvectors of the explicit Hessian (tiny nets), as a (D, n_params) basis."""
    _, vecs = torch.linalg.eigh(explicit_hessian(model, x, y))
    return vecs[:, -D:].T.contiguous()


class Recording(Gaussian):
    """A Gaussian sampler that records every draw (arguments and thetas)."""

    def __init__(self, sigma):
        super().__init__(sigma)
        self.calls = []

    def sample(self, n, D, estimator="plain", seed=0, n_replicates=8):
        th = super().sample(n, D, estimator=estimator, seed=seed, n_replicates=n_replicates)
        self.calls.append(((n, D, estimator, seed, n_replicates), th))
        return th


# ----------------------------------------------------------------------------------------------- jets
# torch.func's hessian scripts its jvp decompositions with the deprecated torch.jit.script (the reference, not lib)
@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")
@pytest.mark.parametrize("method", ["jet", "jvp"])
@pytest.mark.parametrize("kind", ["tanh", "relu", "pooled_cnn", "dropout"])
def test_jets_equal_torch_func_jacobian_and_hessian_of_the_logits(kind, method):
    model, x, y = make(kind, n=11)
    model.train()                                            # jets are taken in eval mode, flags restored
    w_before = flat_params(model)
    P = random_basis(n_params(model), 3, seed=1, dtype=torch.float64)
    jets = logit_jets(model, x, y, P, chunk_size=4, method=method)
    assert model.training and torch.equal(flat_params(model), w_before)
    f, th0 = logits_of(model, P, x), torch.zeros(3, dtype=torch.float64)
    assert jets.method == method and (jets.N, jets.C, jets.D) == (11, y.max().item() + 1 if kind != "pooled_cnn"
                                                                    else 4, 3)
    torch.testing.assert_close(jets.z, f(th0), rtol=0, atol=1e-14)
    torch.testing.assert_close(jets.J, jacrev(f)(th0), rtol=0, atol=1e-13)
    torch.testing.assert_close(jets.Z, hessian(f)(th0), rtol=0, atol=1e-13)
    assert torch.equal(jets.targets, y)
    whole = logit_jets(model, x, y, P, method=method)          # chunking changes nothing
    torch.testing.assert_close(whole.Z, jets.Z, rtol=0, atol=1e-14)


def test_jets_equal_finite_differences():
    """Central differences of the logits (independent of any autodiff), smooth tanh net in float64."""
    model, x, y = make("tanh", n=9)
    D, h = 3, 1e-4
    P = random_basis(n_params(model), D, seed=2, dtype=torch.float64)
    jets = logit_jets(model, x, y, P)
    f = logits_of(model, P, x)
    e = torch.eye(D, dtype=torch.float64) * h
    with torch.no_grad():
        J = torch.stack([(f(e[a]) - f(-e[a])) / (2 * h) for a in range(D)], -1)
        Z = torch.stack([torch.stack([(f(e[a] + e[b]) - f(e[a] - e[b]) - f(e[b] - e[a]) + f(-e[a] - e[b]))
                                      / (4 * h * h) for b in range(D)], -1) for a in range(D)], -2)
    torch.testing.assert_close(jets.J, J, rtol=0, atol=1e-8)
    torch.testing.assert_close(jets.Z, Z, rtol=0, atol=1e-6)


def test_surrogate_loss_expansion_is_the_quadratic_model():
    """The surrogate's loss equals l_i at theta = 0, and its gradient / Hessian there are per_sample_terms' b, C:
    b = J^T r, C = J^T (diag p - p p^T) J + sum_c r_c Z_c; per theta the surrogate, the quadratic model and the
    network differ by O(|theta|^3)."""
    model, x, y = make("tanh", n=20)
    P = random_basis(n_params(model), 3, seed=3, dtype=torch.float64)
    jets = logit_jets(model, x, y, P)
    terms = per_sample_terms(model, x, y, P, progress=False)
    p = torch.softmax(jets.z, -1)
    r = p - F.one_hot(y, jets.C).to(p.dtype)
    torch.testing.assert_close(surrogate_losses(jets, torch.zeros(3, dtype=torch.float64)), terms.a)
    torch.testing.assert_close(torch.einsum("ncd,nc->nd", jets.J, r), terms.b, rtol=0, atol=1e-13)
    C = (torch.einsum("nca,nc,ncb->nab", jets.J, p, jets.J)
         - torch.einsum("nca,nc->na", jets.J, p)[:, :, None] * torch.einsum("ncb,nc->nb", jets.J, p)[:, None, :]
         + torch.einsum("nc,ncab->nab", r, jets.Z))
    torch.testing.assert_close(C, terms.C, rtol=0, atol=1e-13)
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(4, 3, generator=g, dtype=torch.float64)
    errors = []
    for eps in (1e-2, 1e-3):
        th = eps * direction
        exact = per_sample_losses(model, x, y, P, th)
        errors.append([(model_losses(th) - exact).abs().max() for model_losses in
                       (lambda t: surrogate_losses(jets, t), lambda t: quadratic_losses(terms, t))])
    ratios = torch.tensor(errors[0]) / torch.tensor(errors[1])
    assert torch.all(ratios > 1e2)                             # third order: 10x smaller theta, ~1000x smaller error


# ----------------------------------------------------------------------------------------------- curves
def test_tiny_sigma_surrogate_monte_carlo_and_Qk_agree():
    """At sigma = 1e-3 all three are the first-order curve: MC and surrogate (same thetas) to ~sigma, the surrogate
    and the exact Q_k (and V-bar) within the surrogate's Monte-Carlo error."""
    model, x, y = make("tanh", n=60, seed=1)
    P = random_basis(n_params(model), 3, seed=4, dtype=torch.float64)
    sampler = Gaussian(1e-3)
    jets = logit_jets(model, x, y, P)
    mc = delta_curve(model, x, y, P, sampler, 32, seed=5, progress=False)
    s = surrogate_curve(jets, sampler, 32, seed=5)
    np.testing.assert_allclose(s.delta, mc.delta, rtol=1e-6, atol=0)
    np.testing.assert_allclose(s.centred, mc.centred, rtol=1e-2, atol=0)
    assert s.vbar == pytest.approx(mc.vbar, rel=1e-6)
    terms = per_sample_terms(model, x, y, P, progress=False)
    Q = delta_quadratic(terms, sampler)
    big = surrogate_curve(jets, sampler, 4096, seed=6)
    assert np.all(np.abs(big.centred - Q.centred) <= 5 * big.centred_stderr + 1e-3 * Q.centred)
    assert np.all(np.abs(big.delta - Q.Q) <= 5 * big.stderr + 1e-6 * Q.Q)
    assert abs(big.vbar - variance_quadratic(terms, sampler).vbar) <= 5 * big.vbar_stderr
    np.testing.assert_allclose(big.d0sq, Q.d0sq, rtol=1e-9, atol=1e-20)


def test_vbar_and_curve_match_monte_carlo_at_moderate_sigma():
    """Tanh net in float64, top-3 Hessian subspace, sigma = 0.3 (same 256 thetas): V-bar within 3 %, the per-k
    ratio MC / surrogate within 2 % in median and 10 % at every k (measured: 1.4 %, 1.3 %, 6.7 %)."""
    model, x, y = make("tanh", n=200)
    P = hessian_basis_of(model, x, y, 3)
    sampler = Gaussian(0.3)
    mc = delta_curve(model, x, y, P, sampler, 256, seed=0, progress=False)
    s = surrogate_curve(logit_jets(model, x, y, P), sampler, 256, seed=0)
    assert s.vbar == pytest.approx(mc.vbar, rel=0.03)
    ratio = mc.delta / s.delta
    assert abs(np.median(ratio) - 1) < 0.02 and np.all(np.abs(ratio - 1) < 0.10)
    assert s.n_forward == 0 and s.meta["jets_method"] == "jet"


@pytest.mark.parametrize("estimator", ["plain", "antithetic", "sobol"])
def test_affine_logits_give_the_monte_carlo_curve_exactly(estimator):
    """A linear model (logits affine in theta): J exact, Z = 0, and the surrogate curve is delta_curve's, field by
    field, with the same insertion orders, even at sigma = 3."""
    model = seeded_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 4)))
    x, y = seeded_data(40, (6,), 4, seed=2)
    P = random_basis(n_params(model), 3, seed=5, dtype=torch.float64)
    jets = logit_jets(model, x, y, P)
    assert torch.equal(jets.Z, torch.zeros_like(jets.Z))
    sampler = Gaussian(3.0)
    kw = dict(estimator=estimator, seed=3, n_orders=3)
    mc = delta_curve(model, x, y, P, sampler, 32, batch_thetas=7, progress=False, **kw)
    s = surrogate_curve(jets, sampler, 32, batch_thetas=5, **kw)
    for name in CURVE_FIELDS + ("order_curves", "order_mean", "order_median", "order_stderr", "order_formula"):
        np.testing.assert_allclose(getattr(s, name), getattr(mc, name), rtol=1e-10, atol=1e-300, err_msg=name)
    for name in ("vbar", "vbar_stderr", "v0"):
        assert getattr(s, name) == pytest.approx(getattr(mc, name), rel=1e-10), name
    assert (s.n_units, s.n_samples, s.estimator, s.sampler, s.D, s.N) == (mc.n_units, 32, estimator, mc.sampler, 3, 40)


@pytest.mark.parametrize("estimator", ["plain", "antithetic", "sobol"])
def test_the_thetas_are_delta_curves_draws(estimator):
    model, x, y = make("relu", n=16)
    P = random_basis(n_params(model), 2, seed=6, dtype=torch.float64)
    rec = Recording(0.5)
    delta_curve(model, x, y, P, rec, 16, estimator=estimator, seed=9, progress=False)
    surrogate_curve(logit_jets(model, x, y, P), rec, 16, estimator=estimator, seed=9)
    (args_mc, th_mc), (args_s, th_s) = rec.calls
    assert args_mc == args_s and torch.equal(th_mc, th_s)


def test_curve_statistics_are_the_per_theta_surrogate_losses():
    """delta, stderr, centred, V-bar from explicit per-theta surrogate losses; batch size changes nothing;
    a non-isotropic sampler and the sphere work too."""
    model, x, y = make("relu", n=30)
    P = random_basis(n_params(model), 3, seed=7, dtype=torch.float64)
    jets = logit_jets(model, x, y, P)
    for sampler in (Sphere(0.4), Curvature(0.05, [3.0, 2.0, 0.5])):
        s = surrogate_curve(jets, sampler, 24, seed=1, batch_thetas=5)
        L = surrogate_losses(jets, sampler.sample(24, 3, seed=1))
        d, d0 = loss_differences(L).numpy(), loss_differences(surrogate_losses(jets, torch.zeros(3))).numpy()
        np.testing.assert_allclose(s.delta, (d ** 2).mean(0), rtol=1e-10)
        np.testing.assert_allclose(s.stderr, (d ** 2).std(0, ddof=1) / np.sqrt(24), rtol=1e-7)
        np.testing.assert_allclose(s.centred, ((d - d0) ** 2).mean(0), rtol=1e-10)
        assert s.vbar == pytest.approx(L.var(1, unbiased=False).mean().item(), rel=1e-10)
        other = surrogate_curve(jets, sampler, 24, seed=1)
        np.testing.assert_allclose(other.delta, s.delta, rtol=1e-12)
        np.testing.assert_allclose(other.batch_means, s.batch_means, rtol=1e-12)


def test_float32_models_give_float32_surrogate_losses():
    model, x, y = make("tanh", n=10, dtype=torch.float32)
    P = random_basis(n_params(model), 2, seed=8, dtype=torch.float32)
    jets = logit_jets(model, x, y, P)
    L = surrogate_losses(jets, torch.full((3, 2), 1e-3, dtype=torch.float64))
    assert jets.Z.dtype == torch.float32 and L.dtype == torch.float32 and L.shape == (3, 10)
    torch.testing.assert_close(L[0], per_sample_losses(model, x, y, P, torch.full((2,), 1e-3)), rtol=1e-5, atol=1e-6)


def test_bad_arguments_raise_value_errors():
    model, x, y = make("relu", n=10)
    P = random_basis(n_params(model), 2, seed=0, dtype=torch.float64)
    jets = logit_jets(model, x, y, P)
    with pytest.raises(ValueError, match="method"):
        logit_jets(model, x, y, P, method="adjoint")
    with pytest.raises(ValueError, match="n_params"):
        logit_jets(model, x, y, P[:, :-1])
    with pytest.raises(ValueError, match="same length"):
        logit_jets(model, x, y[:-1], P)
    normed = seeded_model(lambda: nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3)))
    Pn = random_basis(n_params(normed), 2, seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match="jet"):
        logit_jets(normed, x, y, Pn, method="jet")
    with pytest.raises(ValueError, match="norm layers"):
        logit_jets(normed, x, y, Pn)
    flat_out = seeded_model(lambda: nn.Sequential(nn.Linear(6, 3), nn.Flatten(0)))
    for method in ("auto", "jvp"):
        with pytest.raises(ValueError, match=r"\(n, C\) logits"):
            logit_jets(flat_out, x, y, random_basis(n_params(flat_out), 2, seed=0, dtype=torch.float64), method=method)
    with pytest.raises(ValueError, match="LogitJets"):
        surrogate_losses(terms := per_sample_terms(model, x, y, P, progress=False), torch.zeros(1, 2))
    assert terms.N == 10
    with pytest.raises(ValueError, match="D=2"):
        surrogate_losses(jets, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="inconsistent"):
        surrogate_losses(LogitJets(jets.z, jets.J, jets.Z[:, :, :1], jets.targets), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="Sampler"):
        surrogate_curve(jets, "gaussian", 8)
    with pytest.raises(ValueError, match="estimator"):
        surrogate_curve(jets, Gaussian(0.1), 8, estimator="halton")
    with pytest.raises(ValueError, match="even"):
        surrogate_curve(jets, Gaussian(0.1), 7, estimator="antithetic")
    with pytest.raises(ValueError, match="multiple"):
        surrogate_curve(jets, Gaussian(0.1), 12, estimator="sobol")
    with pytest.raises(ValueError, match="n_samples"):
        surrogate_curve(jets, Gaussian(0.1), 1)
    with pytest.raises(ValueError, match="D"):
        surrogate_curve(jets, Curvature(0.1, [1.0, 2.0, 3.0]), 8)
