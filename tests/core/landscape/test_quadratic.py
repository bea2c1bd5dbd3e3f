"""Quadratic model (``lib.core.landscape.quadratic``): exact moments against quadrature brute force, per-sample terms
that recover an exactly quadratic loss, Monte Carlo against the closed forms (exactly quadratic losses and a small
trained network), bad parameters."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.core.landscape.delta import delta_curve, loss_differences
from lib.core.landscape.quadratic import (
    PerSampleTerms,
    delta_quadratic,
    delta_theorem1,
    per_sample_terms,
    quadratic_losses,
    variance_quadratic,
)
from lib.core.landscape.sampling import Ball, Curvature, Gaussian, Sphere, make_sampler, quadrature
from lib.core.landscape.subspace import random_basis
from lib.core.tensors import flat_params, n_params, unflatten

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# ----------------------------------------------------------------------------------------------- fixtures
class QuadModel(nn.Module):
    """Per-sample 'loss' exactly quadratic in the parameters: out_i = a_i + g_i.w + 1/2 w^T H_i w.
    Each input row packs (a_i, g_i, H_i); use with loss_fn = identity."""

    def __init__(self, n, w0):
        super().__init__()
        self.n = n
        self.w = nn.Parameter(w0.clone())

    def forward(self, x):
        n = self.n
        a, g, H = x[:, 0], x[:, 1:1 + n], x[:, 1 + n:].reshape(-1, n, n)
        return a + g @ self.w + 0.5 * torch.einsum("i,nij,j->n", self.w, H, self.w)


def identity_loss(out, y):
    return out


def make_quadratic(N=200, n=5, D=3, seed=0, a_scale=1.0, c_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = a_scale * torch.randn(N, generator=g, dtype=torch.float64)
    gr = torch.randn(N, n, generator=g, dtype=torch.float64)
    A = torch.randn(N, n, n, generator=g, dtype=torch.float64)
    H = c_scale * 0.5 * (A + A.transpose(1, 2))
    w0 = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.cat([a[:, None], gr, H.reshape(N, -1)], dim=1)
    model = QuadModel(n, w0)
    P = random_basis(n, D, seed=seed + 1, dtype=torch.float64)
    # terms at w0, computed by hand
    a0 = a + gr @ w0 + 0.5 * torch.einsum("i,nij,j->n", w0, H, w0)
    grad = gr + torch.einsum("nij,j->ni", H, w0)
    terms = PerSampleTerms(a=a0, b=grad @ P.T, C=torch.einsum("ai,nij,bj->nab", P, H, P))
    return model, x, torch.zeros(N, dtype=torch.long), P, terms


def random_terms(N=40, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(N, D, D, generator=g, dtype=torch.float64)
    return PerSampleTerms(a=torch.randn(N, generator=g, dtype=torch.float64),
                          b=torch.randn(N, D, generator=g, dtype=torch.float64),
                          C=A + A.transpose(1, 2))


def brute_force_moments(terms, sampler, D):
    """E_theta[d_k^2], E_theta[(d_k - d_k(0))^2] and E_theta V by quadrature over theta of the quadratic losses."""
    X, W = quadrature(sampler, D, n_points=4)
    a, b, C = terms.a.double(), terms.b.double(), terms.C.double()
    L = a + X @ b.T + 0.5 * torch.einsum("qa,iab,qb->qi", X, C, X)      # (Q, N), independent of lib
    d = loss_differences(L)
    d0 = loss_differences(a)
    V = L.var(dim=1, unbiased=False)
    return (W @ d ** 2).numpy(), (W @ (d - d0) ** 2).numpy(), float(W @ V)


SAMPLERS_D = [(Gaussian(0.7), 2), (Gaussian(0.7), 3), (Ball(0.7), 1), (Ball(0.7), 2), (Ball(0.7), 3),
              (Sphere(0.7), 2), (Sphere(0.7), 3), (Curvature(0.2, [3.0, 0.5]), 2),
              (Curvature(0.2, [3.0, 1.0, 0.25]), 3)]


# ----------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("sampler,D", SAMPLERS_D, ids=lambda v: getattr(v, "name", str(v)))
def test_Qk_equals_quadrature_brute_force(sampler, D):
    terms = random_terms(N=40, D=D, seed=D)
    q = delta_quadratic(terms, sampler)
    full, centred, vbar = brute_force_moments(terms, sampler, D)
    np.testing.assert_allclose(q.Q, full, rtol=1e-8)
    np.testing.assert_allclose(q.centred, centred, rtol=1e-8)
    np.testing.assert_allclose(q.d0sq + q.grad_part + q.cross_part + q.curv_part, q.Q, rtol=1e-12)
    np.testing.assert_allclose(q.k, np.arange(1, 40))
    v = variance_quadratic(terms, sampler)
    assert v.vbar == pytest.approx(vbar, rel=1e-8)
    assert v.V0 + v.grad_part + v.cross_part + v.curv_part == pytest.approx(v.vbar, rel=1e-12)
    assert v.V0 == pytest.approx(float(terms.a.var(unbiased=False)), rel=1e-12)
    if sampler.isotropic:
        assert v.grad_part == pytest.approx(sampler.s(D) * v.V2, rel=1e-12)
        assert v.curv_part == pytest.approx(sampler.m(D) * v.V4, rel=1e-12)


def test_theorem1_formula_and_relation_to_Qk():
    terms = random_terms(N=30, D=3, seed=5)
    sigma = 0.4
    T = delta_theorem1(terms, sigma)
    C = terms.C.numpy()
    expected = []
    for k in range(1, 30):
        dC = (C[k] - C[:k].mean(0)) / (k + 1)
        diag = np.diag(dC)
        expected.append(sigma ** 4 / 4 * (2 * np.sum(diag ** 2) + np.sum(diag) ** 2))
    np.testing.assert_allclose(T, expected, rtol=1e-10)
    # with no loss / gradient terms and diagonal curvature, Theorem 1 is the exact Gaussian second moment
    diag_only = PerSampleTerms(a=torch.zeros(30, dtype=torch.float64), b=torch.zeros(30, 3, dtype=torch.float64),
                               C=torch.diag_embed(torch.diagonal(terms.C, dim1=1, dim2=2)))
    np.testing.assert_allclose(delta_quadratic(diag_only, Gaussian(sigma)).Q, delta_theorem1(diag_only, sigma),
                               rtol=1e-10)


def test_per_sample_terms_recover_an_exactly_quadratic_loss():
    model, x, y, P, terms = make_quadratic(N=20, seed=3)
    t = per_sample_terms(model, x, y, P, loss_fn=identity_loss)
    assert t.method == "jvp"
    torch.testing.assert_close(t.a, terms.a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t.b, terms.b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t.C, terms.C, rtol=1e-10, atol=1e-12)
    th = torch.randn(4, 3, dtype=torch.float64)
    from lib.core.landscape.subspace import per_sample_losses
    torch.testing.assert_close(quadratic_losses(terms, th),
                               per_sample_losses(model, x, y, P, th, loss_fn=identity_loss), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------- Monte Carlo vs Q_k
def test_monte_carlo_matches_Qk_on_exactly_quadratic_losses():
    model, x, y, P, terms = make_quadratic(N=150, seed=4)
    sampler = Gaussian(0.5)
    T = 2000
    mc = delta_curve(model, x, y, P, sampler, T, seed=1, batch_thetas=64, loss_fn=identity_loss, progress=False)
    q = delta_quadratic(terms, sampler)
    assert np.mean(np.abs(mc.delta - q.Q) < 3 * mc.stderr) >= 0.95
    assert np.mean(np.abs(mc.centred - q.centred) < 3 * mc.centred_stderr) >= 0.95
    np.testing.assert_allclose(mc.d0sq, q.d0sq, rtol=1e-9, atol=1e-18)
    v = variance_quadratic(terms, sampler)
    assert abs(mc.vbar - v.vbar) < 4 * mc.vbar_stderr


def test_antithetic_and_sobol_agree_with_plain_and_have_lower_variance():
    model, x, y, P, terms = make_quadratic(N=80, seed=5, a_scale=3.0, c_scale=0.3)
    sampler = Sphere(0.3)
    q = delta_quadratic(terms, sampler)
    T = 512
    se = {}
    for est in ("plain", "antithetic", "sobol"):
        mc = delta_curve(model, x, y, P, sampler, T, estimator=est, seed=2, batch_thetas=64,
                         loss_fn=identity_loss, progress=False)
        assert np.mean(np.abs(mc.delta - q.Q) < 4 * mc.stderr) >= 0.9, est
        se[est] = mc.stderr
    assert np.median(se["antithetic"] / se["plain"]) < 0.5
    assert np.median(se["sobol"] / se["plain"]) < 0.5


def test_monte_carlo_matches_Qk_on_a_small_trained_network():
    """Tiny smooth (tanh) MLP trained with Adam; top-3 Hessian subspace; small sigma: quadratic regime."""
    g = torch.Generator().manual_seed(0)
    N, dim, classes = 300, 8, 3
    centres = 2.0 * torch.randn(classes, dim, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (N,), generator=g)
    x = centres[y] + 1.5 * torch.randn(N, dim, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, classes)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    w0 = flat_params(model)
    H = torch.autograd.functional.hessian(
        lambda w: F.cross_entropy(torch.func.functional_call(model, unflatten(model, w), (x,)), y), w0)
    evals, evecs = torch.linalg.eigh(H)
    D = 3
    P = evecs[:, -D:].flip(1).T.contiguous()
    sampler = Gaussian(0.02 / math.sqrt(float(evals[-1])))
    terms = per_sample_terms(model, x, y, P)
    q = delta_quadratic(terms, sampler)
    mc = delta_curve(model, x, y, P, sampler, 512, estimator="sobol", seed=3, batch_thetas=64, progress=False)
    np.testing.assert_allclose(mc.d0sq, q.d0sq, rtol=1e-9, atol=1e-20)
    assert np.median(1 - q.d0sq / q.Q) > 0.02                # the sigma-dependent part is not negligible
    assert np.median(np.abs(mc.delta / q.Q - 1)) < 0.01
    assert np.median(np.abs((mc.delta - mc.d0sq) / (q.Q - q.d0sq) - 1)) < 0.03
    assert np.median(np.abs(mc.centred / q.centred - 1)) < 0.05
    v = variance_quadratic(terms, sampler)
    assert mc.vbar == pytest.approx(v.vbar, rel=0.02)


# ----------------------------------------------------------------------------------------------- errors
def test_bad_parameters_raise_value_errors():
    terms = random_terms(N=10, D=2)
    with pytest.raises(ValueError, match=r"sigma=0.0 is not allowed: a finite number in \(0.0, inf\]"):
        delta_theorem1(terms, 0.0)
    with pytest.raises(ValueError, match="sigma=-1 is not allowed"):
        delta_theorem1(terms, -1)
    with pytest.raises(ValueError, match="D=2 does not match the curvature sampler's 3 eigenvalues"):
        delta_quadratic(terms, Curvature(0.1, [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="D=2 does not match"):
        variance_quadratic(terms, Curvature(0.1, [1.0]))
    with pytest.raises(ValueError, match="inconsistent terms shapes"):
        delta_quadratic(PerSampleTerms(a=terms.a, b=terms.b[:5], C=terms.C), Gaussian(1.0))
    with pytest.raises(ValueError, match="terms must be a PerSampleTerms"):
        delta_quadratic((terms.a, terms.b, terms.C), Gaussian(1.0))
    with pytest.raises(ValueError, match="sampler must be a lib.sampling.Sampler"):
        delta_quadratic(terms, 0.5)
    with pytest.raises(ValueError, match=r"thetas must have shape \(T, D=2\)"):
        quadratic_losses(terms, torch.zeros(3, 4))
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    P = random_basis(n_params(model), 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="method='hvp' is not allowed: one of"):
        per_sample_terms(model, x, y, P, method="hvp")
    with pytest.raises(ValueError, match="basis width 7 != n_params 8"):
        per_sample_terms(model, x, y, torch.zeros(2, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="method='jet' is not available.*cross-entropy"):
        per_sample_terms(model, x, y, P, method="jet", loss_fn=identity_loss)
    with pytest.raises(ValueError, match=r"chunk_size=0 is not allowed: an integer in \[1, inf\]"):
        per_sample_terms(model, x, y, P, chunk_size=0)
    with pytest.raises(ValueError, match="inputs and targets must have the same length"):
        per_sample_terms(model, x, y[:3], P)
    assert make_sampler("gaussian", sigma=1.0).name == "gaussian"
