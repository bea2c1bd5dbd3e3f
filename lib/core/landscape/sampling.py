"""Sampling distributions p(theta) on R^D, their estimators and exact quadrature rules (docs/specification.md 3).

All distributions are symmetric (odd moments vanish). ``s`` is the per-coordinate second moment E[theta_d^2];
isotropic distributions have fourth moments E[theta_a theta_b theta_c theta_d] = m (d_ab d_cd + d_ac d_bd + d_ad d_bc).

================  =================================  ==================  =====================
name              distribution                       s                   m
================  =================================  ==================  =====================
``gaussian``      N(0, sigma^2 I)                    sigma^2             sigma^4
``ball``          uniform in ball, r = sigma sqrt(D+2)  sigma^2          sigma^4 (D+2)/(D+4)
``sphere``        uniform on sphere, r = sigma sqrt(D)  sigma^2          sigma^4 D/(D+2)
``curvature``     N(0, diag(s_d)), s_d = 2 eps/(D lambda_d)  s_d (vector)  not isotropic (Gaussian:
                                                                          E[q^4] from the covariance)
================  =================================  ==================  =====================

Estimators of the same expectation (``sample(n, D, estimator=...)``):

* ``"plain"``: i.i.d. draws (torch.Generator seeded from ``seed``).
* ``"antithetic"``: n/2 i.i.d. draws theta_j, returned as consecutive pairs (theta_j, -theta_j) (rows 2j, 2j+1);
  a standard error must treat each pair's average as one i.i.d. unit.
* ``"sobol"``: scrambled Sobol points (``scipy.stats.qmc.Sobol``), mapped through the inverse normal CDF
  (sphere: normalised Gaussian directions; ball: direction x radius U^(1/D), U an extra Sobol coordinate);
  the n rows are ``n_replicates`` consecutive blocks of n/n_replicates points, each block an independently
  scrambled sequence, so a standard error is computed across blocks.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss
from scipy import stats
from scipy.stats import qmc

from lib.core.checks import check_choice, check_int, check_positive

__all__ = [
    "ESTIMATORS",
    "SAMPLERS",
    "DEFAULT_SOBOL_REPLICATES",
    "Sampler",
    "Gaussian",
    "Ball",
    "Sphere",
    "Curvature",
    "make_sampler",
    "estimator_units",
    "quadrature",
]

ESTIMATORS = ("plain", "antithetic", "sobol")
DEFAULT_SOBOL_REPLICATES = 8
_UNIT_CLIP = 1e-12  # keeps Sobol coordinates strictly inside (0, 1) before the inverse CDF


def estimator_units(n: int, estimator: str, n_replicates: int = DEFAULT_SOBOL_REPLICATES) -> int:
    """Number of consecutive rows that form one i.i.d. unit for the standard error of ``estimator``."""
    check_choice("estimator", estimator, ESTIMATORS)
    if estimator == "plain":
        return 1
    if estimator == "antithetic":
        return 2
    return n // n_replicates


def _sobol_uniform(n: int, dim: int, seed: int, n_replicates: int) -> np.ndarray:
    """(n, dim) array: n_replicates consecutive blocks of independently scrambled Sobol points in (0, 1)."""
    per = n // n_replicates
    children = np.random.SeedSequence(int(seed)).spawn(n_replicates)
    blocks = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # balance warning for non powers of two
        for ss in children:
            eng = qmc.Sobol(d=dim, scramble=True, seed=np.random.default_rng(ss))
            blocks.append(eng.random(per))
    u = np.concatenate(blocks, axis=0)
    return np.clip(u, _UNIT_CLIP, 1.0 - _UNIT_CLIP)


class Sampler:
    """Base class: symmetric distribution on R^D with second moment ``s(D)`` and fourth moment ``m(D)``."""

    name: str = "sampler"
    isotropic: bool = True

    # ---- moments -----------------------------------------------------------------------------------------
    def s(self, D: int) -> float:
        """Per-coordinate second moment E[theta_d^2]."""
        raise NotImplementedError

    def m(self, D: int) -> float:
        """Isotropic fourth moment m: E[theta_a theta_b theta_c theta_d] = m (d_ab d_cd + d_ac d_bd + d_ad d_bc)."""
        raise NotImplementedError

    def covariance(self, D: int) -> np.ndarray:
        """Covariance matrix E[theta theta^T] (D x D, float64)."""
        return self.s(D) * np.eye(self._check_D(D))

    def fourth_moment_tensor(self, D: int) -> np.ndarray:
        """Explicit (D, D, D, D) tensor E[theta_a theta_b theta_c theta_d] (for tests and small D)."""
        D = self._check_D(D)
        e = np.eye(D)
        return self.m(D) * (np.einsum("ab,cd->abcd", e, e) + np.einsum("ac,bd->abcd", e, e)
                            + np.einsum("ad,bc->abcd", e, e))

    def _check_D(self, D) -> int:
        return check_int("D", D)

    # ---- sampling ----------------------------------------------------------------------------------------
    def sample(self, n: int, D: int, estimator: str = "plain", seed: int = 0,
               n_replicates: int = DEFAULT_SOBOL_REPLICATES) -> torch.Tensor:
        """Draw an (n, D) float64 tensor of thetas with the given estimator (see module docstring).

        ``n_replicates`` (Sobol only): number of independent scramblings; n must be a multiple of it.
        """
        n = check_int("n", n)
        D = self._check_D(D)
        check_choice("estimator", estimator, ESTIMATORS)
        seed = int(seed)
        if estimator == "plain":
            return self._from_normal(self._normal(n, D + 1, seed), D)
        if estimator == "antithetic":
            if n % 2:
                raise ValueError(f"antithetic sampling needs an even n (pairs theta, -theta); got n={n}")
            half = self._from_normal(self._normal(n // 2, D + 1, seed), D)
            out = torch.empty(n, D, dtype=torch.float64)
            out[0::2] = half
            out[1::2] = -half
            return out
        n_replicates = check_int("n_replicates", n_replicates, 2)
        if n % n_replicates:
            raise ValueError(f"sobol sampling needs n to be a multiple of n_replicates={n_replicates} "
                             f"(independent scramblings); got n={n}")
        u = _sobol_uniform(n, self._sobol_dim(D), seed, n_replicates)
        return self._from_uniform(u, D)

    @staticmethod
    def _normal(n: int, cols: int, seed: int) -> torch.Tensor:
        """(n, cols) standard normals; the last column is turned into a uniform by the ball sampler."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, cols, generator=g, dtype=torch.float64)

    def _sobol_dim(self, D: int) -> int:
        return D

    def _from_normal(self, z: torch.Tensor, D: int) -> torch.Tensor:
        """Map (n, D+1) standard normals to samples (the extra column is available for a radius)."""
        raise NotImplementedError

    def _from_uniform(self, u: np.ndarray, D: int) -> torch.Tensor:
        """Map (n, sobol_dim) uniforms (QMC) to samples."""
        z = torch.from_numpy(stats.norm.ppf(u[:, :D]))
        extra = torch.from_numpy(u[:, D:]) if u.shape[1] > D else None
        return self._map_qmc(z, extra, D)

    def _map_qmc(self, z: torch.Tensor, extra: torch.Tensor | None, D: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"

    def params(self) -> dict:
        return {}


def _unit_rows(z: torch.Tensor) -> torch.Tensor:
    """Rows of ``z`` scaled to unit length (directions for the sphere and ball samplers)."""
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)


