"""Sample-size prediction on one estimand: targets from fine learning curves, pilot-only predictors, their scores.

The estimand (docs/sample_size.md, "Prediction benchmark"). A task has a pool of ``n_max`` training samples in a
fixed insertion order and a size grid (``size_grid``: ratio <= 1.25, ending at ``n_max``). Its learning curve is the
test accuracy of the recipe trained on the first n samples, averaged over seeds. The *target* ``n*(eps)`` is the
smallest grid size n such that the mean accuracy at n and at every larger grid size is within ``eps`` of the mean
accuracy at ``n_max`` (the plateau). It is *resolved* only if ``n* <= n_max / plateau_factor`` (the plateau is
measured at >= 4x the target) and ``n*`` is above the grid's smallest size (else it is left-censored); unresolved
targets are never scored.

Every predictor sees only the first ``n0`` samples of the pool (a pilot) and predicts the same quantity: the
smallest grid size n with acc(n) >= acc(n_max) - eps, snapped up to the task's grid (``snap``).

* ``fit_power_law`` (weighted least squares, err(n) = a n^-b + c) and ``power_law_n``: the learning-curve
  extrapolation, with ``bootstrap_power_law`` (parametric bootstrap of the pilot points) for an interval;
* ``calibrated``: leave-one-family-out predictors built from other tasks (the constant, the landscape
  K(Delta*), linear combinations in log n), with intervals from the calibration tasks' leave-one-out residuals;
* ``score``: |log2(predicted / target)| summaries, share within 2x, interval coverage, paired Wilcoxon tests.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.stats import wilcoxon

from lib.core.checks import ParameterError, check_int, check_number

__all__ = ["size_grid", "snap", "Target", "target", "PowerLaw", "fit_power_law", "power_law_n",
           "bootstrap_power_law", "k_closed", "delta_for_target", "fit_calibration", "apply_calibration",
           "calibrated", "score", "fold_curve"]


# ------------------------------------------------------------------------------------------------ grids
def size_grid(n_max: int, n_min: int, ratio: float = 1.25) -> np.ndarray:
    """Integer sizes n_max, n_max / ratio, n_max / ratio^2, ... >= n_min, ascending (consecutive ratio <= ``ratio``
    after rounding, duplicates removed)."""
    check_int("n_max", n_max, 2)
    check_int("n_min", n_min, 1, n_max)
    check_number("ratio", ratio, gt=1)
    sizes, n = [], float(n_max)
    while n >= n_min:
        sizes.append(int(round(n)))
        n /= ratio
    return np.array(sorted(set(sizes)), dtype=np.int64)


def snap(n: float | None, grid) -> int | None:
    """The smallest grid size >= n (clipped to the grid's range); None stays None."""
    if n is None or not math.isfinite(n):
        return None
    grid = np.asarray(grid)
    i = int(np.searchsorted(grid, n - 1e-9, side="left"))
    return int(grid[min(i, len(grid) - 1)])


# ---------------------------------------------------------------------------------------------- targets
@dataclass
class Target:
    """One task's target at one eps: ``n`` (None unless resolved), its bootstrap interval over seeds and why not."""
    eps: float
    n: int | None
    status: str                   # "resolved", "left-censored" (within eps at the smallest size) or "unresolved"
    plateau: float
    low: int | None
    high: int | None
    reason: str = ""


def _first_within(mean_acc: np.ndarray, eps: float) -> int:
    """Index of the smallest size whose mean accuracy and every larger size's are >= plateau - eps."""
    ok = mean_acc >= mean_acc[-1] - eps
    bad = np.flatnonzero(~ok)
    return 0 if len(bad) == 0 else int(bad[-1] + 1)


def target(sizes, accuracy, eps: float, plateau_factor: float = 4.0, n_boot: int = 500, seed: int = 0) -> Target:
    """The target n*(eps) of a learning curve ``accuracy`` (n_sizes, n_seeds) on ``sizes`` (ascending, last =
    the pool), with a 5-95 % bootstrap interval over seeds (seeds resampled with replacement as whole curves)."""
    check_number("eps", eps, gt=0)
    sizes = np.asarray(sizes, dtype=np.int64)
    acc = np.asarray(accuracy, dtype=np.float64)
    if acc.ndim != 2 or acc.shape[0] != len(sizes) or acc.shape[1] < 2:
        raise ParameterError("accuracy", acc.shape, f"(n_sizes = {len(sizes)}, n_seeds >= 2)")
    mean = acc.mean(axis=1)
    i = _first_within(mean, eps)
    n = int(sizes[i])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, acc.shape[1], (n_boot, acc.shape[1]))
    boot = np.array([sizes[_first_within(acc[:, p].mean(axis=1), eps)] for p in picks])
    low, high = (int(v) for v in np.quantile(boot, [0.05, 0.95], method="inverted_cdf"))
    if n > sizes[-1] / plateau_factor:
        return Target(eps, None, "unresolved", float(mean[-1]), low, high,
                      f"within {eps:g} of the plateau only from n = {n} > n_max / {plateau_factor:g} = "
                      f"{sizes[-1] / plateau_factor:.0f}: the plateau is not measured at >= {plateau_factor:g}x")
    if i == 0:
        return Target(eps, None, "left-censored", float(mean[-1]), low, high,
                      f"within {eps:g} of the plateau already at the smallest size {n}")
    return Target(eps, n, "resolved", float(mean[-1]), low, high)


