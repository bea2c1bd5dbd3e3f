"""Stage of notebook 05: slopes, theory vs Monte Carlo, Delta_k vs L_k, the sufficient sample size with its
uncertainty, real pilots, the learning-curve competitor and the calibration Delta*, and the R = 0 curves with the
Hessian-norm bound."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from lib.core import bounds, hessian, models
from lib.core import convergence as cv
from lib.core import sample_size as ss
from lib.core.sampling import make_sampler
from lib.core.subspace import SubspaceLosses
from lib.core.tensors import n_params, torch_threads
from lib.core.train import TRAINER, evaluate, train
from lib.infra import data
from lib.infra.config import Common, Convergence, MonteCarlo, Train
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore, atomic_write_json
from lib.stages import folder
from lib.stages.base import cached, load, run_missing, run_name, trained_run
from lib.stages.monte_carlo import CURVES, group, load_curve, load_plan, load_terms
from lib.stages.spectrum import FOLDER as SPECTRA
from lib.stages.spectrum import spectrum_seeds
from lib.stages.train import FOLDER as TRAINED
from lib.stages.train import recipe_of, train_one, training_params, training_task

ANALYSIS = folder("convergence", "analysis")
PILOTS = folder("convergence", "pilots")
LEARNING = folder("convergence", "learning_curve")
R0 = folder("convergence", "r0")
CNN_BOUND = folder("convergence", "cnn_bound")
TABLES = ("slopes", "theory", "loss_correlation", "learning_curve", "sample_size", "pilots", "calibration",
          "predictors", "summary", "r0", "cnn_bound")


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


def learning_curve_rows(store: ResultStore, common: Common, section: Convergence) -> list[dict]:
    """Test accuracy and loss of the recipe trained on the first n samples, for every n of ``learning_sizes`` and
    every seed (the main trained model is reused where n = n_train). Missing trainings run ``common.workers`` at
    a time, the largest first."""
    points = []
    for ds in common.datasets:
        for m in section.learning_models:
            for seed in common.seeds:
                run, recipe = recipe_of(store, ds, m, common.seeds[0])
                main = store.meta(TRAINED, run_name(ds, m, seed))
                for n in section.learning_sizes:
                    params = training_params(ds, m, seed, int(n), run["data_seed"], recipe)
                    reuse = main if main is not None and main["params"] == params else None
                    points.append(((ds, m, seed, n), params, reuse))
    trained = iter(run_missing(store, [training_task(store, p, device=common.device, progress=common.progress,
                                                     result_folder=LEARNING, name=f"{run_name(*key[:3])}_n{key[3]}")
                                       for key, p, reuse in points if reuse is None],
                               train_one, common.workers, cost=lambda p: p["n_train"], progress=common.progress,
                               desc="learning-curve trainings"))
    rows = []
    for (ds, m, seed, n), _, main in points:
        res = {**main["summary"], "seconds": main["seconds"]} if main is not None else next(trained)
        rows.append({"dataset": ds, "model": m, "seed": seed, "n": n,
                     "test_accuracy": res["test_accuracy"], "test_loss": res["test_loss"],
                     "train_loss": res["train_loss"], "seconds": res["seconds"]})
    return rows


def pilot_estimate(x: torch.Tensor, y: torch.Tensor, n0: int, model_name: str, seed: int, recipe, D: int,
                   sigma: float, n_thetas: int, x_test: torch.Tensor, y_test: torch.Tensor, *,
                   device: str = "cpu", tol: float = 1e-3, gap_thetas: int = 8) -> tuple[dict, dict]:
    """A real pilot on the first ``n0`` samples of (x, y) only: train the recipe there, take the top-D Hessian
    subspace of the pilot's own loss, and estimate V-bar by Monte Carlo over those n0 samples at ``sigma`` and at
    the pilot's own loss-gap sigma. Samples beyond n0 are sliced away before anything is computed.
    Returns (payload with the pilot's weights, summary with V-bar values and costs)."""
    xp, yp = x[:n0], y[:n0]
    dev = resolve_device(device)
    t0 = time.perf_counter()
    net = models.build(model_name, seed)
    train(net, xp, yp, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed, device=dev,
          progress=False)
    t_train = time.perf_counter() - t0
    net = net.to(dev)
    op = hessian.HessianOperator(net, xp.to(dev), yp.to(dev))
    top = hessian.top_eigenpairs(op, D, tol=tol, seed=seed)
    basis = top.eigenvectors.to(dev)
    on_train, on_test = evaluate(net, xp, yp, device=dev), evaluate(net, x_test, y_test, device=dev)
    evaluate_losses = SubspaceLosses(net, xp.to(dev), yp.to(dev), basis)
    z = make_sampler("gaussian", sigma=1.0).sample(n_thetas, D, seed=seed)
    base = float(evaluate_losses(torch.zeros(1, D, dtype=torch.float64)).double().mean())
    n_forward = [1]

    def vbar_at(scale: float) -> float:
        losses = evaluate_losses(scale * z).double()
        n_forward[0] += n_thetas
        return float(losses.var(dim=1, unbiased=False).mean())

    zg = z[:gap_thetas]

    def rise(scale: float) -> float:
        n_forward[0] += len(zg)
        return float(evaluate_losses(scale * zg).double().mean()) - base

    gap = float(on_test["loss"] - on_train["loss"])
    guess = float(np.sqrt(2 * max(gap, 1e-6) / max(float(top.eigenvalues.sum()), 1e-12)))
    sigma_gap = ss.solve_increasing(rise, gap, guess / 4, guess * 4, rel_tol=0.02) if gap > 0 else None
    summary = {"n0": n0, "seed": seed, "vbar_sigma": vbar_at(sigma), "sigma": sigma,
               "sigma_gap": sigma_gap, "vbar_gap": vbar_at(sigma_gap) if sigma_gap else None,
               "gap": gap, "train_accuracy": on_train["accuracy"], "test_accuracy": on_test["accuracy"],
               "lambda_1": float(top.eigenvalues[0]), "cost": {
                   "trainings": 1, "training_samples_seen": n0 * recipe.epochs, "hessian_products": top.hvp_count,
                   "forward_passes_n0": n_forward[0], "train_seconds": t_train,
                   "seconds": time.perf_counter() - t0}}
    payload = {"model": model_name, "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
               "eigenvalues": top.eigenvalues.double().cpu()}
    return payload, summary


def pilot_params(dataset: str, model: str, seed: int, n0: int, data_seed: int, recipe, D: int, sigma: float,
                 n_thetas: int) -> dict:
    """The parameters that define a pilot (its identity in the result store)."""
    return {"dataset": dataset, "model": model, "seed": seed, "n0": n0, "data_seed": data_seed,
            "recipe": dataclasses.asdict(recipe), "trainer": TRAINER, "D": D, "sigma": sigma, "n_thetas": n_thetas}


def pilot_one(store: ResultStore, params: dict, *, device: str = "cpu") -> dict:
    """One cached pilot (``pilot_estimate`` on the first n0 samples of the insertion order), computed with the
    recipe's intra-op threads; returns its summary."""
    p = params
    recipe = Train(**p["recipe"])

    def compute():
        with torch_threads(recipe.threads):
            x, y = data.training_subset(p["dataset"], p["n0"], p["data_seed"])
            xt, yt = data.load(p["dataset"], "test")
            return pilot_estimate(x, y, p["n0"], p["model"], p["seed"], recipe, p["D"], p["sigma"],
                                  p["n_thetas"], xt, yt, device=device)

    summary, _ = cached(store, PILOTS, pilot_name(p), p, compute)
    return summary


def pilot_name(params: dict) -> str:
    return f"{run_name(params['dataset'], params['model'], params['seed'])}_n{params['n0']}"


def pilot_rows(store: ResultStore, common: Common, section: Convergence, mc_section_D: int,
               mc_sigma: float) -> list[dict]:
    """Pilots for every (dataset, model, seed) with a spectrum and every n0 of ``pilot_sizes``; cached, the missing
    ones computed ``common.workers`` at a time (the largest n0 first)."""
    specs = []
    for ds in common.datasets:
        for m in common.models:
            run, recipe = recipe_of(store, ds, m, common.seeds[0])
            for seed in spectrum_seeds(m, common.seeds, common.spectrum_max_seeds):
                for n0 in section.pilot_sizes:
                    specs.append(pilot_params(ds, m, seed, n0, run["data_seed"], recipe, mc_section_D, mc_sigma,
                                              section.pilot_samples))
    summaries = run_missing(store, [{"folder": PILOTS, "name": pilot_name(p), "params": p,
                                     "kwargs": {"store": store, "params": p, "device": common.device}}
                                    for p in specs], pilot_one, common.workers, cost=lambda p: p["n0"],
                            progress=common.progress, desc="pilots")
    return [{"dataset": p["dataset"], "model": p["model"], **summary} for p, summary in zip(specs, summaries)]


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
                        "delta_star": float(np.exp(np.mean(np.log(stars)))) if stars and len(stars) == len(cal)
                        else None})
    return out


