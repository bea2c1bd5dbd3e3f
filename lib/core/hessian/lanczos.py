"""Thick-restart Lanczos (symmetric Krylov-Schur, Stewart 2001; Wu and Simon 2000) for the k largest algebraic
eigenpairs of a ``ProductOperator``, in a memory of m + 1 vectors of the model's dtype.

``top_eigenpairs(op, k, method="thick-restart")`` calls ``thick_restart_lanczos``. Against ARPACK (``method=
"lanczos"``: a float64 workspace of 2k + 5 vectors, its returned vectors and the recorded products of the Ritz step)
it keeps only

* the basis V, m + 1 rows of n_params in ``op.dtype`` (m = ``ncv``, default max(2k + 1, k + 5) capped at n_params),
  allocated once as two blocks: the first k rows become the returned eigenvectors (no copy), the other m + 1 - k
  are freed before the final products;
* the product H v (the operator's output) and blocks of ``BLOCK`` columns (rotations, random vectors, float64 sums).

One step: w = H v_j, then classical Gram-Schmidt against every basis vector twice (coefficients summed in float64,
block by block for a float32 basis), which fills column and row j of the dense projected matrix Hm = V^T H V
(m x m, float64, symmetric), so that H V_j = V_j Hm_j + f e_j^T with f = beta v_{j+1}. When ||w|| falls below
``BREAKDOWN`` eps max||H v|| the Krylov space is invariant: v_{j+1} is a random vector orthogonalised against the
basis, with coupling 0. When the basis is full (j = m), Hm = Y diag(theta) Y^T and the p = k + (m - k) // 2
Ritz vectors of the largest theta replace the basis in place (V[:p] = Y[:, :p]^T V[:m], one column block at a
time), v_{p} = v_{m + 1}, and Hm restarts as diag(theta[:p]) bordered by beta Y[m - 1, :p].

Convergence is ARPACK's: beta |Y[j - 1, i]| <= tol max(eps^(2/3), |theta_i|) for the k largest Ritz values, checked
after every step (once the basis has k vectors; not right after a breakdown, except when the basis is full). Then
the k Ritz vectors are rotated into V[:k] and each gets one fresh product: values are their Rayleigh quotients,
residuals ||H v - lambda v|| / max|lambda| are measured (k more products than ARPACK's Ritz step, which reuses
its recorded products).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lib.core.checks import ParameterError, check_int, check_positive
from lib.core.hessian.products import ProductOperator

#: columns per block of the blockwise operations on n_params-long rows (rotation, random fill, float64 sums)
BLOCK = 2 ** 16
#: ||w|| <= BREAKDOWN * eps(dtype) * max ||H v_j|| after reorthogonalisation: an invariant subspace was reached
BREAKDOWN = 100.0
#: the default ``max_iter`` is max(100, 10 n / m) basis fills, capped at this
MAX_RESTARTS = 1000
EPS23 = float(np.finfo(np.float64).eps) ** (2.0 / 3.0)


@dataclass
class LanczosResult:
    """``values`` (k,) float64 Rayleigh quotients, largest first; ``vectors`` (k, n) rows in the operator's dtype;
    ``residuals`` (k,) float64 ||H v - lambda v|| / max|lambda| (measured); ``ncv`` = m; ``restarts`` = thick
    restarts made (full bases that had not converged); ``breakdowns`` = random continuations after an invariant
    subspace; ``hvp_count`` = products made (the k of the residuals included)."""
    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    ncv: int
    restarts: int
    breakdowns: int
    hvp_count: int


def _blocks(n: int, block: int = BLOCK):
    for start in range(0, n, block):
        yield slice(start, min(n, start + block))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """a . b of two flat vectors, summed in float64 (per block for lower precisions)."""
    if a.dtype == torch.float64:
        return float(a @ b)
    return float(sum(float(a[s] @ b[s]) for s in _blocks(a.numel())))


def _norm(a: torch.Tensor) -> float:
    """||a|| of a flat vector, squares summed in float64 (per block for lower precisions)."""
    if a.dtype == torch.float64:
        return float(torch.linalg.vector_norm(a))
    return math.sqrt(sum(float(torch.linalg.vector_norm(a[s])) ** 2 for s in _blocks(a.numel())))


def _random_fill_(out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``out`` (flat) filled with standard normal float64 draws of ``gen`` cast to its dtype, block by block."""
    for s in _blocks(out.numel()):
        out[s].copy_(torch.randn(s.stop - s.start, generator=gen, dtype=torch.float64))
    return out