def fold_curve(accuracy) -> tuple[np.ndarray, np.ndarray]:
    """(mean error, its standard error) over folds of a pilot's validation accuracies (n_sizes, n_folds)."""
    acc = np.asarray(accuracy, dtype=np.float64)
    err = 1.0 - acc.mean(axis=1)
    se = acc.std(axis=1, ddof=1) / math.sqrt(acc.shape[1])
    return err, se


# ------------------------------------------------------------------------------------------ power laws
@dataclass
class PowerLaw:
    """err(n) = a n^-b + c fitted by weighted least squares."""
    a: float
    b: float
    c: float

    def __call__(self, n):
        return self.a * np.asarray(n, dtype=np.float64) ** (-self.b) + self.c


def fit_power_law(sizes, errors, stderr=None, floor: float = 1e-3) -> PowerLaw | None:
    """WLS fit of err(n) = a n^-b + c (a > 0, b in (0, 3], c in [0, 1]), weights 1 / max(stderr, floor)^2;
    None when the fit fails or fewer than 3 sizes are given."""
    n = np.asarray(sizes, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    if len(n) < 3 or len(np.unique(n)) < 3:
        return None
    s = np.maximum(np.asarray(stderr, dtype=np.float64), floor) if stderr is not None else np.full(len(n), floor)

    def model(x, log_a, b, c):
        return np.exp(log_a) * x ** (-b) + c

    c0 = max(0.0, float(e.min()) * 0.5)
    a0 = max(float(e.max() - c0), 1e-4) * float(n.min()) ** 0.5
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            (log_a, b, c), _ = curve_fit(model, n, e, p0=(math.log(a0), 0.5, c0), sigma=s,
                                         bounds=([-30.0, 1e-3, 0.0], [30.0, 3.0, 1.0]), maxfev=5000)
    except (RuntimeError, ValueError):
        return None
    return PowerLaw(float(math.exp(log_a)), float(b), float(c))


def power_law_n(law: PowerLaw | None, eps: float, n_max: int) -> float | None:
    """The n with fitted err(n) = err(n_max) + eps, i.e. a n^-b = a n_max^-b + eps, in [1, n_max] (a fit that is
    within eps everywhere gives 1); None without a fit."""
    if law is None:
        return None
    return float(max(1.0, (n_max ** (-law.b) + eps / law.a) ** (-1.0 / law.b)))


def bootstrap_power_law(sizes, errors, stderr, eps_list, n_max: int, n_boot: int = 100, seed: int = 0,
                        level: float = 0.9) -> dict:
    """{eps: (point, low, high)}: the WLS power law's n and a ``level`` interval from a parametric bootstrap
    (each point redrawn from N(err_i, se_i^2), refitted); point/low/high None where the fit fails."""
    errors, stderr = np.asarray(errors, dtype=np.float64), np.asarray(stderr, dtype=np.float64)
    law = fit_power_law(sizes, errors, stderr)
    rng = np.random.default_rng(seed)
    draws = {eps: [] for eps in eps_list}
    scale = np.maximum(stderr, 1e-3)
    for _ in range(n_boot):
        fit = fit_power_law(sizes, np.clip(errors + scale * rng.standard_normal(len(errors)), 0, 1), stderr)
        for eps in eps_list:
            v = power_law_n(fit, eps, n_max)
            if v is not None:
                draws[eps].append(v)
    out = {}
    q = (1 - level) / 2
    for eps in eps_list:
        d = np.array(draws[eps])
        lo, hi = (float(np.quantile(d, q)), float(np.quantile(d, 1 - q))) if len(d) >= 10 else (None, None)
        out[eps] = (power_law_n(law, eps, n_max), lo, hi)
    return {"law": law, "predictions": out}


# ------------------------------------------------------------------------------------------- landscape
def k_closed(vbar: float, N: int, delta: float) -> float:
    """The continuous k at which the order-averaged curve V-bar N / ((N-1) k (k+1)) equals ``delta``."""
    c = vbar * N / ((N - 1) * delta)
    return float((-1 + math.sqrt(1 + 4 * c)) / 2)


def delta_for_target(vbar: float, N: int, n: float) -> float:
    """The threshold Delta at which ``k_closed`` gives n (the inverse of ``k_closed`` in delta)."""
    return float(vbar * N / ((N - 1) * n * (n + 1)))


# ------------------------------------------------------------------------------- calibrated predictors
def _design(features: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(features)), features])


