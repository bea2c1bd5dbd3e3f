"""What the Hessian solvers return (eigenpairs, smallest eigenpair, trace estimate, spectral density), and the
Gaussian smoothing that turns quadrature nodes and weights into a density."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Eigenpairs:
    """Top-k eigenpairs: ``eigenvalues`` (k,) float64, largest algebraic first; ``eigenvectors`` (k, n_params)
    orthonormal rows in the model's dtype/device; ``residuals`` (k,) float64 = ||Hv - lambda v|| / max|lambda|."""
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    hvp_count: int
    seconds: float
    method: str


@dataclass
class SmallestEigenpair:
    """Smallest (algebraic) eigenvalue, its unit eigenvector, the largest eigenvalue lambda_1 (``largest``) and
    the residual ||Hv - lambda v|| / max(|lambda_1|, |lambda|)."""
    value: float
    eigenvector: torch.Tensor
    residual: float
    largest: float
    hvp_count: int
    seconds: float


@dataclass
class TraceEstimate:
    """Estimate of tr(H) = ``exact_part`` + mean of ``samples`` (z^T H z per probe), ``stderr`` = std(ddof=1) /
    sqrt(n_probes). ``method`` "hutchinson" (``exact_part`` 0, ``rank`` 0); "hutch++" and "deflated": ``exact_part``
    is the trace on a ``rank``-dimensional subspace (sketched, or spanned by eigenvectors) and the probes z are
    projected off it, so ``stderr`` is that of the remainder's Hutchinson estimate."""
    estimate: float
    stderr: float
    n_probes: int
    samples: np.ndarray
    hvp_count: int
    seconds: float
    method: str = "hutchinson"
    exact_part: float = 0.0
    rank: int = 0


@dataclass
class Density:
    """Stochastic Lanczos quadrature: ``nodes``/``weights`` (n_runs, n_iter) with weights summing to 1 overall
    (zero-weight padding after a Lanczos breakdown), and the Gaussian-smoothed ``density`` on ``grid``."""
    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma_sq: float
    hvp_count: int
    seconds: float



def smooth_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma_sq: float) -> np.ndarray:
    """sum_j weights_j N(grid; nodes_j, sigma_sq), evaluated in blocks of grid points."""
    nodes, weights = np.ravel(nodes), np.ravel(weights)
    keep = weights > 0
    nodes, weights = nodes[keep], weights[keep]
    out = np.empty(len(grid))
    for start in range(0, len(grid), 1000):
        g = grid[start:start + 1000, None]
        out[start:start + 1000] = np.exp(-(g - nodes) ** 2 / (2 * sigma_sq)) @ weights
    return out / np.sqrt(2 * np.pi * sigma_sq)

