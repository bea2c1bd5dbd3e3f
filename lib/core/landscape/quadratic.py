"""Exact moments of the quadratic model of d_k(theta) in the subspace: Q_k, Theorem 1's T_k and the V-bar parts.

docs/specification.md 4.2, 5. Per sample i at w*: a_i = l_i(w*), b_i = P grad l_i(w*) (R^D), C_i = P Hess l_i(w*) P^T
(D x D), with the basis P of shape (D, n_params) (rows = directions), from ``per_sample_terms``
(``lib.core.landscape.jet``,
re-exported here with ``PerSampleTerms``). With prefix means (float64 cumulative sums),
    da_k = (a_{k+1} - a-bar_k)/(k+1),  db_k, dC_k likewise  (exactly ``montecarlo.loss_differences``),
the second-order model of d_k(theta) is da + db.theta + 1/2 theta^T dC theta and its exact second moment is
    isotropic (s, m):   Q_k = da^2 + s|db|^2 + s da tr(dC) + (m/4)(2 tr(dC^2) + (tr dC)^2)
    Gaussian cov. S:    Q_k = da^2 + db^T S db + da tr(dC S) + 1/4 (2 tr((dC S)^2) + (tr(dC S))^2).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lib.core.checks import check_positive
from lib.core.landscape.delta import loss_differences
from lib.core.landscape.jet import METHODS, PerSampleTerms, per_sample_terms
from lib.core.landscape.sampling import Sampler

__all__ = [
    "PerSampleTerms",
    "QuadraticCurve",
    "VarianceParts",
    "per_sample_terms",
    "delta_quadratic",
    "delta_theorem1",
    "variance_quadratic",
    "quadratic_losses",
    "METHODS",
]


# ----------------------------------------------------------------------------------------------- results
@dataclass
class QuadraticCurve:
    """Exact second moment of the quadratic model of d_k, k = 1..N-1 (numpy float64 arrays).

    Q = d0sq + grad_part + cross_part + curv_part; centred = grad_part + curv_part = E[(d_k(theta) - d_k(0))^2]
    (the cross term da * E[theta^T dC theta] vanishes from the centred moment because d_k(0) = da is removed).
    """

    k: np.ndarray
    Q: np.ndarray
    centred: np.ndarray
    d0sq: np.ndarray
    grad_part: np.ndarray
    cross_part: np.ndarray
    curv_part: np.ndarray
    sampler: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class VarianceParts:
    """Quadratic-model V-bar = E_theta V(w* + P^T theta), V(w) = (1/N) sum_i (l_i - L_N)^2, and its parts.

    vbar = V0 + grad_part + cross_part + curv_part, where (alpha, beta, Gamma centred over the N samples)
      V0         = mean alpha^2                          (loss spread at w*)
      grad_part  = s * V2,  V2 = mean |beta|^2            (covariance S: mean beta^T S beta, V2 = nan)
      cross_part = s * mean(alpha tr Gamma)               (covariance S: mean alpha tr(Gamma S)); reported
                   separately, it is part of vbar and can be negative
      curv_part  = m * V4,  V4 = mean (2 tr Gamma^2 + (tr Gamma)^2) / 4   (covariance S: mean of
                   (2 tr((Gamma S)^2) + (tr Gamma S)^2) / 4, V4 = nan)
    """

    vbar: float
    V0: float
    grad_part: float
    cross_part: float
    curv_part: float
    V2: float
    V4: float
    s: object
    m: object
    sampler: str = ""


# ----------------------------------------------------------------------------------------------- checks
def _check_terms(terms: PerSampleTerms):
    if not isinstance(terms, PerSampleTerms):
        raise ValueError(f"terms must be a PerSampleTerms (from per_sample_terms), got {type(terms).__name__}")
    N = terms.a.shape[0]
    if terms.a.dim() != 1 or terms.b.dim() != 2 or terms.C.dim() != 3:
        raise ValueError("terms must have a (N,), b (N, D), C (N, D, D)")
    D = terms.b.shape[1]
    if terms.b.shape[0] != N or tuple(terms.C.shape) != (N, D, D):
        raise ValueError(f"inconsistent terms shapes: a {tuple(terms.a.shape)}, b {tuple(terms.b.shape)}, "
                         f"C {tuple(terms.C.shape)}; need a (N,), b (N, D), C (N, D, D)")
    if N < 2:
        raise ValueError(f"need N >= 2 samples in terms, got {N}")
    return N, D


def _moments(sampler: Sampler, D: int):
    """(isotropic, s, m, S): scalar s, m for isotropic samplers, covariance S (float64 tensor) otherwise."""
    if not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be a lib.sampling.Sampler (see make_sampler), got {type(sampler).__name__}")
    S = torch.as_tensor(sampler.covariance(D), dtype=torch.float64)  # validates D (curvature)
    if sampler.isotropic:
        return True, float(sampler.s(D)), float(sampler.m(D)), S
    return False, None, None, S


# ----------------------------------------------------------------------------------------------- closed forms
def _differences(terms: PerSampleTerms):
    da = loss_differences(terms.a.detach().cpu())                               # (K,)
    db = loss_differences(terms.b.detach().cpu().T)                             # (D, K)
    dC = loss_differences(terms.C.detach().cpu().permute(1, 2, 0))              # (D, D, K)
    return da, db, dC


def delta_quadratic(terms: PerSampleTerms, sampler: Sampler) -> QuadraticCurve:
    """Exact E_theta[(da_k + db_k.theta + 1/2 theta^T dC_k theta)^2] for k = 1..N-1 (and its parts)."""
    N, D = _check_terms(terms)
    iso, s, m, S = _moments(sampler, D)
    da, db, dC = _differences(terms)
    dC = 0.5 * (dC + dC.transpose(0, 1))
    if iso:
        tr = torch.einsum("aak->k", dC)
        tr2 = (dC * dC).sum(dim=(0, 1))
        grad = s * (db * db).sum(0)
        cross = s * da * tr
        curv = 0.25 * m * (2 * tr2 + tr * tr)
    else:
        M = torch.einsum("abk,bc->ack", dC, S)                                 # dC S
        tr = torch.einsum("aak->k", M)
        tr2 = torch.einsum("abk,bak->k", M, M)
        grad = torch.einsum("ak,ab,bk->k", db, S, db)
        cross = da * tr
        curv = 0.25 * (2 * tr2 + tr * tr)
    d0sq = da * da
    Q = d0sq + grad + cross + curv
    return QuadraticCurve(k=np.arange(1, N), Q=Q.numpy(), centred=(grad + curv).numpy(), d0sq=d0sq.numpy(),
                          grad_part=grad.numpy(), cross_part=cross.numpy(), curv_part=curv.numpy(),
                          sampler=sampler.name, meta={"sampler_params": sampler.params(), "D": D, "N": N})


def delta_theorem1(terms: PerSampleTerms, sigma: float) -> np.ndarray:
    """Original paper's Theorem 1: T_k = sigma^4/4 (2 sum_d (dC_k)_dd^2 + (sum_d (dC_k)_dd)^2), k = 1..N-1."""
    _check_terms(terms)
    sig = check_positive("sigma", sigma)
    dC = loss_differences(terms.C.detach().cpu().permute(1, 2, 0))
    diag = torch.diagonal(dC, dim1=0, dim2=1)                                   # (K, D)
    return (sig ** 4 / 4.0 * (2 * (diag * diag).sum(-1) + diag.sum(-1) ** 2)).numpy()


