"""The solvers that take a Hessian operator (``ProductOperator``): top eigenpairs (ARPACK's Lanczos, our
thick-restart Lanczos in O(k) vectors of the model's dtype, or PyHessian's power iteration fixed up), smallest
eigenvalue, Hutchinson trace and stochastic Lanczos quadrature density."""
from __future__ import annotations

import time

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from threadpoolctl import threadpool_limits

from lib.core.checks import ParameterError, check_choice, check_int, check_positive
from lib.core.hessian.lanczos import default_ncv, thick_restart_lanczos
from lib.core.hessian.products import ProductOperator
from lib.core.hessian.pyhessian import power_vectors
from lib.core.hessian.results import Density, Eigenpairs, SmallestEigenpair, TraceEstimate, smooth_density

METHODS = ("lanczos", "power", "thick-restart")
PROBES = ("rademacher", "gaussian")
POWER_MAX_ITER = 1000
#: a Ritz vector is taken from the recorded products only if they reproduce it to this relative accuracy and the
#: combination's coefficients sum (in absolute value) to at most REUSE_MAX_GAIN; otherwise it gets a fresh product
REUSE_TOL = 1e-5
REUSE_MAX_GAIN = 100.0


def check_operator(op) -> ProductOperator:
    if not isinstance(op, ProductOperator):
        raise TypeError("pass a HessianOperator(model, inputs, targets, chunk_size=None), a BatchedHessianOperator "
                        f"or another lib.core.hessian.ProductOperator as the first argument, got {type(op).__name__}")
    return op


# ----------------------------------------------------------------------------------------------- eigenpairs
def _products(op: ProductOperator, q: torch.Tensor) -> torch.Tensor:
    """H q for the orthonormal columns of q (n, k), float64: from the products recorded during the solver
    where they reproduce a column (linearity: q = X^T c gives H q = (HX)^T c), else a fresh product."""
    hq = torch.empty_like(q)
    fresh = list(range(q.shape[1]))
    rec = op.records()
    if rec is not None:
        X, HX = rec[0].double(), rec[1].double()                       # (m, n)
        coef = torch.linalg.lstsq(X.T.cpu(), q.cpu(), driver="gelsd").solution.to(q.device)   # (m, k)
        recon = torch.linalg.norm(X.T @ coef - q, dim=0)               # columns of q have unit norm
        gain = (coef.abs() * torch.linalg.norm(X, dim=1)[:, None]).sum(0)   # error amplification of the sum
        ok = (recon <= REUSE_TOL) & (gain <= REUSE_MAX_GAIN)
        if ok.any():
            hq[:, ok] = HX.T @ coef[:, ok]
        fresh = [j for j in range(q.shape[1]) if not bool(ok[j])]
    for j in fresh:
        hq[:, j] = op.hvp(q[:, j]).double()
    return hq


def _ritz(op: ProductOperator, vectors: torch.Tensor, scale: float | None = None):
    """Rayleigh-Ritz on span(vectors): (values desc, rows, residuals), all float64. H is applied to the span
    through the solver's recorded products where they reproduce it (``_products``), else by fresh products."""
    q, _ = torch.linalg.qr(vectors.double().T)                        # (n, k) orthonormal columns
    hq = _products(op, q)                                              # (n, k)
    m = q.T @ hq
    values, s = torch.linalg.eigh((m + m.T) / 2)
    values, s = values.flip(0), s.flip(1)
    vecs, hvecs = q @ s, hq @ s
    if scale is None:
        scale = float(values.abs().max())
    scale = scale if scale > 0 else 1.0
    residuals = torch.linalg.norm(hvecs - vecs * values, dim=0) / scale
    return values.cpu(), vecs.T.contiguous(), residuals.cpu()