class Basis:
    """The m + 1 rows of the Lanczos basis, allocated once in two blocks: ``head`` (the first k rows, which end as
    the eigenvectors) and ``tail`` (the other m + 1 - k, freed by ``release_tail``)."""

    def __init__(self, rows: int, head: int, n: int, dtype: torch.dtype, device):
        self.n, self.dtype, self.device, self.k = n, dtype, device, head
        self.head = torch.empty(head, n, dtype=dtype, device=device)
        self.tail = torch.empty(rows - head, n, dtype=dtype, device=device)

    def row(self, i: int) -> torch.Tensor:
        return self.head[i] if i < self.k else self.tail[i - self.k]

    def parts(self, j: int) -> list[torch.Tensor]:
        """Views of rows [0, j), at most two."""
        out = [self.head[:min(j, self.k)]]
        if j > self.k:
            out.append(self.tail[:j - self.k])
        return out

    def coefficients(self, w: torch.Tensor, j: int) -> torch.Tensor:
        """V[:j] w as float64 (j,) on the device: one gemv per part in float64, else per column block in the
        basis' dtype with the blocks' partial sums added in float64."""
        parts = self.parts(j)
        if self.dtype == torch.float64:
            return torch.cat([p @ w for p in parts])
        c = torch.zeros(j, dtype=torch.float64, device=self.device)
        for s in _blocks(self.n):
            c += torch.cat([p[:, s] @ w[s] for p in parts]).double()
        return c

    def subtract(self, w: torch.Tensor, c: torch.Tensor, j: int) -> None:
        """w -= V[:j]^T c in place (no temporary of length n)."""
        start = 0
        for p in self.parts(j):
            w.addmv_(p.T, c[start:start + len(p)].to(self.dtype), alpha=-1)
            start += len(p)

    def rotate(self, y: np.ndarray) -> None:
        """V[:p] = Y^T V[:j] in place for Y (j, p) float64, one column block at a time (one (p, block) temporary)."""
        j, p = y.shape
        yt = torch.from_numpy(np.ascontiguousarray(y.T)).to(device=self.device, dtype=self.dtype)   # (p, j)
        h = min(j, self.k)
        buf = torch.empty(p, min(BLOCK, self.n), dtype=self.dtype, device=self.device)
        for s in _blocks(self.n):
            out = buf[:, :s.stop - s.start]
            torch.mm(yt[:, :h], self.head[:h, s], out=out)
            if j > self.k:
                out.addmm_(yt[:, h:], self.tail[:j - self.k, s])
            self.head[:min(p, self.k), s] = out[:self.k]
            if p > self.k:
                self.tail[:p - self.k, s] = out[self.k:]

    def release_tail(self) -> None:
        self.tail = None


def default_ncv(k: int, n: int) -> int:
    """max(2k + 1, k + 5) capped at n: ARPACK path's default basis size."""
    return min(n, max(2 * k + 1, k + 5))


def default_max_iter(n: int, ncv: int) -> int:
    return int(min(MAX_RESTARTS, max(100, math.ceil(10 * n / ncv))))


def _ritz(hm: np.ndarray, j: int, beta: float):
    """Ritz values (descending), vectors (columns) of Hm[:j, :j] and their residual estimates beta |Y[j - 1, i]|."""
    theta, y = np.linalg.eigh(hm[:j, :j])
    theta, y = theta[::-1].copy(), y[:, ::-1].copy()
    return theta, y, abs(beta) * np.abs(y[j - 1])


def _converged(theta: np.ndarray, est: np.ndarray, k: int, tol: float) -> bool:
    return bool(np.all(est[:k] <= tol * np.maximum(EPS23, np.abs(theta[:k]))))


def _orthogonalize(basis: Basis, w: torch.Tensor, j: int) -> np.ndarray:
    """w minus its components on V[:j], classical Gram-Schmidt twice; the summed coefficients (float64)."""
    c = basis.coefficients(w, j)
    basis.subtract(w, c, j)
    c2 = basis.coefficients(w, j)
    basis.subtract(w, c2, j)
    return (c + c2).cpu().numpy()


def _permute_rows_(x: torch.Tensor, perm: list[int]) -> None:
    """x[i] = x[perm[i]] for every i, in place (one temporary row per cycle of the permutation)."""
    done = [False] * len(perm)
    for i in range(len(perm)):
        if done[i] or perm[i] == i:
            done[i] = True
            continue
        tmp, j = x[i].clone(), i
        while True:
            done[j] = True
            if perm[j] == i:
                x[j].copy_(tmp)
                break
            x[j].copy_(x[perm[j]])
            j = perm[j]


