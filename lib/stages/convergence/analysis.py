"""Notebook 05's analysis of notebook 04's curves: slopes, theory vs Monte Carlo, Delta_k vs L_k, the sufficient
sample size K(Delta) with its uncertainty, the calibration Delta* with the two predictors of the sample size, and
the machine-readable headline."""
from __future__ import annotations

import dataclasses

import numpy as np

from lib.core.sample_size import decay as cv
from lib.core.sample_size import sufficient as ss
from lib.infra.config import Common, Convergence
from lib.infra.results import ResultStore
from lib.records.monte_carlo import CURVES, group, load_curve, load_terms
from lib.records.runs import load, run_name
from lib.records.spectrum import FOLDER as SPECTRA
from lib.records.train import FOLDER as TRAINED


def slope_rows(store: ResultStore, curves) -> list[dict]:
    """Log-log slope, k^2 Delta_k quartiles and V-bar of every main curve."""
    rows = []
    for s in group(curves, "main"):
        c = load_curve(store, s)
        fit = cv.fit_slope(c["k"], c["delta"], k_min=10)
        k2 = cv.k2_summary(c["k"], c["delta"], c["stderr"], k_min=10)
        gradient = None
        if s.theory and s.subspace == "hessian":   # |P grad L_N(w*)|: mean over samples of the subspace gradients
            gradient = float(np.linalg.norm(np.asarray(load_terms(store, s).b, dtype=np.float64).mean(0)))
        rows.append({"dataset": s.dataset, "model": s.model, "seed": s.seed, "subspace": s.subspace, "D": s.D,
                     "sigma": s.sigma, "slope": fit.slope, "slope_se": fit.slope_stderr, "k2_median": k2["median"],
                     "k2_q25": k2["q25"], "k2_q75": k2["q75"], "vbar": c["vbar"], "vbar_se": c["vbar_stderr"],
                     "subspace_gradient_norm": gradient})
    return rows


def theory_rows(store: ResultStore, curves) -> list[dict]:
    """Per curve with a quadratic prediction: median MC/Q_k and MC/T_k over k, and the share of k where the
    Monte-Carlo value is within 3 standard errors of Q_k."""
    rows = []
    for s in [s for s in dict.fromkeys(s for _, s in curves) if s.theory]:
        c = load_curve(store, s)
        ratio = c["delta"] / c["Q"]
        within = np.abs(c["delta"] - c["Q"]) <= 3 * c["stderr"]
        spikes = c["k"] * (c["k"] + 1) * c["delta"]
        top = spikes >= np.quantile(spikes, 0.99)       # the top-1 % spikes of k(k+1) Delta_k
        row = {"dataset": s.dataset, "model": s.model, "seed": s.seed, "scale": s.scale, "subspace": s.subspace,
               "D": s.D, "distribution": s.distribution, "sigma": s.sigma, "estimator": s.estimator,
               "median_mc_over_q": float(np.median(ratio)), "share_within_3se": float(within.mean()),
               "median_mc_over_q_bulk": float(np.median(ratio[~top])),
               "median_mc_over_q_spikes": float(np.median(ratio[top])),
               "vbar_q_over_mc": float(c["vbar_quadratic"]["vbar"] / c["vbar"]) if c["vbar"] > 0 else None}
        if c.get("surrogate") is not None:
            sur_ratio = c["delta"] / np.maximum(c["surrogate"], 1e-300)
            row.update({"median_mc_over_surrogate": float(np.median(sur_ratio)),
                        "vbar_surrogate_over_mc": float(c["surrogate_vbar"] / c["vbar"]) if c["vbar"] > 0 else None,
                        "surrogate_seconds": load(store, CURVES, s.name).meta["summary"].get("surrogate_seconds")})
        if c.get("T") is not None:
            row["median_mc_over_t"] = float(np.median(c["delta"] / np.maximum(c["T"], 1e-300)))
        rows.append(row)
    return rows


