"""Convergence analysis of Delta_k curves: slopes, sufficient sample sizes, rank correlation, R = 0 curves.

docs/specification.md sections 4.2, 5, 6 and 7:

* ``fit_slope``: log-log slope of a curve with its standard error;
* ``k2_summary``: k^2 Delta_k summary (median, quartiles, mean with standard error);
* ``sufficient_sample_size``: K(Delta) of a curve, conservative K from the upper 95% bound, "not reached";
* ``k_closed_form``: K for the order-averaged curve V-bar N / ((N-1) k (k+1));
* ``pilot_prediction``: K from a power law fitted to the first k0 points only;
* ``spearman``: rank correlation (e.g. of Delta_k with L_k(w*));
* ``r0_curve``: the R = 0 curve of Kiselev & Grabovoy (mean over random orders of |L_{k+1} - L_k| at w*).

Their Hessian-norm bound and measured per-sample Hessian norms are in ``lib.core.landscape.bounds``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr


def _as_curve(k, delta) -> tuple[np.ndarray, np.ndarray]:
    k, delta = np.asarray(k, dtype=np.float64), np.asarray(delta, dtype=np.float64)
    if k.ndim != 1 or k.shape != delta.shape or len(k) == 0:
        raise ValueError(f"k and delta must be 1-D arrays of equal non-zero length, got {k.shape} and {delta.shape}")
    if np.any(np.diff(k) <= 0):
        raise ValueError("k must be strictly increasing")
    return k, delta


# ------------------------------------------------------------------------------------------------ slopes
@dataclass
class SlopeFit:
    slope: float
    slope_stderr: float
    intercept: float      # log(c) in log Delta = log c + slope log k
    r2: float
    k_min: float
    k_max: float
    n_points: int

    @property
    def prefactor(self) -> float:
        return math.exp(self.intercept)


def fit_slope(k, delta, k_min: float | None = None, k_max: float | None = None, n_bins: int | None = 50) -> SlopeFit:
    """Least-squares fit of log Delta = log c + slope log k on k in [k_min, k_max].

    With ``n_bins`` the points are first averaged in ``n_bins`` logarithmic bins of k (means of log k and log
    Delta, exact on a power law, so the many large-k points do not dominate the fit); the slope's standard error
    is the usual OLS one on the fitted points.
    Non-positive values are dropped.
    """
    k, delta = _as_curve(k, delta)
    lo = k[0] if k_min is None else k_min
    hi = k[-1] if k_max is None else k_max
    keep = (k >= lo) & (k <= hi) & (delta > 0) & np.isfinite(delta)
    lk, ld = np.log(k[keep]), np.log(delta[keep])
    if n_bins is not None and len(lk) > n_bins:
        edges = np.linspace(lk[0], lk[-1], n_bins + 1)
        idx = np.clip(np.searchsorted(edges, lk, side="right") - 1, 0, n_bins - 1)
        counts = np.bincount(idx, minlength=n_bins)
        ok = counts > 0
        lk = (np.bincount(idx, lk, n_bins)[ok] / counts[ok])
        ld = np.bincount(idx, ld, n_bins)[ok] / counts[ok]
    if len(lk) < 3:
        raise ValueError(f"need at least 3 positive points in [{lo}, {hi}] to fit a slope, got {len(lk)}")
    X = np.stack([np.ones_like(lk), lk], axis=1)
    coef, *_ = np.linalg.lstsq(X, ld, rcond=None)
    resid = ld - X @ coef
    dof = len(lk) - 2
    s2 = float(resid @ resid) / dof if dof > 0 else 0.0
    cov = s2 * np.linalg.inv(X.T @ X)
    ss_tot = float(((ld - ld.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    return SlopeFit(float(coef[1]), float(math.sqrt(cov[1, 1])), float(coef[0]), r2, float(lo), float(hi), len(lk))


def k2_summary(k, delta, stderr=None, k_min: float = 1) -> dict:
    """Summary of k^2 Delta_k over k >= k_min: median, quartiles, mean and the mean's standard error."""
    k, delta = _as_curve(k, delta)
    keep = k >= k_min
    v = k[keep] ** 2 * delta[keep]
    out = {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)), "q75": float(np.quantile(v, 0.75)),
           "mean": float(v.mean()), "n": int(keep.sum())}
    if stderr is not None:
        se = k[keep] ** 2 * np.asarray(stderr, dtype=np.float64)[keep]
        out["mean_stderr"] = float(math.sqrt(np.sum(se ** 2)) / keep.sum())
    return out


# ------------------------------------------------------------------------------------- sufficient size
@dataclass
class SampleSize:
    threshold: float
    K: int | None                 # None: not reached within the computed range
    K_conservative: int | None    # from the upper 95% bound Delta + 2 SE

    @property
    def reached(self) -> bool:
        return self.K is not None


def first_k_below(k, values, threshold: float) -> int | None:
    """min{k : values_k' < threshold for every k' >= k} over the given range, None if values[-1] >= threshold."""
    k, values = _as_curve(k, values)
    above = ~(values < threshold)
    if above[-1]:
        return None
    idx = np.flatnonzero(above)
    return int(k[0] if len(idx) == 0 else k[idx[-1] + 1])