def r0_rows(store: ResultStore, common: Common, section: Convergence) -> list[dict]:
    """Kiselev & Grabovoy at R = 0 for bias-free ReLU MLPs of several widths/depths: trained w*, the mean over
    random orders of |L_{k+1} - L_k|(w*), their Hessian-norm bound and measured ||Hess l_i||_2 on a few samples.
    Batch size and learning rate are those of the first main run."""
    sec, seed = section, common.seeds[0]
    _, recipe = recipe_of(store, common.datasets[0], common.models[0], seed)
    x, y = data.training_subset(sec.r0_dataset, sec.r0_n_train, common.data_seed)
    rows = []
    for hidden in sec.r0_architectures:
        hidden = [int(h) for h in hidden]
        name = f"{sec.r0_dataset}_mlp{'-'.join(map(str, hidden))}_nobias_s{seed}"
        params = {"dataset": sec.r0_dataset, "hidden": hidden, "n_train": sec.r0_n_train,
                  "data_seed": common.data_seed, "n_orders": sec.r0_orders, "n_hessian": sec.r0_hessian_samples,
                  "epochs": sec.r0_epochs, "batch_size": recipe.batch_size, "lr": recipe.lr, "seed": seed,
                  "trainer": TRAINER}

        def compute(hidden=hidden):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = models.mlp(hidden, bias=False)
            train(net, x, y, epochs=sec.r0_epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed,
                  progress=common.progress)
            with torch.no_grad():
                losses = torch.nn.functional.cross_entropy(net(x), y, reduction="none").double()
            curve = cv.r0_curve(losses, sec.r0_orders, seed=seed)
            consts = bounds.bound_constants(net, x)
            bound = bounds.hessian_norm_bound(**consts)
            idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:sec.r0_hessian_samples]
            idx = idx.tolist()
            norms = bounds.per_sample_hessian_norms(net, x, y, idx, tol=1e-4, seed=seed)
            M_l = float(losses.max())
            payload = {"k": curve["k"], "mean": curve["mean"], "stderr": curve["stderr"],
                       "bound_curve": bounds.loss_difference_bound(curve["k"], M_l, bound, R=0.0),
                       "hessian_norms": norms, "hessian_indices": idx, "losses": losses.numpy()}
            summary = {"hidden": hidden, "n_params": n_params(net), **consts, "hessian_bound": bound,
                       "max_measured_norm": float(norms.max()), "M_l": M_l,
                       "slope": cv.fit_slope(curve["k"], curve["mean"], k_min=10).slope}
            return payload, summary

        summary, _ = cached(store, R0, name, params, compute)
        rows.append({"name": name, **summary})
    return rows


