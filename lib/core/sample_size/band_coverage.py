"""Measured simultaneous coverage of the band over k (``sample_size.simultaneous_multiplier``) on synthetic values.

The pipeline keeps B = 32 batch means of d_k^2 (T = 1,024 thetas: 32 per batch) and puts K_band on the upper edge
mean_k + c SE_k. ``coverage`` repeats that construction on values with a known mean, independent over thetas and
over k (the hardest case for a maximum over k), and counts the replicates whose upper edge is above the true mean
at every k at once. ``python -m lib.core.sample_size.band_coverage`` prints the table of docs/sample_size.md.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lib.core.checks import check_choice, check_int, check_number
from lib.core.sample_size.sufficient import BAND_METHODS, simultaneous_multiplier


def _gaussian(rng, shape):
    return 1.0 + rng.standard_normal(shape, dtype=np.float32)


def _chi2_1(rng, shape):
    z = rng.standard_normal(shape, dtype=np.float32)
    return z * z


def _t_squared(df: float) -> Callable:
    def draw(rng, shape):
        z = rng.standard_normal(shape, dtype=np.float32)
        return z * z / (rng.standard_gamma(df / 2, shape, dtype=np.float32) / (df / 2))
    return draw


def _lognormal(s: float) -> Callable:
    def draw(rng, shape):
        return np.exp(s * rng.standard_normal(shape, dtype=np.float32))
    return draw


#: name -> (draw(rng, shape) -> float32 values, their exact mean)
DISTRIBUTIONS: dict[str, tuple[Callable, float]] = {
    "gaussian": (_gaussian, 1.0),                       # N(1, 1)
    "chi2(1)": (_chi2_1, 1.0),
    "t(5)^2": (_t_squared(5.0), 5.0 / 3.0),             # F(1, 5): finite variance, heavy tail
    "t(3)^2": (_t_squared(3.0), 3.0),                   # F(1, 3): infinite variance
    "lognormal(1.5)": (_lognormal(1.5), math.exp(1.5 ** 2 / 2)),
}


@dataclass
class Coverage:
    """One cell of the table: share of ``reps`` replicates whose upper edge covers the mean at all ``n_k`` k."""
    method: str
    distribution: str
    n_k: int
    n_batches: int
    per_batch: int
    reps: int
    level: float
    covered: float                 # measured simultaneous upper coverage
    covered_se: float              # its binomial standard error
    median_c: float                # median multiplier c over replicates
    median_width: float            # median over replicates and k of (upper edge) / (true mean)
    band_seconds: float            # mean time of one band (the multiplier) on this machine


def batch_means(distribution: str, rng, n_batches: int, per_batch: int, n_k: int) -> np.ndarray:
    """(n_batches, n_k) means of ``per_batch`` i.i.d. values each (float64)."""
    draw = DISTRIBUTIONS[distribution][0]
    return draw(rng, (n_batches, per_batch, n_k)).mean(axis=1, dtype=np.float64)


def coverage(distribution: str, methods=BAND_METHODS, *, n_k: int = 300, n_batches: int = 32, per_batch: int = 32,
             reps: int = 500, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> list[Coverage]:
    """Simultaneous upper coverage of each band ``method`` on the same ``reps`` replicates of ``distribution``."""
    check_choice("distribution", distribution, list(DISTRIBUTIONS))
    for m in methods:
        check_choice("method", m, BAND_METHODS)
    n_k, reps = check_int("n_k", n_k, 1), check_int("reps", reps, 1)
    n_batches, per_batch = check_int("n_batches", n_batches, 3), check_int("per_batch", per_batch, 1)
    level = check_number("level", level, gt=0, le=1)
    truth = DISTRIBUTIONS[distribution][1]
    rng = np.random.default_rng(seed)
    hits = {m: 0 for m in methods}
    cs = {m: [] for m in methods}
    widths = {m: [] for m in methods}
    seconds = {m: 0.0 for m in methods}
    for r in range(reps):
        X = batch_means(distribution, rng, n_batches, per_batch, n_k)
        mean, se = X.mean(axis=0), X.std(axis=0, ddof=1) / math.sqrt(n_batches)
        for m in methods:
            t0 = time.perf_counter()
            c = simultaneous_multiplier(X, level=level, n_boot=n_boot, seed=seed + r, method=m)
            seconds[m] += time.perf_counter() - t0
            upper = mean + c * se
            hits[m] += bool(np.all(upper >= truth))
            cs[m].append(c)
            widths[m].append(float(np.median(upper / truth)))
    out = []
    for m in methods:
        p = hits[m] / reps
        out.append(Coverage(m, distribution, n_k, n_batches, per_batch, reps, level, p, math.sqrt(p * (1 - p) / reps),
                            float(np.median(cs[m])), float(np.median(widths[m])), seconds[m] / reps))
    return out


def oracle_multiplier(distribution: str, n_k: int, *, n_batches: int = 32, per_batch: int = 32,
                      level: float = 0.95, n_sim: int = 400_000, seed: int = 0) -> float:
    """The smallest common c whose upper edge covers ``n_k`` independent k with probability ``level`` when the
    distribution is known: the level^(1/n_k) quantile of (mean - m_k) / SE_k over ``n_sim`` simulated k (the
    benchmark a construction that must estimate the tail from the data cannot beat)."""
    check_choice("distribution", distribution, list(DISTRIBUTIONS))
    truth, rng, stats = DISTRIBUTIONS[distribution][1], np.random.default_rng(seed), []
    for start in range(0, check_int("n_sim", n_sim, 1), 20_000):
        X = batch_means(distribution, rng, n_batches, per_batch, min(20_000, n_sim - start))
        stats.append((truth - X.mean(axis=0)) / (X.std(axis=0, ddof=1) / math.sqrt(n_batches)))
    return float(np.quantile(np.concatenate(stats), check_number("level", level, gt=0, le=1) ** (1 / n_k)))


def table(rows: list[Coverage]) -> str:
    """Markdown table of coverage cells."""
    lines = ["| construction | distribution | k | nominal | measured (+- SE) | median c | median upper / mean | "
             "band time |", "|---|---|---|---|---|---|---|---|"]
    for c in rows:
        lines.append(f"| {c.method} | {c.distribution} | {c.n_k:,} | {c.level:.2f} | {c.covered:.3f} "
                     f"(+- {c.covered_se:.3f}) | {c.median_c:.2f} | {c.median_width:.2f} | "
                     f"{1e3 * c.band_seconds:.0f} ms |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Print the coverage table (every distribution x construction at each n_k)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-k", type=int, nargs="+", default=[300, 3000], help="numbers of k")
    parser.add_argument("--reps", type=int, nargs="+", default=[1000, 500], help="replicates per n_k (one or each)")
    parser.add_argument("--n-batches", type=int, default=32, help="B batch means")
    parser.add_argument("--per-batch", type=int, default=32, help="values per batch (T / B: 32 at T = 1,024)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle", action="store_true", help="also the known-distribution multiplier per cell")
    parser.add_argument("--distributions", nargs="+", default=list(DISTRIBUTIONS), choices=list(DISTRIBUTIONS))
    args = parser.parse_args(argv)
    reps = args.reps * len(args.n_k) if len(args.reps) == 1 else args.reps
    if len(reps) != len(args.n_k):
        parser.error(f"--reps: give one value or one per --n-k ({len(args.n_k)}), got {len(reps)}")
    rows = []
    t0 = time.perf_counter()
    for n_k, r in zip(args.n_k, reps):
        for dist in args.distributions:
            cells = coverage(dist, n_k=n_k, reps=r, n_batches=args.n_batches, per_batch=args.per_batch,
                             n_boot=args.n_boot, seed=args.seed)
            rows.extend(cells)
            print(" ".join(f"{c.method} {dist} k={n_k}: {c.covered:.3f}" for c in cells), flush=True)
            if args.oracle:
                c = oracle_multiplier(dist, n_k, n_batches=args.n_batches, per_batch=args.per_batch, seed=args.seed)
                print(f"oracle c {dist} k={n_k}: {c:.2f}", flush=True)
    print(f"\nB = {args.n_batches} batches x {args.per_batch} values, seed {args.seed}, n_boot {args.n_boot}, "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(table(sorted(rows, key=lambda c: (c.method != "max_t", c.method, c.n_k))))


if __name__ == "__main__":
    main()