def variance_quadratic(terms: PerSampleTerms, sampler: Sampler) -> VarianceParts:
    """V-bar of the quadratic model with its parts (see ``VarianceParts``)."""
    N, D = _check_terms(terms)
    iso, s, m, S = _moments(sampler, D)
    a = terms.a.detach().cpu().to(torch.float64)
    b = terms.b.detach().cpu().to(torch.float64)
    C = terms.C.detach().cpu().to(torch.float64)
    C = 0.5 * (C + C.transpose(1, 2))
    alpha = a - a.mean()
    beta = b - b.mean(0)
    G = C - C.mean(0)
    V0 = float((alpha * alpha).mean())
    if iso:
        tr = torch.einsum("iaa->i", G)
        V2 = float((beta * beta).sum(1).mean())
        X = float((alpha * tr).mean())
        V4 = float(0.25 * (2 * (G * G).sum((1, 2)) + tr * tr).mean())
        grad, cross, curv = s * V2, s * X, m * V4
        s_out, m_out = s, m
    else:
        M = torch.einsum("iab,bc->iac", G, S)
        tr = torch.einsum("iaa->i", M)
        tr2 = torch.einsum("iab,iba->i", M, M)
        grad = float(torch.einsum("ia,ab,ib->i", beta, S, beta).mean())
        cross = float((alpha * tr).mean())
        curv = float(0.25 * (2 * tr2 + tr * tr).mean())
        V2 = V4 = float("nan")
        s_out, m_out = S.diagonal().numpy(), None
    return VarianceParts(vbar=V0 + grad + cross + curv, V0=V0, grad_part=grad, cross_part=cross, curv_part=curv,
                         V2=V2, V4=V4, s=s_out, m=m_out, sampler=sampler.name)


def quadratic_losses(terms: PerSampleTerms, thetas: torch.Tensor) -> torch.Tensor:
    """Per-sample losses of the quadratic model a_i + b_i.theta + 1/2 theta^T C_i theta, shape (T, N), float64."""
    _check_terms(terms)
    th = torch.as_tensor(thetas, dtype=torch.float64)
    if th.dim() == 1:
        th = th.unsqueeze(0)
    if th.shape[1] != terms.D:
        raise ValueError(f"thetas must have shape (T, D={terms.D}); got {tuple(th.shape)}")
    a = terms.a.detach().cpu().double()
    b = terms.b.detach().cpu().double()
    C = terms.C.detach().cpu().double()
    return a + th @ b.T + 0.5 * torch.einsum("ta,iab,tb->ti", th, C, th)