def cnn_bound_rows(store: ResultStore, common: Common, section: Convergence) -> list[dict]:
    """The CNN bound of Meshkov, Kiselev & Grabovoy (their Lemma 5: the Gauss-Newton part of the per-sample Hessian)
    against the measured norms of that part and of the full per-sample Hessian, for the first seed of every CNN
    run, on ``cnn_bound_samples`` samples."""
    rows, seed = [], common.seeds[0]
    for ds in common.datasets:
        for m in [m for m in common.models if m == "cnn"]:
            net, x, y, upstream = trained_run(store, ds, m, seed)
            params = {"dataset": ds, "model": m, "seed": seed, "n_samples": section.cnn_bound_samples,
                      "upstream": upstream}

            def compute(net=net, x=x, y=y):
                out = bounds.cnn_bound_comparison(net, x, y, section.cnn_bound_samples, seed)
                summary = {k: out[k] for k in ("bound", "bound_printed", "bound_exact_norms", "bias_free")}
                summary.update({"outer_norms_max": out["outer_max"], "outer_norms_median": out["outer_median"],
                                "full_norms_max": out["full_max"], "full_norms_median": out["full_median"]})
                return out, summary

            summary, _ = cached(store, CNN_BOUND, run_name(ds, m, seed), params, compute)
            rows.append({"dataset": ds, "model": m, "seed": seed, **summary})
    return rows


def run(store: ResultStore, common: Common, section: Convergence, monte_carlo: MonteCarlo | None = None
        ) -> dict[str, list[dict]]:
    """Every table of the stage, each saved in ``analysis/<table>.json``; the headline also as
    ``results/<profile>/summary.json``. ``monte_carlo`` (D and sigma of the pilots) defaults to the plan's main
    Hessian curve."""
    curves = load_plan(store)
    first = next(s for g, s in curves if g == "main" and s.subspace == "hessian")
    D, sigma = (monte_carlo.D, monte_carlo.sigma) if monte_carlo else (first.D, first.sigma)
    params = {**dataclasses.asdict(common), **dataclasses.asdict(section)}
    tables: dict[str, list[dict]] = {}

    def make(name, rows):
        tables[name] = rows
        save_table(store, name, rows, params)

    make("slopes", slope_rows(store, curves))
    make("theory", theory_rows(store, curves))
    make("loss_correlation", loss_correlation_rows(store, curves))
    make("learning_curve", learning_curve_rows(store, common, section))
    make("sample_size", sample_size_rows(store, curves, section, tables["learning_curve"]))
    make("pilots", pilot_rows(store, common, section, D, sigma))
    calibration, predictors = predictor_rows(store, curves, common, section, tables["learning_curve"],
                                             tables["pilots"], tables["sample_size"])
    make("calibration", calibration)
    make("predictors", predictors)
    make("summary", summary_rows(store, curves, common, section, calibration, predictors, tables["pilots"]))
    atomic_write_json(store.root / "summary.json", tables["summary"])
    make("r0", r0_rows(store, common, section))
    make("cnn_bound", cnn_bound_rows(store, common, section))
    return tables


def save_table(store: ResultStore, name: str, rows, params: dict) -> None:
    store.save(ANALYSIS, name, {"rows": rows}, params, ext="json")


def load_table(store: ResultStore, name: str) -> list[dict]:
    return load(store, ANALYSIS, name).payload["rows"]


def load_r0_curve(store: ResultStore, name: str) -> dict:
    return load(store, R0, name).payload