def _eigsh(op: ProductOperator, k: int, tol: float, max_iter, seed: int, ncv, shift=None):
    """ARPACK largest-algebraic eigenvectors of H (or shift*I - H) as (k, n) rows in op's dtype.

    Runs with one BLAS thread (``threadpoolctl``, restored after): ARPACK's OpenBLAS threads otherwise keep
    spinning between calls and took the cores from torch, doubling the cost of each product on 2 cores."""
    v0 = np.random.RandomState(seed).standard_normal(op.n_params)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            _, vecs = eigsh(op.linear_operator(shift), k=k, which="LA", tol=tol, maxiter=max_iter, v0=v0, ncv=ncv)
    except ArpackNoConvergence as err:
        raise RuntimeError(f"Lanczos (eigsh) did not converge to tol={tol} in max_iter={max_iter} restarts; "
                           "raise max_iter or tol") from err
    return torch.from_numpy(vecs.T.copy()).to(device=op.device, dtype=op.dtype)


def top_eigenpairs(op: ProductOperator, k: int, method: str = "lanczos", tol: float = 1e-4,
                   max_iter: int | None = None, seed: int = 0, ncv: int | None = None) -> Eigenpairs:
    """Top-k eigenpairs of the operator's Hessian, largest algebraic eigenvalue first.

    ``method="lanczos"``: eigsh(which="LA") with ARPACK's criterion ||r|| <= tol |lambda|; ``max_iter`` = restarts
    (None: scipy's default), ``ncv`` = Lanczos basis size (None: max(2k + 1, k + 5); scipy's default 20 would
    spend 20 products on k = 1).
    ``method="thick-restart"``: our thick-restart (Krylov-Schur) Lanczos (``lib.core.hessian.lanczos``), the same
    criterion, ``ncv`` and ``seed`` meaning (another start vector: torch's generator, not numpy's), ``max_iter`` =
    basis fills (None: max(100, 10 n / ncv), at most 1000). For large models: its memory is ncv + 1 vectors of the
    model's dtype (float32 for a float32 model) plus the product and one work vector, where ARPACK holds 2k + 5
    float64 vectors, its returned vectors and the recorded products of its Ritz step (94.6 float64 vectors on the
    11.4M MLP at k = 10). Costs about k more products than ARPACK (one per returned vector, for the residuals).
    ``method="power"``: PyHessian's power iteration with deflation (``lib.core.hessian.pyhessian.power_vectors``:
    its own loop on ``op.hvp``), ``tol`` its relative eigenvalue-change rule
    (the eigenvalue settles faster than the vector: residual 1e-3 took tol 1e-4 to 1e-6 on mlp2),
    ``max_iter`` iterations per pair (None: 1000); it returns the k largest-|lambda| pairs (sorted algebraically).
    "lanczos" and "power" finish with Rayleigh-Ritz and residuals from H applied to the k vectors: Lanczos takes
    H v from its own recorded products where they reproduce v (linearity; no new products), power iteration spends
    k fresh products. "thick-restart" spends k fresh products on its k Ritz vectors, one at a time: eigenvalues are
    their Rayleigh quotients, residuals measured. ``hvp_count`` = products made by this call.
    """
    op = check_operator(op)
    method = check_choice("method", method, METHODS)
    tol = check_positive("tol", tol)
    k = check_int("k", k, 1)
    if k >= op.n_params:
        raise ParameterError("k", k, f"an integer smaller than n_params={op.n_params}", hint="lower k")
    count0, t0 = op.hvp_count, time.perf_counter()
    if method == "thick-restart":
        res = thick_restart_lanczos(op, k, tol, max_iter, seed, ncv)
        return Eigenpairs(eigenvalues=res.values, eigenvectors=canonical_signs_(res.vectors),
                          residuals=res.residuals, hvp_count=op.hvp_count - count0,
                          seconds=time.perf_counter() - t0, method=method)
    if method == "lanczos":
        ncv = default_ncv(k, op.n_params) if ncv is None else ncv
        with op.recording():
            vectors = _eigsh(op, k, tol, max_iter, seed, ncv)
            values, vecs, residuals = _ritz(op, vectors)
    else:
        iters = POWER_MAX_ITER if max_iter is None else check_int("max_iter", max_iter, 1)
        vectors = power_vectors(op, k, tol, iters, seed)
        values, vecs, residuals = _ritz(op, vectors)
    return Eigenpairs(eigenvalues=values, eigenvectors=canonical_signs(vecs).to(op.dtype), residuals=residuals,
                      hvp_count=op.hvp_count - count0, seconds=time.perf_counter() - t0, method=method)