class _ScaleSampler(Sampler):
    """An isotropic sampler with one scale parameter sigma (second moment s = sigma^2 per coordinate)."""

    def __init__(self, sigma: float):
        self.sigma = check_positive("sigma", sigma)

    def params(self):
        return {"sigma": self.sigma}

    def s(self, D: int) -> float:
        self._check_D(D)
        return self.sigma ** 2


class Gaussian(_ScaleSampler):
    """N(0, sigma^2 I): s = sigma^2, m = sigma^4."""

    name = "gaussian"

    def s(self, D: int = 1) -> float:
        return self.sigma ** 2

    def m(self, D: int = 1) -> float:
        return self.sigma ** 4

    def _from_normal(self, z, D):
        return self.sigma * z[:, :D]

    def _map_qmc(self, z, extra, D):
        return self.sigma * z


class Sphere(_ScaleSampler):
    """Uniform on the sphere of radius sigma sqrt(D): s = sigma^2, m = sigma^4 D/(D+2)."""

    name = "sphere"

    def radius(self, D: int) -> float:
        return self.sigma * math.sqrt(self._check_D(D))

    def m(self, D: int) -> float:
        D = self._check_D(D)
        return self.sigma ** 4 * D / (D + 2)

    def _from_normal(self, z, D):
        return self.radius(D) * _unit_rows(z[:, :D])

    def _map_qmc(self, z, extra, D):
        return self.radius(D) * _unit_rows(z)


