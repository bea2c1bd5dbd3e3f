"""Sufficient sample size K(Delta) as a measured prediction: its spread over insertion orders, a simultaneous band,
the learning-curve competitor, the loss-gap scale and the calibration threshold Delta*.

All functions take arrays and return plain values:

* ``k_per_order``: K(Delta) of every random insertion order's curve (suffix maxima, one pass per order);
* ``order_summary``: median, 5-95 % range and the conformal upper K (a held-out order falls below it with
  probability >= level);
* ``simultaneous_multiplier``: the max-t multiplier bootstrap over batches of thetas, so that
  ``mean +- c * stderr`` covers the whole curve with the stated probability (not each k alone), or
  ``bootstrap_t_multiplier``: a one-sided studentised bootstrap whose upper edge also holds for heavy tails;
* ``fit_power_law`` / ``n_within``: the learning-curve extrapolation err(n) = a n^-b + c (Mahmood et al. 2022);
* ``observed_n_within``: where a measured learning curve comes within ``gap`` of its plateau;
* ``solve_increasing``: the scale sigma at which an increasing function reaches a target (bisection in log);
  ``loss_gap_scale``: the loss-gap sigma with it, from the quadratic guess (one rule for every caller);
* ``delta_for_k``: the threshold Delta at which the order-averaged curve gives K = n (calibration).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.stats import norm as normal
from scipy.stats import t as student_t

from lib.core.checks import check_choice, check_int, check_number, check_positive


# ----------------------------------------------------------------------------------------- orders
def suffix_max(curves: np.ndarray) -> np.ndarray:
    """max_{j >= k} curves[..., j] along the last axis."""
    curves = np.asarray(curves, dtype=np.float64)
    return np.flip(np.maximum.accumulate(np.flip(curves, -1), axis=-1), -1)


def k_per_order(k, curves, thresholds) -> np.ndarray:
    """K(Delta) = min{k : curve_k' < Delta for all k' >= k} for every curve (row) and threshold.

    ``curves``: (R, M) Delta_k^{pi_r} on the k grid ``k`` (M,); ``thresholds``: (G,). Returns (R, G) float with
    NaN where a curve is not below the threshold at the last k (not reached within the data).
    """
    k = np.asarray(k, dtype=np.float64)
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    if curves.shape[-1] != len(k):
        raise ValueError(f"curves have {curves.shape[-1]} points per row, k has {len(k)}")
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    for t in thresholds:
        check_positive("threshold", float(t))
    smax = suffix_max(curves)                                  # decreasing in k
    out = np.full((curves.shape[0], len(thresholds)), np.nan)
    for g, t in enumerate(thresholds):
        below = smax < t                                       # once True, True for every larger k
        reached = below[:, -1]
        first = np.argmax(below, axis=1)
        out[reached, g] = k[first[reached]]
    return out


def conformal_upper(values, level: float = 0.95) -> float:
    """The ceil((R + 1) level)-th smallest of R exchangeable values: a new value falls below or on it with
    probability >= level. NaN (not reached) counts as +inf; returns inf when R is too small for the level."""
    check_number("level", level, gt=0, le=1)
    v = np.sort(np.where(np.isnan(values), np.inf, np.asarray(values, dtype=np.float64)))
    rank = math.ceil((len(v) + 1) * level)
    return float(v[rank - 1]) if rank <= len(v) else math.inf


@dataclass
class OrderSummary:
    """K over insertion orders (and seeds) for one threshold; ``reached`` is the share of orders that reach it."""
    median: float | None
    q05: float | None
    q95: float | None
    upper: float | None           # conformal 95 % upper bound for a new order
    reached: float
    n: int


def order_summary(values, level: float = 0.95) -> OrderSummary:
    """Median and 5-95 % quantiles of K (NaN = not reached, treated as +inf; a quantile that is inf is None)."""
    v = np.where(np.isnan(values), np.inf, np.asarray(values, dtype=np.float64).ravel())
    if len(v) == 0:
        raise ValueError("order_summary needs at least one K value")

    def q(p):
        x = float(np.quantile(v, p, method="inverted_cdf"))
        return None if math.isinf(x) else x

    up = conformal_upper(v, level)
    return OrderSummary(q(0.5), q(0.05), q(0.95), None if math.isinf(up) else up, float(np.isfinite(v).mean()),
                        len(v))


# -------------------------------------------------------------------------------- simultaneous band
#: constructions of the simultaneous band (``simultaneous_multiplier``'s ``method``); the first is the default:
#: ``bootstrap_t`` holds on heavy-tailed values and on real curves, ``max_t`` only on near-Gaussian batch means
#: (docs/sample_size.md, "Coverage of the simultaneous band")
BAND_METHODS = ("bootstrap_t", "max_t")


def simultaneous_multiplier(batch_means, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                            k_mask=None, method: str = BAND_METHODS[0]) -> float:
    """Multiplier c such that mean_k +- c SE_k covers all k at once with probability ~ ``level``.

    ``method`` "bootstrap_t" (the default) is the one-sided studentised bootstrap of ``bootstrap_t_multiplier``
    (only the upper edge mean_k + c SE_k, the one K_band uses, covers; it holds for skewed, heavy-tailed values and
    on real curves); "max_t", described below, assumes near-Gaussian batch means (docs/sample_size.md has the
    coverage tables of both).

    ``batch_means``: (B, M) means of d_k^2 over B disjoint batches of thetas (i.i.d. batches). With
    m_k = mean over batches and SE_k = sd_k / sqrt(B), c is the ``level`` quantile of max_k |z*_k| with
    z*_k = sum_b g_b (m_bk - m_k) / (sqrt(B) sd_k), g ~ N(0, 1)^B (Gaussian multiplier bootstrap of the max-t
    statistic), mapped to a Student-t quantile with B - 1 degrees of freedom because SE_k is estimated from the
    same B batches. ``k_mask`` restricts the maximum to some k (e.g. the tail where K is decided).
    """
    check_choice("method", method, BAND_METHODS)
    X = np.asarray(batch_means, dtype=np.float64)
    B = check_int("number of batches", X.shape[0], 3)
    n_boot = check_int("n_boot", n_boot, 10)
    if k_mask is not None:
        X = X[:, np.asarray(k_mask, dtype=bool)]
    if method == "bootstrap_t":
        return bootstrap_t_multiplier(X, level, n_boot, seed)
    centred = X - X.mean(axis=0)
    sd = X.std(axis=0, ddof=1)
    keep = sd > 0
    if not keep.any():
        return 0.0
    scaled = centred[:, keep] / (math.sqrt(B) * sd[keep] * math.sqrt((B - 1) / B))
    rng = np.random.default_rng(seed)
    maxima = np.empty(n_boot)
    for start in range(0, n_boot, 256):
        g = rng.standard_normal((min(256, n_boot - start), B))
        maxima[start:start + len(g)] = np.abs(g @ scaled).max(axis=1)
    c = float(np.quantile(maxima, level))
    # small-sample correction: SE_k is itself estimated from B batches, so map the normal quantile to Student-t
    return float(student_t.ppf(normal.cdf(c), df=B - 1))


def bootstrap_t_multiplier(batch_means, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> float:
    """One-sided simultaneous multiplier q: mean_k + q SE_k >= the true mean at every k with probability ~ level.

    Studentised (bootstrap-t) resampling of the B batches (rows of ``batch_means``, (B, M)): for each of ``n_boot``
    resamples (multinomial batch counts), t*_k = (m_k - m*_k) / SE*_k with SE*_k the resample's own standard error;
    q is the ``level`` quantile of max_k t*_k. Resamples that miss a batch with a large value have a low mean and a
    small SE*, as a sample that misses the tail of skewed values does, so q grows with the skew (a symmetric t-band
    does not). k with SE_k = 0 are left out. Cost: two (n_boot, B) x (B, M) products.
    """
    level = check_number("level", level, gt=0, le=1)
    X = np.asarray(batch_means, dtype=np.float64)
    B = check_int("number of batches", X.shape[0], 3)
    n_boot = check_int("n_boot", n_boot, 10)
    sd = X.std(axis=0, ddof=1)
    X = X[:, sd > 0]
    if X.shape[1] == 0:
        return 0.0
    m, sq = X.mean(axis=0), X * X
    rng = np.random.default_rng(seed)
    maxima = np.empty(n_boot)
    for start in range(0, n_boot, 256):
        w = rng.multinomial(B, np.full(B, 1.0 / B), size=min(256, n_boot - start)) / B
        m1 = w @ X
        se1 = np.sqrt(np.maximum(w @ sq - m1 * m1, 0.0) / (B - 1))
        t = np.divide(m - m1, se1, out=np.zeros_like(m1), where=se1 > 0)
        maxima[start:start + len(w)] = t.max(axis=1)
    return float(np.quantile(maxima, level))


# ------------------------------------------------------------------------------------ learning curve
@dataclass
class PowerLaw:
    """err(n) = a n^-b + c, fitted by least squares; ``n_points`` sizes x seeds used."""
    a: float
    b: float
    c: float
    n_points: int
    n_max: int

    def __call__(self, n):
        return self.a * np.asarray(n, dtype=np.float64) ** (-self.b) + self.c


def fit_power_law(sizes, errors) -> PowerLaw:
    """Fit err(n) = a n^-b + c (a > 0, b in (0, 3], c in [0, 1]) to (size, error) pairs, several seeds per size
    allowed (Mahmood et al., "How Much More Data Do I Need?", CVPR 2022)."""
    n = np.asarray(sizes, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=np.float64).ravel()
    if len(n) != len(e) or len(np.unique(n)) < 3:
        raise ValueError(f"need errors at >= 3 distinct sizes, got sizes {sorted(set(n.tolist()))}")

    def model(x, log_a, b, c):
        return np.exp(log_a) * x ** (-b) + c

    c0 = max(0.0, float(e.min()) * 0.5)
    b0 = 0.5
    a0 = max(float(e.max() - c0), 1e-6) * float(n.min()) ** b0
    with warnings.catch_warnings():   # the parameter covariance is not used; few sizes make it singular
        warnings.simplefilter("ignore", OptimizeWarning)
        (log_a, b, c), _ = curve_fit(model, n, e, p0=(math.log(a0), b0, c0),
                                     bounds=([-50.0, 1e-3, 0.0], [50.0, 3.0, 1.0]), maxfev=20000)
    return PowerLaw(float(math.exp(log_a)), float(b), float(c), len(n), int(n.max()))


def n_within(law: PowerLaw, gap: float) -> float:
    """The n at which the fitted error comes within ``gap`` of its plateau c: a n^-b = gap."""
    check_positive("gap", gap)
    return float((law.a / gap) ** (1.0 / law.b))


def observed_n_within(sizes, accuracy, gap: float, plateau: float | None = None) -> float | None:
    """Smallest measured size n whose accuracy, and every larger size's, is within ``gap`` of the plateau
    (default: the accuracy at the largest size). ``accuracy`` may be (n_sizes, n_seeds): seeds are averaged.
    Returns None if even the largest size is not within the gap (possible with an explicit plateau)."""
    check_positive("gap", gap)
    n = np.asarray(sizes, dtype=np.float64)
    acc = np.asarray(accuracy, dtype=np.float64)
    acc = acc.mean(axis=1) if acc.ndim == 2 else acc
    order = np.argsort(n)
    n, acc = n[order], acc[order]
    top = acc[-1] if plateau is None else plateau
    ok = acc >= top - gap
    if not ok[-1]:
        return None
    bad = np.flatnonzero(~ok)
    return float(n[0] if len(bad) == 0 else n[bad[-1] + 1])


# ------------------------------------------------------------------------------------- scale, calibration
def solve_increasing(f: Callable[[float], float], target: float, lo: float, hi: float, iters: int = 30,
                     rel_tol: float = 1e-3) -> float:
    """x in [lo, hi] with f(x) = target for an increasing f, by bisection in log x (f(lo) < target < f(hi);
    the interval is widened by factors of 4 up to 20 times if it does not bracket the target)."""
    check_positive("lo", lo)
    check_positive("hi", hi)
    f_lo, f_hi = f(lo), f(hi)
    for _ in range(20):
        if f_lo <= target:
            break
        lo /= 4
        f_lo = f(lo)
    for _ in range(20):
        if f_hi >= target:
            break
        hi *= 4
        f_hi = f(hi)
    if not f_lo <= target <= f_hi:
        raise ValueError(f"cannot bracket target {target:g}: f({lo:g}) = {f_lo:g}, f({hi:g}) = {f_hi:g}")
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + rel_tol:
            break
    return math.sqrt(lo * hi)


#: relative bisection tolerance of the loss-gap sigma (the pipeline's rule; the seed study measures its error)
GAP_REL_TOL = 0.02


def quadratic_scale_guess(gap: float, eigenvalue_sum: float) -> float:
    """sqrt(2 gap / sum lambda_d): the sigma at which a quadratic loss with curvatures lambda_d rises by ``gap``."""
    return math.sqrt(2 * gap / max(float(eigenvalue_sum), 1e-12))


def loss_gap_scale(rise: Callable[[float], float], gap: float, eigenvalue_sum: float,
                   rel_tol: float = GAP_REL_TOL) -> float:
    """The loss-gap sigma: where ``rise(sigma)``, the mean loss rise over common draws (increasing in sigma), equals
    ``gap`` (> 0); ``solve_increasing`` in [guess / 4, 4 guess] around ``quadratic_scale_guess``."""
    gap = check_positive("gap", gap)
    guess = quadratic_scale_guess(gap, eigenvalue_sum)
    return solve_increasing(rise, gap, guess / 4, guess * 4, rel_tol=rel_tol)


def delta_for_k(vbar: float, N: int, n: float) -> float:
    """The threshold Delta at which the order-averaged curve V-bar N / ((N-1) k (k+1)) gives K = n."""
    check_positive("n", n)
    return float(vbar * N / ((N - 1) * n * (n + 1)))