def loss_correlation_rows(store: ResultStore, curves) -> list[dict]:
    """Spearman correlation over k of Delta_k with L_k(w*) for each main curve."""
    rows = []
    for s in group(curves, "main"):
        c = load_curve(store, s)
        L = np.cumsum(c["losses0"]) / np.arange(1, len(c["losses0"]) + 1)
        k = np.asarray(c["k"], dtype=np.float64)
        r = cv.spearman(c["delta"], L[:-1])
        detrended = cv.spearman(k * (k + 1) * c["delta"], L[:-1])     # the 1/(k(k+1)) trend removed
        trend = cv.spearman(k, L[:-1])
        rows.append({"dataset": s.dataset, "model": s.model, "seed": s.seed, "subspace": s.subspace, "rho": r["rho"],
                     "p_value": r["p_value"], "n": r["n"], "rho_detrended": detrended["rho"],
                     "rho_k_loss": trend["rho"]})
    return rows


def _interp_accuracy(sizes, accuracy, n) -> float | None:
    """Accuracy at size n interpolated linearly in log n between measured sizes (None outside them)."""
    if n is None or not sizes or not min(sizes) <= n <= max(sizes):
        return None
    return float(np.interp(np.log(n), np.log(sizes), accuracy))


def _learning_means(learning: list[dict], dataset: str, model: str) -> tuple[list, list, list]:
    """(sizes, mean test accuracy over seeds, per-seed accuracies) of one (dataset, model) learning curve."""
    rows = [r for r in learning if (r["dataset"], r["model"]) == (dataset, model)]
    sizes = sorted({r["n"] for r in rows})
    per = [[r["test_accuracy"] for r in rows if r["n"] == n] for n in sizes]
    return sizes, [float(np.mean(a)) for a in per], per


def sample_size_rows(store: ResultStore, curves, section: Convergence, learning: list[dict]) -> list[dict]:
    """K(Delta) of every main and loss-gap Hessian curve: the given order's K, its conservative K from the
    simultaneous band, K over the R random orders (median, 5-95 %, conformal upper bound, share reached), the
    closed form of the order-averaged curve, and the test accuracy the learning curve gives at K."""
    rows = []
    for s in [s for g, s in curves if g in ("main", "gap") and s.subspace == "hessian"]:
        c = load_curve(store, s)
        k, N = c["k"], c["N"]
        name = run_name(s.dataset, s.model, s.seed)
        full = load(store, TRAINED, name).meta["summary"]
        wall = load(store, SPECTRA, name).meta["seconds"] + load(store, CURVES, s.name).meta["seconds"]
        orders = (None if c.get("order_suffix_max") is None else
                  ss.k_per_order(k, np.asarray(c["order_suffix_max"], dtype=np.float64), section.delta_grid))
        sizes, acc, _ = _learning_means(learning, s.dataset, s.model)
        for g, thr in enumerate(section.delta_grid):
            K = cv.first_k_below(k, c["delta"], thr)
            band = (None if c.get("band_multiplier") is None else
                    cv.first_k_below(k, c["delta"] + c["band_multiplier"] * c["band_se"], thr))
            summary = ss.order_summary(orders[:, g]) if orders is not None else None
            rows.append({
                "dataset": s.dataset, "model": s.model, "seed": s.seed, "scale": s.scale, "sigma": s.sigma,
                "n_params": full.get("n_params"), "N": N, "delta": thr, "vbar": c["vbar"],
                "K_fixed": K, "K_band": band, "band_multiplier": c.get("band_multiplier"),
                "K_order_median": summary.median if summary else None,
                "K_order_q05": summary.q05 if summary else None, "K_order_q95": summary.q95 if summary else None,
                "K_order_upper": summary.upper if summary else None,
                "orders_reached": summary.reached if summary else None, "n_orders": summary.n if summary else 0,
                "K_closed": cv.k_closed_form(c["vbar"], N, thr),
                "test_accuracy_N": full["test_accuracy"], "test_accuracy_K": _interp_accuracy(sizes, acc, K),
                "wall_seconds": wall})
    return rows