def thick_restart_lanczos(op: ProductOperator, k: int, tol: float = 1e-4, max_iter: int | None = None,
                          seed: int = 0, ncv: int | None = None) -> LanczosResult:
    """The k largest algebraic eigenpairs of ``op`` by thick-restart Lanczos (the module docstring).

    ``ncv`` = m, the basis size (None: max(2k + 1, k + 5) capped at n_params; k < m <= n_params); ``max_iter`` =
    basis fills (None: max(100, 10 n / m), at most ``MAX_RESTARTS``), RuntimeError if not converged after them;
    ``tol``: ARPACK's relative criterion on the Ritz residual estimates; ``seed``: the start vector, standard
    normal float64 draws of ``torch.Generator().manual_seed(seed)`` (in blocks of ``BLOCK``) cast to op's dtype.
    Memory: m + 1 vectors of op's dtype, the product's output and blocks of ``BLOCK`` columns.
    """
    n = op.n_params
    k = check_int("k", k, 1)
    if k >= n:
        raise ParameterError("k", k, f"an integer smaller than n_params={n}", hint="lower k")
    tol = check_positive("tol", tol)
    m = default_ncv(k, n) if ncv is None else check_int("ncv", ncv, k + 1, n)
    max_iter = default_max_iter(n, m) if max_iter is None else check_int("max_iter", max_iter, 1)
    p_keep = min(max(k + 1, k + (m - k) // 2), m - 1)
    count0 = op.hvp_count
    gen = torch.Generator().manual_seed(int(seed))
    eps = float(torch.finfo(op.dtype).eps)
    with torch.no_grad():
        basis = Basis(m + 1, k, n, op.dtype, op.device)
        v0 = _random_fill_(basis.row(0), gen)
        v0.div_(_norm(v0))
        hm = np.zeros((m, m))
        j, fills, breakdowns, anorm = 0, 0, 0, 0.0
        while True:
            # ---- extend the basis from j to m vectors, checking convergence after each step
            while j < m:
                w = op.hvp(basis.row(j))
                anorm = max(anorm, _norm(w))
                c = _orthogonalize(basis, w, j + 1)
                hm[:j + 1, j] = c
                hm[j, :j + 1] = c
                beta = _norm(w)
                broke = beta <= BREAKDOWN * eps * anorm
                if broke:                 # invariant subspace: go on from a random vector orthogonal to the basis
                    breakdowns += 1
                    _random_fill_(w, gen)
                    _orthogonalize(basis, w, j + 1)
                    torch.div(w, _norm(w), out=basis.row(j + 1))
                    beta = 0.0
                else:
                    torch.div(w, beta, out=basis.row(j + 1))
                del w
                if j + 1 < m:
                    hm[j + 1, j] = hm[j, j + 1] = beta
                j += 1
                if j >= k and (not broke or j == m):
                    theta, y, est = _ritz(hm, j, beta)
                    if _converged(theta, est, k, tol):
                        break
            else:
                # ---- basis full and not converged: keep the p_keep largest Ritz pairs
                fills += 1
                if fills >= max_iter:
                    raise RuntimeError(f"thick-restart Lanczos did not converge to tol={tol} in max_iter={max_iter} "
                                       f"basis fills (ncv={m}); raise max_iter, ncv or tol")
                basis.rotate(y[:, :p_keep])
                basis.row(p_keep).copy_(basis.row(m))
                hm[:] = 0.0
                hm[np.arange(p_keep), np.arange(p_keep)] = theta[:p_keep]
                hm[p_keep, :p_keep] = hm[:p_keep, p_keep] = beta * y[m - 1, :p_keep]
                j = p_keep
                continue
            break
        # ---- converged with a basis of j vectors: the k Ritz vectors into V[:k], then one product each
        basis.rotate(y[:, :k])
        basis.release_tail()
        vectors = basis.head
        values, absolute = np.empty(k), np.empty(k)
        for i in range(k):
            v = vectors[i]
            hv = op.hvp(v)
            values[i] = _dot(hv, v) / _dot(v, v)
            hv.add_(v, alpha=-values[i])
            absolute[i] = _norm(hv)
            del hv
        order = np.argsort(-values, kind="stable")
        if np.any(order != np.arange(k)):
            _permute_rows_(vectors, order.tolist())
            values, absolute = values[order], absolute[order]
        scale = float(np.abs(values).max()) or 1.0
    return LanczosResult(values=torch.from_numpy(values), vectors=vectors,
                         residuals=torch.from_numpy(absolute / scale), ncv=m, restarts=fills, breakdowns=breakdowns,
                         hvp_count=op.hvp_count - count0)