class Ball(_ScaleSampler):
    """Uniform in the ball of radius sigma sqrt(D+2): s = sigma^2, m = sigma^4 (D+2)/(D+4)."""

    name = "ball"

    def radius(self, D: int) -> float:
        return self.sigma * math.sqrt(self._check_D(D) + 2)

    def m(self, D: int) -> float:
        D = self._check_D(D)
        return self.sigma ** 4 * (D + 2) / (D + 4)

    def _sobol_dim(self, D):
        return D + 1

    def _scale(self, direction, u, D):
        rho = u.clamp(_UNIT_CLIP, 1.0) ** (1.0 / D)
        return self.radius(D) * rho.reshape(-1, 1) * direction

    def _from_normal(self, z, D):
        d = _unit_rows(z[:, :D])
        u = torch.special.ndtr(z[:, D])  # the extra normal column -> an independent uniform
        return self._scale(d, u, D)

    def _map_qmc(self, z, extra, D):
        return self._scale(_unit_rows(z), extra[:, 0], D)


class Curvature(Sampler):
    """Gaussian with diagonal covariance s_d = 2 eps / (D lambda_d): equal expected loss rise eps/D per direction.

    Defined only when every eigenvalue lambda_d is > 0; D at sampling time must equal len(eigenvalues).
    """

    name = "curvature"
    isotropic = False

    def __init__(self, eps: float, eigenvalues):
        self.eps = check_positive("eps", eps)
        lam = np.asarray(torch.as_tensor(eigenvalues).detach().cpu().double().numpy(), dtype=np.float64).ravel()
        if lam.size < 1:
            raise ValueError("eigenvalues must be a non-empty 1-D sequence (one per direction)")
        bad = np.flatnonzero(~(np.isfinite(lam) & (lam > 0)))
        if bad.size:
            raise ValueError(f"curvature sampler needs every eigenvalue > 0 (finite); eigenvalues[{bad[0]}] = "
                             f"{lam[bad[0]]!r} is not (curvature is undefined for non-positive eigenvalues)")
        self.eigenvalues = lam

    def params(self):
        return {"eps": self.eps, "eigenvalues": self.eigenvalues.tolist()}

    def _check_D(self, D) -> int:
        D = check_int("D", D)
        if D != len(self.eigenvalues):
            raise ValueError(f"D={D} does not match the curvature sampler's {len(self.eigenvalues)} eigenvalues "
                             "(D must equal len(eigenvalues))")
        return D

    def variances(self, D: int | None = None) -> np.ndarray:
        """Per-direction variances s_d = 2 eps / (D lambda_d) (float64 array of length D)."""
        D = self._check_D(len(self.eigenvalues) if D is None else D)
        return 2.0 * self.eps / (D * self.eigenvalues)

    def s(self, D: int | None = None) -> np.ndarray:
        """Per-direction second moments (a vector, not a scalar: the distribution is not isotropic)."""
        return self.variances(D)

    def m(self, D: int | None = None):
        raise ValueError("the curvature sampler is not isotropic: it has no scalar fourth moment m; use "
                         "covariance(D) (Gaussian fourth moments S_ab S_cd + S_ac S_bd + S_ad S_bc)")

    def covariance(self, D: int | None = None) -> np.ndarray:
        return np.diag(self.variances(D))

    def fourth_moment_tensor(self, D: int | None = None) -> np.ndarray:
        S = self.covariance(D)
        return (np.einsum("ab,cd->abcd", S, S) + np.einsum("ac,bd->abcd", S, S)
                + np.einsum("ad,bc->abcd", S, S))

    def _std(self, D):
        return torch.from_numpy(np.sqrt(self.variances(D)))

    def _from_normal(self, z, D):
        return z[:, :D] * self._std(D)

    def _map_qmc(self, z, extra, D):
        return z * self._std(D)