def fit_calibration(log_targets, features, level: float = 0.9) -> dict | None:
    """Least squares of log n* (or another log quantity) on log-scale ``features`` (n, p; p = 0: a constant, the
    geometric mean), with the ``(1 -/+ level) / 2`` quantiles of the leave-one-out residuals (the interval a new
    task gets, split-conformal style). None with fewer than max(3, p + 2) usable rows (NaN rows are dropped)."""
    y = np.asarray(log_targets, dtype=np.float64)
    X = np.asarray(features, dtype=np.float64).reshape(len(y), -1)
    ok = np.isfinite(y) & np.all(np.isfinite(X), axis=1)
    y, X = y[ok], X[ok]
    if len(y) < max(3, X.shape[1] + 2):
        return None
    coef = np.linalg.lstsq(_design(X), y, rcond=None)[0]
    residuals = []
    for j in range(len(y)):
        rest = np.arange(len(y)) != j
        c = np.linalg.lstsq(_design(X[rest]), y[rest], rcond=None)[0]
        residuals.append(float(y[j] - (_design(X[j:j + 1]) @ c)[0]))
    q = (1 - level) / 2
    lo, hi = np.quantile(residuals, [q, 1 - q])
    return {"coef": coef.tolist(), "residual_low": float(lo), "residual_high": float(hi), "n_tasks": int(len(y)),
            "level": level}


def apply_calibration(cal: dict | None, features) -> tuple[float, float, float] | None:
    """(point, low, high) on the log scale for one task's features; None without a calibration or features."""
    x = np.atleast_1d(np.asarray(features, dtype=np.float64))
    if cal is None or not np.all(np.isfinite(x)):
        return None
    point = float(_design(x.reshape(1, -1))[0] @ np.asarray(cal["coef"]))
    return point, point + cal["residual_low"], point + cal["residual_high"]


def calibrated(log_targets, features, families, level: float = 0.9) -> list[tuple[float, float, float] | None]:
    """Leave-one-family-out: for each task, ``fit_calibration`` on the tasks of the other families only, applied
    to its features; (point, low, high) as sizes (exp of the log scale) or None."""
    y = np.asarray(log_targets, dtype=np.float64)
    X = np.asarray(features, dtype=np.float64).reshape(len(y), -1)
    fam = np.asarray(families)
    out = []
    for i in range(len(y)):
        other = fam != fam[i]
        r = apply_calibration(fit_calibration(y[other], X[other], level), X[i])
        out.append(None if r is None else tuple(math.exp(v) for v in r))
    return out


# ------------------------------------------------------------------------------------------------ scores
def score(predicted, low, high, targets, reference: dict | None = None) -> dict:
    """Scores of one predictor over tasks with resolved targets.

    ``predicted``/``low``/``high``/``targets``: per task (predictions already on the task's grid). Returns the
    median and 90th percentile of |log2(predicted / target)|, the share within 2x, the interval coverage (share of
    targets inside [low, high]; a task without an interval counts as not covered) and, for each named
    ``reference`` errors array, a one-sided paired Wilcoxon signed-rank p-value (H1: this predictor's |log2| errors
    are smaller)."""
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    err = np.abs(np.log2(p / t))
    lo = np.array([np.nan if v is None else v for v in low], dtype=np.float64)
    hi = np.array([np.nan if v is None else v for v in high], dtype=np.float64)
    covered = (lo <= t) & (t <= hi)
    out = {"n_tasks": int(len(t)), "median_abs_log2": float(np.median(err)),
           "p90_abs_log2": float(np.quantile(err, 0.9)), "within_2x": float(np.mean(err <= 1.0)),
           "coverage": float(np.mean(covered)), "errors": err.tolist(), "wilcoxon_p": {}}
    for name, other in (reference or {}).items():
        d = err - np.asarray(other, dtype=np.float64)
        out["wilcoxon_p"][name] = 1.0 if np.all(d == 0) else float(wilcoxon(d, alternative="less").pvalue)
    return out