def sufficient_sample_size(k, delta, threshold: float, stderr=None) -> SampleSize:
    """K(Delta) and the conservative K using Delta_k + 2 SE_k (docs/specification.md section 6)."""
    if not threshold > 0:
        raise ValueError(f"threshold Delta={threshold!r} must be > 0")
    K = first_k_below(k, delta, threshold)
    Kc = None
    if stderr is not None:
        Kc = first_k_below(k, np.asarray(delta, dtype=np.float64) + 2 * np.asarray(stderr, dtype=np.float64),
                           threshold)
    return SampleSize(threshold, K, Kc)


def k_closed_form(vbar: float, N: int, threshold: float) -> int:
    """Smallest k with V-bar N / ((N-1) k (k+1)) < threshold (the order-averaged curve, section 4b).

    The value may exceed N - 1: then the threshold is not reached with the data at hand.
    """
    if not threshold > 0 or not vbar >= 0 or N < 2:
        raise ValueError(f"need threshold > 0, vbar >= 0 and N >= 2; got {threshold}, {vbar}, {N}")
    c = vbar * N / ((N - 1) * threshold)
    k = max(1, math.floor((-1 + math.sqrt(1 + 4 * c)) / 2))
    while k * (k + 1) <= c:
        k += 1
    while k > 1 and (k - 1) * k > c:
        k -= 1
    return k


@dataclass
class PilotPrediction:
    k0: int
    fit: SlopeFit
    threshold: float
    K: float                      # (c / Delta)^(1 / alpha), alpha = -slope


def pilot_prediction(k, delta, k0: int, threshold: float, k_min: float = 1, n_bins: int | None = 50) -> PilotPrediction:
    """Fit log Delta_k = log c - alpha log k on k in [k_min, k0] only and predict K = (c / Delta)^(1/alpha)."""
    if not threshold > 0:
        raise ValueError(f"threshold Delta={threshold!r} must be > 0")
    fit = fit_slope(k, delta, k_min=k_min, k_max=k0, n_bins=n_bins)
    alpha = -fit.slope
    if alpha <= 0:
        raise ValueError(f"the pilot curve does not decrease (slope {fit.slope:.3g}); cannot extrapolate")
    return PilotPrediction(k0, fit, threshold, float((fit.prefactor / threshold) ** (1.0 / alpha)))


def weighted_increment_sum(per_sample_losses) -> tuple[float, float]:
    """(sum_{k=1}^{N-1} k (k+1) (L_{k+1} - L_k)^2, N V) for per-sample losses in one insertion order.

    The two are equal for every order (an exact identity: k (k+1) d_k^2 = k/(k+1) (l_{k+1} - L_k)^2 is Welford's
    increment of the sum of squared deviations, which telescopes to N V, V = (1/N) sum_i (l_i - L_N)^2). Taking
    the expectation over theta: the k-average of k (k+1) Delta_k equals V-bar N / (N - 1) for every fixed order.
    """
    l = np.asarray(per_sample_losses, dtype=np.float64).ravel()
    N = len(l)
    if N < 2:
        raise ValueError(f"need N >= 2 per-sample losses, got {N}")
    k = np.arange(1, N, dtype=np.float64)
    L = np.cumsum(l)[:-1] / k
    d = (l[1:] - L) / (k + 1)
    return float(np.sum(k * (k + 1) * d * d)), float(N * l.var())


def spearman(a, b) -> dict:
    """Spearman rank correlation with its p-value."""
    res = spearmanr(np.asarray(a), np.asarray(b))
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": len(np.asarray(a))}


# ------------------------------------------------------------------------------- Kiselev & Grabovoy
def r0_curve(losses, n_orders: int, seed: int = 0) -> dict:
    """Mean and standard error over ``n_orders`` random insertion orders of |L_{k+1} - L_k| at one point w.

    ``losses`` are the per-sample losses l_i(w) (N,). Returns k = 1..N-1, mean, stderr.
    """
    losses = torch.as_tensor(losses, dtype=torch.float64).flatten()
    N = len(losses)
    if N < 2 or n_orders < 2:
        raise ValueError(f"need N >= 2 samples and n_orders >= 2, got {N} and {n_orders}")
    gen = torch.Generator().manual_seed(int(seed))
    k = torch.arange(1, N, dtype=torch.float64)
    s1 = torch.zeros(N - 1, dtype=torch.float64)
    s2 = torch.zeros(N - 1, dtype=torch.float64)
    for _ in range(n_orders):
        perm = losses[torch.randperm(N, generator=gen)]
        prefix = torch.cumsum(perm, 0)[:-1] / k
        d = ((perm[1:] - prefix) / (k + 1)).abs()
        s1 += d
        s2 += d * d
    mean = s1 / n_orders
    var = (s2 / n_orders - mean ** 2).clamp_min(0) * n_orders / (n_orders - 1)
    return {"k": k.numpy(), "mean": mean.numpy(), "stderr": (var / n_orders).sqrt().numpy()}
