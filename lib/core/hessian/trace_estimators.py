"""Variance-reduced estimators of tr(H) next to Hutchinson's ``trace``: Hutch++ (a sketched subspace taken exactly,
Hutchinson on the rest) and deflation by top-k eigenpairs already computed.

Both split tr(H) = tr(B^T H B) + tr(P H P) for an orthonormal basis B (n, r) and P = I - B B^T (exact for any such
B: tr(P H B B^T) = 0), take the first term exactly and the second by Hutchinson with projected probes P z. When B
holds H's dominant directions the remainder's variance 2 ||P H P||_F^2 (Gaussian probes) is far below
Hutchinson's 2 ||H||_F^2, so a decaying spectrum reaches a given error with far fewer products.

* ``hutchpp`` (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: optimal stochastic trace estimation"): a budget of
  m products, split 1/3-1/3-1/3: s = m // 3 products H S for seeded probes S, Q = orth(H S) (Householder QR, so
  orthonormal even when H S is rank deficient), s products H Q for tr(Q^T H Q), and the remaining m - 2s probes
  on P H P. Unbiased whatever Q is, since the probes are drawn independently of it.
* ``deflated_trace``: B = the k eigenvectors of a ``top_eigenpairs`` result (no new products), tr(B^T H B) = the sum
  of its k eigenvalues (Rayleigh-Ritz values, so exact for orthonormal B even when the pairs are not converged;
  values given from elsewhere must be Rayleigh quotients of the vectors), and ``n_probes`` products on P H P.

Memory: the basis (n_params x r, in the operator's dtype), plus H S for Hutch++.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from lib.core.checks import ParameterError, check_choice, check_int, check_positive
from lib.core.hessian.products import ProductOperator
from lib.core.hessian.results import Eigenpairs, TraceEstimate
from lib.core.hessian.solvers import PROBES, check_operator, probe_vector, trace

#: rows of the eigenvectors given to ``deflated_trace`` must be orthonormal to this (max |V V^T - I|)
ORTHONORMAL_TOL = 1e-4
#: the estimators ``estimate_trace`` dispatches to, by name (the spectrum stage's ``trace_estimator``)
TRACE_ESTIMATORS = ("deflated", "hutchinson", "hutchpp")


def projected_samples(op: ProductOperator, basis: torch.Tensor, n_probes: int, gen: torch.Generator,
                      kind: str) -> np.ndarray:
    """z^T H z for z = (I - B B^T) g, g the next ``n_probes`` probes of ``gen`` (``basis`` B: (n, r) orthonormal
    columns, r may be 0); one product each, float64 samples."""
    samples = np.empty(n_probes)
    for i in range(n_probes):
        z = probe_vector(op, gen, kind)
        if basis.shape[1]:
            z = z - basis @ (basis.T @ z)
        samples[i] = float(op.hvp(z).double() @ z.double())
    return samples


def _estimate(method: str, exact: float, rank: int, samples: np.ndarray, op: ProductOperator, count0: int,
              t0: float) -> TraceEstimate:
    n = len(samples)
    return TraceEstimate(estimate=exact + float(samples.mean()), stderr=float(samples.std(ddof=1) / np.sqrt(n)),
                         n_probes=n, samples=samples, hvp_count=op.hvp_count - count0,
                         seconds=time.perf_counter() - t0, method=method, exact_part=exact, rank=rank)


def hutchpp(op: ProductOperator, n_products: int = 99, probe: str = "rademacher", seed: int = 0) -> TraceEstimate:
    """Hutch++ estimate of tr(H) from a budget of ``n_products`` products (>= 4), split 1/3-1/3-1/3: a sketch of
    s = n_products // 3 seeded probes (Rademacher, or ``probe="gaussian"``), Q = orth(H S), tr(Q^T H Q) from s
    products, and Hutchinson with the remaining n_products - 2s probes projected off Q.

    ``estimate`` = tr(Q^T H Q) + mean of the remainder's samples; ``stderr`` = the remainder's std(ddof=1) /
    sqrt(n_probes) (tr(Q^T H Q) adds no variance given Q, and the remainder is unbiased given Q, so this estimates
    the whole estimator's spread); ``exact_part`` = tr(Q^T H Q), ``rank`` = Q's columns. ``hvp_count`` = products
    made (n_products, fewer only when s > n_params: Q then spans the whole space and the remainder is 0).
    """
    op = check_operator(op)
    n_products = check_int("n_products", n_products, 4)
    probe = check_choice("probe", probe, PROBES)
    count0, t0 = op.hvp_count, time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    sketch = n_products // 3
    hs = torch.stack([op.hvp(probe_vector(op, gen, probe)) for _ in range(sketch)], dim=1)   # (n, s)
    q, _ = torch.linalg.qr(hs)                                                                  # (n, min(n, s))
    del hs
    exact = float(sum(float(op.hvp(q[:, j]).double() @ q[:, j].double()) for j in range(q.shape[1])))
    samples = projected_samples(op, q, n_products - 2 * sketch, gen, probe)
    return _estimate("hutch++", exact, q.shape[1], samples, op, count0, t0)


def _eigenpairs(op: ProductOperator, eigenpairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (k,) float64, vectors (k, n) in op's dtype/device) from an ``Eigenpairs`` or a pair, checked."""
    allowed = ("an Eigenpairs from top_eigenpairs(op, k) or a pair (eigenvalues (k,), eigenvectors (k, n_params="
               f"{op.n_params})) with orthonormal rows")
    if isinstance(eigenpairs, Eigenpairs):
        values, vectors = eigenpairs.eigenvalues, eigenpairs.eigenvectors
    elif isinstance(eigenpairs, (tuple, list)) and len(eigenpairs) == 2:
        values, vectors = eigenpairs
    else:
        raise ParameterError("eigenpairs", type(eigenpairs).__name__, allowed)
    values = torch.as_tensor(values).double().reshape(-1).cpu()
    vectors = torch.as_tensor(vectors)
    if vectors.ndim == 1:
        vectors = vectors[None]
    shape = tuple(vectors.shape)
    if (vectors.ndim != 2 or shape[1] != op.n_params or shape[0] != len(values) or not len(values)
            or shape[0] > op.n_params):
        raise ParameterError("eigenpairs", f"eigenvalues of shape ({len(values)},), eigenvectors of shape {shape}",
                             allowed, hint="pass the eigenvectors as rows, one per eigenvalue")
    vectors = vectors.to(device=op.device, dtype=op.dtype)
    if not (torch.isfinite(values).all() and torch.isfinite(vectors).all()):
        raise ParameterError("eigenpairs", "values or vectors with NaN or inf", allowed)
    gram = vectors.double() @ vectors.double().T
    error = float((gram - torch.eye(len(values), dtype=torch.float64, device=gram.device)).abs().max())
    if error > ORTHONORMAL_TOL:
        raise ParameterError("eigenpairs", f"eigenvectors with max |V V^T - I| = {error:.2e}", allowed,
                             hint=f"orthonormalise them (<= {ORTHONORMAL_TOL:g}), e.g. pass the rows of "
                                  "top_eigenpairs' result as returned")
    return values, vectors


def deflated_trace(op: ProductOperator, eigenpairs, n_probes: int = 100, probe: str = "rademacher",
                   seed: int = 0) -> TraceEstimate:
    """tr(H) = sum of the k given eigenvalues + Hutchinson on (I - V V^T) H (I - V V^T) from ``n_probes`` seeded
    probes (Rademacher, or ``probe="gaussian"``) projected off the eigenvectors V.

    ``eigenpairs``: the ``Eigenpairs`` of ``top_eigenpairs(op, k)`` (reused: no product is spent on them), or a
    pair (eigenvalues (k,), eigenvectors (k, n_params)) with orthonormal rows (to ``ORTHONORMAL_TOL``) whose
    eigenvalues are the vectors' Rayleigh quotients. ``exact_part`` = their sum, ``rank`` = k, ``stderr`` = the
    remainder's std(ddof=1) / sqrt(n_probes), ``hvp_count`` = n_probes. With k = n_params the remainder is 0 and
    the estimate is the exact trace.
    """
    op = check_operator(op)
    values, vectors = _eigenpairs(op, eigenpairs)
    n_probes = check_int("n_probes", n_probes, 2)
    probe = check_choice("probe", probe, PROBES)
    count0, t0 = op.hvp_count, time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    samples = projected_samples(op, vectors.T, n_probes, gen, probe)
    return _estimate("deflated", float(values.sum()), len(values), samples, op, count0, t0)


def error_per_product(estimates: list[TraceEstimate]) -> float:
    """Empirical standard deviation (ddof=1) of the estimates over seeds x sqrt(their products): the spread one
    product would give, the number that compares estimators at equal cost (Hutchinson: the per-probe std)."""
    if len(estimates) < 2:
        raise ParameterError("estimates", len(estimates), "at least 2 TraceEstimates (one per seed)")
    products = {e.hvp_count for e in estimates}
    if len(products) != 1:
        raise ParameterError("estimates", f"product counts {sorted(products)}", "estimates of equal products")
    spread = float(np.std([e.estimate for e in estimates], ddof=1))
    return spread * float(np.sqrt(check_positive("products", products.pop())))


def estimate_trace(op: ProductOperator, estimator: str, n_products: int, eigenpairs=None,
                   seed: int = 0) -> TraceEstimate:
    """tr(H) by the named estimator (``TRACE_ESTIMATORS``), each spending ``n_products`` products: "hutchinson"
    (``solvers.trace``, n_products probes), "hutchpp" (``hutchpp``) or "deflated" (``deflated_trace`` on the given
    ``eigenpairs``, which cost nothing more; n_products probes)."""
    estimator = check_choice("estimator", estimator, TRACE_ESTIMATORS)
    if estimator == "hutchinson":
        return trace(op, n_probes=n_products, seed=seed)
    if estimator == "hutchpp":
        return hutchpp(op, n_products=n_products, seed=seed)
    if eigenpairs is None:
        raise ParameterError("eigenpairs", None, "the top_eigenpairs result to deflate by (estimator='deflated')",
                             hint="pass eigenpairs=top_eigenpairs(op, k) or choose estimator='hutchinson'")
    return deflated_trace(op, eigenpairs, n_probes=n_products, seed=seed)