def canonical_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Each row times the sign that makes its entry of largest magnitude positive.

    An eigenvector's sign is arbitrary: the solver's start vector, thread count or BLAS build can flip it, and a flip
    changes which perturbations w* + P^T theta a Monte-Carlo estimate draws. Fixing it makes downstream numbers
    independent of those accidents (up to ties in the largest magnitude)."""
    idx = vectors.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(torch.gather(vectors, 1, idx))
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def canonical_signs_(vectors: torch.Tensor) -> torch.Tensor:
    """``canonical_signs`` in place, row by row from the row's max and min (no temporary as large as a row);
    returns ``vectors``. Ties in the largest magnitude go, as in ``canonical_signs``, to the first such entry."""
    for row in vectors:
        hi, i_hi = row.max(0)
        lo, i_lo = row.min(0)
        hi, lo = float(hi), float(lo)
        if -lo > hi or (-lo == hi and lo < 0 and int(i_lo) < int(i_hi)):
            row.neg_()
    return vectors


def smallest_eigenvalue(op: ProductOperator, tol: float = 1e-4, max_iter: int | None = None, seed: int = 0,
                        ncv: int | None = None) -> SmallestEigenpair:
    """Smallest algebraic eigenvalue: lambda_1 by eigsh, then the top eigenpair of lambda_1 I - H.

    The shift makes ARPACK's stopping rule relative to lambda_1 - lambda_min (not to a possibly tiny
    |lambda_min|), so ``residual`` = ||Hv - lambda v|| / max(|lambda_1|, |lambda|) is about ``tol`` or below.
    ``hvp_count`` = products made by this call.
    """
    op = check_operator(op)
    tol = check_positive("tol", tol)
    count0, t0 = op.hvp_count, time.perf_counter()
    with op.recording():
        top, _, _ = _ritz(op, _eigsh(op, 1, tol, max_iter, seed, ncv))
        lam1 = float(top[0])
        vector = _eigsh(op, 1, tol, max_iter, seed + 1, ncv, shift=lam1)
        value, vec, absolute = _ritz(op, vector, scale=1.0)
    value = float(value[0])
    residual = float(absolute[0]) / (max(abs(lam1), abs(value)) or 1.0)
    return SmallestEigenpair(value=value, eigenvector=vec[0].to(op.dtype), residual=residual, largest=lam1,
                             hvp_count=op.hvp_count - count0, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- trace
def probe_vector(op: ProductOperator, gen: torch.Generator, kind: str) -> torch.Tensor:
    """Rademacher (+-1) or standard Gaussian vector from ``gen`` (CPU), in op's dtype/device."""
    if kind == "rademacher":
        z = torch.randint(0, 2, (op.n_params,), generator=gen, dtype=torch.float64) * 2 - 1
    else:
        z = torch.randn(op.n_params, generator=gen, dtype=torch.float64)
    return z.to(device=op.device, dtype=op.dtype)


