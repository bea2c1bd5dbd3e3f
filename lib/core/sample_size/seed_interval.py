"""How K varies with the training seed, the insertion order and the Monte Carlo, and an interval for a new seed.

Input: log K of S training seeds x R insertion orders (``log_k``, shape (S, R)), every seed with its own w*,
subspace and thetas, its orders sharing those thetas; and, for the Monte-Carlo part, log K of the same seeds and
orders from a second, independent set of thetas (``log_k_repeat``). The model behind it:

    log K[s, r] = mu + a_s + m_s + e_sr + u_sr

a_s the seed (w*, P, its loss-gap sigma), m_s + u_sr the Monte Carlo of seed s's thetas (m_s shared by its orders),
e_sr the order. Estimators (``variance_parts``):

* Monte Carlo: from the differences between the two theta sets at the same (seed, order): half their mean square
  is var(m) + var(u), half the square of their mean over orders is var(m) + var(u) / R;
* order: the mean over seeds of the within-seed variance over orders, less var(u);
* seed: the variance of the seed means less what orders and Monte Carlo add to a mean of R orders
  (within-seed variance / R + var(m)); each part floored at 0.

``new_seed_interval``: a prediction interval for log K of a new seed at a random order, seeds as clusters and orders
within: centre the grand mean, variance (1 + 1/S) s_between^2 + (1 - 1/R) s_within^2 with s_between^2 the variance of
the seed means, Student-t with S - 1 degrees of freedom. ``leave_one_seed_out`` measures its coverage (and that of a
one-seed order range, which covers another order of the same seed, not a new seed) on the seeds at hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

from lib.core.checks import ParameterError, check_number

__all__ = ["VarianceParts", "variance_parts", "new_seed_interval", "order_range", "leave_one_seed_out"]


def _as_matrix(log_k, name: str = "log_k", min_seeds: int = 2) -> np.ndarray:
    a = np.asarray(log_k, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < min_seeds or a.shape[1] < 2:
        raise ParameterError(name, getattr(a, "shape", None),
                             f"a (seeds, orders) array with >= {min_seeds} seeds and >= 2 orders")
    if not np.isfinite(a).all():
        raise ParameterError(name, "non-finite values", "finite log K values (censored K: pass log N and say so)")
    return a


@dataclass
class VarianceParts:
    """Variances of log K (natural log) and their shares of the total for a new (seed, order, theta set)."""
    order: float
    seed: float
    monte_carlo: float
    total: float
    between_seed_means: float
    n_seeds: int
    n_orders: int

    def shares(self) -> dict:
        t = self.total if self.total > 0 else 1.0
        return {"order": self.order / t, "seed": self.seed / t, "monte_carlo": self.monte_carlo / t}


def variance_parts(log_k, log_k_repeat) -> VarianceParts:
    """Order, seed and Monte-Carlo variance of log K from (S, R) values and their repeat with independent thetas
    (same seeds, same orders)."""
    a = _as_matrix(log_k)
    b = _as_matrix(log_k_repeat, "log_k_repeat")
    if a.shape != b.shape:
        raise ParameterError("log_k_repeat", b.shape, f"the shape of log_k {a.shape} (same seeds and orders)")
    S, R = a.shape
    within = float(a.var(axis=1, ddof=1).mean())
    diff = a - b
    mc = float(0.5 * np.mean(diff ** 2))
    mc_of_mean = float(0.5 * np.mean(diff.mean(axis=1) ** 2))
    between = float(a.mean(axis=1).var(ddof=1))
    # the repeat's differences: E[diff^2] / 2 = var(m) + var(u), E[mean_r diff]^2 / 2 = var(m) + var(u) / R
    var_u = max(0.0, (mc - mc_of_mean) * R / (R - 1))
    var_m = max(0.0, mc_of_mean - var_u / R)
    order = max(0.0, within - var_u)
    seed = max(0.0, between - within / R - var_m)
    return VarianceParts(order=order, seed=seed, monte_carlo=var_m + var_u, total=order + seed + var_m + var_u,
                         between_seed_means=between, n_seeds=S, n_orders=R)


def new_seed_interval(log_k, level: float = 0.9) -> tuple[float, float]:
    """(low, high) on the K scale: a ``level`` prediction interval for K of a new seed at a random order."""
    level = check_number("level", level, gt=0, le=0.999)
    a = _as_matrix(log_k)
    S, R = a.shape
    between = a.mean(axis=1).var(ddof=1)
    within = a.var(axis=1, ddof=1).mean()
    sd = math.sqrt((1 + 1 / S) * between + (1 - 1 / R) * within)
    q = student_t.ppf(0.5 + level / 2, df=S - 1)
    centre = a.mean()
    return float(math.exp(centre - q * sd)), float(math.exp(centre + q * sd))


def order_range(log_k_one_seed, level: float = 0.9) -> tuple[float, float]:
    """(low, high) on the K scale: the central ``level`` range of one seed's K over its orders (what "5-95 %"
    displays for one trained network: another order of the same samples, not a new seed)."""
    v = np.asarray(log_k_one_seed, dtype=np.float64)
    lo, hi = np.quantile(v, [0.5 - level / 2, 0.5 + level / 2])
    return float(math.exp(lo)), float(math.exp(hi))


def leave_one_seed_out(log_k, level: float = 0.9) -> dict:
    """Coverage of a new seed's K, measured by leaving each seed out in turn.

    ``new_seed``: the share of the held-out seed's orders whose K lies in ``new_seed_interval`` of the other seeds
    (averaged over held-out seeds); ``order_range``: the share of the held-out seed's K that lie in another single
    seed's order range (averaged over all ordered pairs of seeds). Also the per-seed hits of ``new_seed``."""
    a = _as_matrix(log_k, min_seeds=3)
    S = a.shape[0]
    k = np.exp(a)
    hits = []
    for s in range(S):
        lo, hi = new_seed_interval(np.delete(a, s, axis=0), level)
        hits.append(float(np.mean((k[s] >= lo) & (k[s] <= hi))))
    pair = []
    for s in range(S):
        for j in range(S):
            if j != s:
                lo, hi = order_range(a[j], level)
                pair.append(float(np.mean((k[s] >= lo) & (k[s] <= hi))))
    return {"level": level, "new_seed": float(np.mean(hits)), "new_seed_per_seed": hits,
            "order_range": float(np.mean(pair)), "n_seeds": S}