def pooled_k(store: ResultStore, curves, dataset: str, model: str, scale: str, threshold: float) -> ss.OrderSummary:
    """K(Delta) over random orders x training seeds of one (dataset, model, scale): the pooled order values."""
    values = []
    for s in [s for g, s in curves if g in ("main", "gap") and s.subspace == "hessian" and s.scale == scale
              and (s.dataset, s.model) == (dataset, model)]:
        c = load_curve(store, s)
        if c.get("order_suffix_max") is not None:
            values.append(ss.k_per_order(c["k"], np.asarray(c["order_suffix_max"], np.float64), [threshold])[:, 0])
    return ss.order_summary(np.concatenate(values))


def predictor_rows(store: ResultStore, curves, common: Common, section: Convergence, learning: list[dict],
                   pilots: list[dict], sizes_rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(calibration rows, predictor rows).

    Calibration, per run and scale: the n at which the measured learning curve (mean over seeds) comes within
    each accuracy gap of its plateau (its largest size), and Delta* = the threshold at which the order-averaged
    curve of that run gives K = n (closed form; None where the curve never comes within the gap).
    Predictors, per (dataset, model, n0, gap): the power law a n^-b + c fitted to the learning curve on sizes
    <= n0 (every seed), and the landscape pilot K(Delta*) with Delta* calibrated on the OTHER (dataset, model)
    runs (geometric mean, leave-one-out), each with what it cost.
    """
    calibration = []
    main = {(r["dataset"], r["model"], r["seed"], r["scale"]): r for r in sizes_rows}
    for (ds, m, seed, scale), r in sorted(main.items()):
        sizes, acc, _ = _learning_means(learning, ds, m)
        for gap in section.accuracy_gaps:
            n_obs = ss.observed_n_within(sizes, acc, gap) if sizes else None
            calibration.append({"dataset": ds, "model": m, "seed": seed, "scale": scale, "gap": gap,
                                "sigma": r["sigma"], "vbar": r["vbar"], "N": r["N"], "n_within": n_obs,
                                "plateau": acc[-1] if acc else None, "n_max": sizes[-1] if sizes else None,
                                "delta_star": ss.delta_for_k(r["vbar"], r["N"], n_obs) if n_obs else None})
    predictors = []
    for ds in common.datasets:
        for m in section.learning_models:
            sizes, acc, per = _learning_means(learning, ds, m)
            lc = [r for r in learning if (r["dataset"], r["model"]) == (ds, m)]
            for gap in section.accuracy_gaps:
                n_obs = ss.observed_n_within(sizes, acc, gap)
                for n0 in section.pilot_sizes:
                    used = [r for r in lc if r["n"] <= n0]
                    try:
                        law = ss.fit_power_law([r["n"] for r in used], [1 - r["test_accuracy"] for r in used])
                        n_lc = ss.n_within(law, gap)
                    except (ValueError, RuntimeError):
                        law, n_lc = None, None
                    row = {"dataset": ds, "model": m, "gap": gap, "n0": n0, "n_within": n_obs,
                           "n_learning_curve": n_lc, "power_law": dataclasses.asdict(law) if law else None,
                           "cost_learning_curve": {"trainings": len(used),
                                                   "training_samples_seen": int(sum(r["n"] for r in used)),
                                                   "seconds": float(sum(r["seconds"] for r in used))}}
                    for scale in sorted({r["scale"] for r in calibration}):
                        others = [c["delta_star"] for c in calibration if c["scale"] == scale and c["gap"] == gap
                                  and (c["dataset"], c["model"]) != (ds, m) and c["delta_star"]]
                        mine = [p for p in pilots if (p["dataset"], p["model"], p["n0"]) == (ds, m, n0)]
                        key = "vbar_sigma" if scale == "sigma" else "vbar_gap"
                        vbars = [p[key] for p in mine if p[key] is not None]
                        d_star = float(np.exp(np.mean(np.log(others)))) if others else None
                        row[f"delta_star_{scale}"] = d_star
                        row[f"n_landscape_{scale}"] = (float(np.median([cv.k_closed_form(v, common.n_train, d_star)
                                                                         for v in vbars]))
                                                       if d_star and vbars else None)
                    mine = [p for p in pilots if (p["dataset"], p["model"], p["n0"]) == (ds, m, n0)]
                    row["cost_landscape"] = {
                        "trainings": len(mine),
                        "training_samples_seen": int(sum(p["cost"]["training_samples_seen"] for p in mine)),
                        "hessian_products": int(sum(p["cost"]["hessian_products"] for p in mine)),
                        "forward_passes_n0": int(sum(p["cost"]["forward_passes_n0"] for p in mine)),
                        "seconds": float(sum(p["cost"]["seconds"] for p in mine))}
                    predictors.append(row)
    return calibration, predictors


def summary_rows(store: ResultStore, curves, common: Common, section: Convergence, calibration, predictors,
                 pilots) -> list[dict]:
    """The machine-readable headline (``results/<profile>/summary.json``): one object per dataset x model x
    scale x Delta."""
    out = []
    n0 = max(section.pilot_sizes)
    gap = min(section.accuracy_gaps, key=lambda g: abs(g - 0.01))
    for ds in common.datasets:
        for m in common.models:
            scales = sorted({s.scale for g, s in curves if g in ("main", "gap") and (s.dataset, s.model) == (ds, m)
                             and s.subspace == "hessian"})
            for scale in scales:
                sigmas = sorted({s.sigma for g, s in curves if g in ("main", "gap") and s.subspace == "hessian"
                                 and (s.dataset, s.model, s.scale) == (ds, m, scale)})
                cal = [c for c in calibration
                       if (c["dataset"], c["model"], c["scale"], c["gap"]) == (ds, m, scale, gap)]
                stars = [c["delta_star"] for c in cal if c["delta_star"]]
                pred = next((p for p in predictors
                             if (p["dataset"], p["model"], p["n0"], p["gap"]) == (ds, m, n0, gap)), None)
                key = "vbar_sigma" if scale == "sigma" else "vbar_gap"
                vb = [p[key] for p in pilots if (p["dataset"], p["model"], p["n0"]) == (ds, m, n0) and p[key]]
                for thr in section.delta_grid:
                    k = pooled_k(store, curves, ds, m, scale, thr)
                    out.append({
                        "dataset": ds, "model": m, "scale": scale if scale == "sigma" else "loss_gap",
                        "sigma": sigmas if len(sigmas) > 1 else sigmas[0], "delta": thr,
                        "K_median": k.median, "K_q05": k.q05, "K_q95": k.q95, "K_n": k.n, "K_reached": k.reached,
                        "pilot_n0": n0,
                        "K_pilot": float(np.median([cv.k_closed_form(v, common.n_train, thr) for v in vb])) if vb
                        else None,
                        "n_learning_curve": pred["n_learning_curve"] if pred else None,
                        "n_within_1pt": cal[0]["n_within"] if cal else None,
                        # right-censoring, shown the same way everywhere: a quantile of K not reached within N
                        # (its value is None) and a measured n at the largest learning-curve size (only bounded)
                        "K_median_censored": k.median is None, "K_q95_censored": k.q95 is None,
                        "n_within_1pt_censored": bool(cal and cal[0]["n_within"] is not None
                                                      and cal[0]["n_within"] >= max(section.learning_sizes)),
                        "delta_star": float(np.exp(np.mean(np.log(stars)))) if stars and len(stars) == len(cal)
                        else None})
    return out