def trace(op: ProductOperator, n_probes: int = 100, probe: str = "rademacher", seed: int = 0) -> TraceEstimate:
    """Hutchinson estimate of tr(H) from ``n_probes`` seeded probes z (Rademacher, or ``probe="gaussian"``):
    mean of z^T H z, with its standard error std(ddof=1) / sqrt(n_probes). ``hvp_count`` = n_probes."""
    op = check_operator(op)
    n_probes = check_int("n_probes", n_probes, 2)
    probe = check_choice("probe", probe, PROBES)
    count0, t0 = op.hvp_count, time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    samples = np.empty(n_probes)
    for i in range(n_probes):
        z = probe_vector(op, gen, probe)
        samples[i] = float(op.hvp(z).double() @ z.double())
    return TraceEstimate(estimate=float(samples.mean()), stderr=float(samples.std(ddof=1) / np.sqrt(n_probes)),
                         n_probes=n_probes, samples=samples, hvp_count=op.hvp_count - count0,
                         seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- density
def lanczos_tridiagonal(op: ProductOperator, start: torch.Tensor, n_iter: int):
    """Lanczos with full (twice repeated Gram-Schmidt) reorthogonalisation from ``start``.

    Returns (alphas, betas) as float64 numpy arrays of lengths m and m - 1, m <= n_iter (m < n_iter only when
    an invariant subspace is reached: beta <= 1000 eps max|T|).
    """
    eps = torch.finfo(op.dtype).eps
    basis = torch.zeros(n_iter, op.n_params, dtype=op.dtype, device=op.device)
    q = start / torch.linalg.norm(start)
    alphas, betas = [], []
    for j in range(n_iter):
        basis[j] = q
        w = op.hvp(q)
        alphas.append(float(w.double() @ q.double()))
        for _ in range(2):
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        if j == n_iter - 1:
            break
        beta = float(torch.linalg.norm(w))
        if beta <= 1e3 * eps * max(max(abs(a) for a in alphas), max(betas, default=0.0)):
            break
        betas.append(beta)
        q = w / beta
    return np.array(alphas), np.array(betas)


def _gauss_quadrature(alphas: np.ndarray, betas: np.ndarray):
    """Nodes (Ritz values, ascending) and weights (squared first components of the Ritz vectors) of the
    symmetric tridiagonal with diagonal ``alphas`` and off-diagonal ``betas``."""
    nodes, vecs = eigh_tridiagonal(alphas, betas)
    return nodes, vecs[0] ** 2



def density(op: ProductOperator, n_runs: int = 1, n_iter: int = 100, seed: int = 0, grid=None,
            sigma_sq: float | None = None, probe: str = "rademacher", n_grid: int = 10000) -> Density:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019, as in PyHessian).

    Per run: a seeded probe (Rademacher or Gaussian), normalised; ``n_iter`` Lanczos steps with full
    reorthogonalisation; nodes = Ritz values, weights = squared first Ritz-vector components / n_runs
    (``scipy.linalg.eigh_tridiagonal``). sum(weights * nodes) estimates tr(H)/n_params and
    sum(weights * nodes**2) estimates tr(H^2)/n_params.
    ``sigma_sq`` defaults to PyHessian's 1e-5 * max(1, spectral range); ``grid`` defaults to ``n_grid`` points
    covering all nodes +- (0.01 + 5 sigma), so the smoothed density integrates to ~1 (it is not renormalised).
    ``hvp_count`` = products made by this call (n_runs * n_iter unless a run stops early).
    """
    op = check_operator(op)
    n_runs = check_int("n_runs", n_runs, 1)
    n_iter = check_int("n_iter", n_iter, 1)
    probe = check_choice("probe", probe, PROBES)
    if n_iter > op.n_params:
        raise ParameterError("n_iter", n_iter, f"an integer in [1, n_params={op.n_params}]", hint="lower n_iter")
    if sigma_sq is not None:
        sigma_sq = check_positive("sigma_sq", sigma_sq)
    count0, t0 = op.hvp_count, time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    nodes = np.empty((n_runs, n_iter))
    weights = np.zeros((n_runs, n_iter))
    for r in range(n_runs):
        alphas, betas = lanczos_tridiagonal(op, probe_vector(op, gen, probe), n_iter)
        x, w = _gauss_quadrature(alphas, betas)
        nodes[r, :len(x)], nodes[r, len(x):] = x, x[-1]
        weights[r, :len(x)] = w / n_runs
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma_sq is None:
        sigma_sq = 1e-5 * max(1.0, hi - lo)
    if grid is None:
        pad = 0.01 + 5 * np.sqrt(sigma_sq)
        grid = np.linspace(lo - pad, hi + pad, check_int("n_grid", n_grid, 2))
    grid = np.asarray(grid, dtype=np.float64)
    return Density(nodes=nodes, weights=weights, grid=grid, density=smooth_density(nodes, weights, grid, sigma_sq),
                   sigma_sq=float(sigma_sq), hvp_count=op.hvp_count - count0, seconds=time.perf_counter() - t0)