SAMPLERS = {"gaussian": Gaussian, "ball": Ball, "sphere": Sphere, "curvature": Curvature}


def make_sampler(name: str, **params) -> Sampler:
    """Factory: ``make_sampler("gaussian", sigma=0.1)``, ``make_sampler("curvature", eps=0.01, eigenvalues=lam)``."""
    cls = SAMPLERS[check_choice("distribution", name, SAMPLERS)]
    try:
        return cls(**params)
    except TypeError as e:
        needed = "eps, eigenvalues" if cls is Curvature else "sigma"
        raise ValueError(f"bad parameters {sorted(params)} for distribution {name!r}: it takes {needed} "
                         f"({e})") from None


# ----------------------------------------------------------------------------------------------- exact quadrature
def quadrature(sampler: Sampler, D: int, n_points: int = 4):
    """Quadrature rule (nodes (Q, D), weights (Q,), float64 tensors, weights sum to 1) for E_theta[f(theta)].

    Exact for polynomials of degree <= 2 n_points - 1 in each coordinate (Gaussian / curvature: tensor
    Gauss-Hermite, any D) and, for ball / sphere with D in {1, 2, 3}, in spherical coordinates (Gauss-Legendre in
    cos(polar angle) and radius, equispaced azimuth). Used for brute-force expectations in tests and checks.
    """
    D = sampler._check_D(D)
    n = check_int("n_points", n_points)

    def tensor(nodes_1d, weights_1d, dims):
        grids = np.meshgrid(*([nodes_1d] * dims), indexing="ij")
        wgrid = np.meshgrid(*([weights_1d] * dims), indexing="ij")
        X = np.stack([g.ravel() for g in grids], axis=1)
        W = np.prod(np.stack([w.ravel() for w in wgrid], axis=1), axis=1)
        return X, W

    if isinstance(sampler, (Gaussian, Curvature)):
        x, w = hermegauss(n)
        X, W = tensor(x, w / w.sum(), D)
        std = np.sqrt(np.diag(sampler.covariance(D)))
        return torch.from_numpy(X * std), torch.from_numpy(W)
    if not isinstance(sampler, (Ball, Sphere)):
        raise ValueError(f"no quadrature rule for sampler {sampler.name!r}")
    if D > 3:
        raise ValueError(f"quadrature for {sampler.name} is implemented for D <= 3, got D={D}")
    # directions on the unit sphere S^{D-1}, exact up to degree 2n-1
    if D == 1:
        U, Wu = np.array([[1.0], [-1.0]]), np.array([0.5, 0.5])
    elif D == 2:
        m = 2 * n
        phi = 2 * np.pi * np.arange(m) / m
        U, Wu = np.stack([np.cos(phi), np.sin(phi)], axis=1), np.full(m, 1.0 / m)
    else:
        c, wc = leggauss(n)
        m = 2 * n
        phi = 2 * np.pi * np.arange(m) / m
        C, PHI = np.meshgrid(c, phi, indexing="ij")
        Wc, _ = np.meshgrid(wc / 2.0, phi, indexing="ij")
        S = np.sqrt(1 - C ** 2)
        U = np.stack([(S * np.cos(PHI)).ravel(), (S * np.sin(PHI)).ravel(), C.ravel()], axis=1)
        Wu = (Wc / m).ravel()
    if isinstance(sampler, Sphere):
        return torch.from_numpy(sampler.radius(D) * U), torch.from_numpy(Wu)
    # ball: radius density D rho^(D-1) on [0, 1]; Gauss-Legendre on [0, 1] with the density as a weight factor
    r, wr = leggauss(n + D)
    rho = (r + 1) / 2
    wrho = wr / 2 * D * rho ** (D - 1)
    X = (rho[:, None, None] * U[None, :, :]).reshape(-1, D) * sampler.radius(D)
    W = (wrho[:, None] * Wu[None, :]).ravel()
    return torch.from_numpy(X), torch.from_numpy(W)
