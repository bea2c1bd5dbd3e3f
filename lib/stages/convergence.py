"""Stage of notebook 05: slopes, theory vs Monte Carlo, Delta_k vs L_k, the sample-size table with validation,
the learning curve and the R = 0 curves with the Hessian-norm bound."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lib.core import bounds, models
from lib.core import convergence as cv
from lib.core.quadratic import PerSampleTerms, variance_quadratic
from lib.core.tensors import n_params
from lib.core.train import train
from lib.infra import data
from lib.infra.config import Common, Convergence
from lib.infra.results import ResultStore
from lib.stages import folder
from lib.stages.base import cached, load, run_name
from lib.stages.monte_carlo import CURVES, group, load_curve, load_plan, load_terms, sampler_for
from lib.stages.spectrum import FOLDER as SPECTRA
from lib.stages.train import FOLDER as TRAINED
from lib.stages.train import recipe_of, train_one, training_params

ANALYSIS = folder("convergence", "analysis")
VALIDATION = folder("convergence", "validation")
LEARNING = folder("convergence", "learning_curve")
R0 = folder("convergence", "r0")
TABLES = ("slopes", "theory", "loss_correlation", "sample_size", "learning_curve", "r0")


def slope_rows(store: ResultStore, curves) -> list[dict]:
    """Log-log slope, k^2 Delta_k quartiles and V-bar of every main curve."""
    rows = []
    for s in group(curves, "main"):
        c = load_curve(store, s)
        fit = cv.fit_slope(c["k"], c["delta"], k_min=10)
        k2 = cv.k2_summary(c["k"], c["delta"], c["stderr"], k_min=10)
        rows.append({"dataset": s.dataset, "model": s.model, "subspace": s.subspace, "D": s.D, "sigma": s.sigma,
                     "slope": fit.slope, "slope_se": fit.slope_stderr, "k2_median": k2["median"],
                     "k2_q25": k2["q25"], "k2_q75": k2["q75"], "vbar": c["vbar"], "vbar_se": c["vbar_stderr"]})
    return rows


def theory_rows(store: ResultStore, curves) -> list[dict]:
    """Per curve with a quadratic prediction: median MC/Q_k and MC/T_k over k, and the share of k where the
    Monte-Carlo value is within 3 standard errors of Q_k."""
    rows = []
    for s in [s for s in dict.fromkeys(s for _, s in curves) if s.theory]:
        c = load_curve(store, s)
        ratio = c["delta"] / c["Q"]
        within = np.abs(c["delta"] - c["Q"]) <= 3 * c["stderr"]
        row = {"dataset": s.dataset, "model": s.model, "subspace": s.subspace, "D": s.D,
               "distribution": s.distribution, "sigma": s.sigma, "estimator": s.estimator,
               "median_mc_over_q": float(np.median(ratio)), "share_within_3se": float(within.mean())}
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
        r = cv.spearman(c["delta"], L[:-1])
        rows.append({"dataset": s.dataset, "model": s.model, "subspace": s.subspace, "rho": r["rho"],
                     "p_value": r["p_value"], "n": r["n"]})
    return rows


def _pilot_fit(k, delta, k0, thr):
    try:
        return float(cv.pilot_prediction(k, delta, k0, thr).K)
    except ValueError:
        return None


def sample_size_rows(store: ResultStore, curves, section: Convergence, *, device: str = "cpu",
                     progress: bool = False) -> list[dict]:
    """The sample-size table: for each main Hessian curve and each Delta of the grid, K from Monte Carlo,
    conservative K, K from Q_k, K of the order-averaged curve (closed form), pilot K (power-law fit and
    quadratic V-bar on the first k0 samples) and test accuracy of the recipe trained on the first K samples."""
    rows, k0 = [], section.pilot_k0
    for s in [s for s in group(curves, "main") if s.subspace == "hessian"]:
        c = load_curve(store, s)
        k, N = c["k"], c["N"]
        if not 3 <= k0 < N:
            raise ValueError(f"convergence.pilot_k0={k0} must be in [3, N-1={N - 1}]")
        name = run_name(s.dataset, s.model, s.seed)
        full = load(store, TRAINED, name).meta["summary"]
        wall = load(store, SPECTRA, name).meta["seconds"] + load(store, CURVES, s.name).meta["seconds"]
        pilot_vbar = None
        if s.theory:
            terms = load_terms(store, s)
            head = PerSampleTerms(a=terms.a[:k0], b=terms.b[:k0], C=terms.C[:k0])
            pilot_vbar = variance_quadratic(head, sampler_for(s, c["eigenvalues"])).vbar
        run, recipe = recipe_of(store, s.dataset, s.model, s.seed)
        for thr in section.delta_grid:
            ss = cv.sufficient_sample_size(k, c["delta"], thr, stderr=c["stderr"])
            row = {"dataset": s.dataset, "model": s.model, "n_params": full.get("n_params"), "N": N,
                   "test_accuracy_N": full["test_accuracy"], "delta": thr, "K_mc": ss.K,
                   "K_conservative": ss.K_conservative,
                   "K_closed": cv.k_closed_form(c["vbar"], N, thr),
                   "K_q": cv.first_k_below(k, c["Q"], thr) if s.theory else None,
                   "K_pilot_fit": _pilot_fit(k, c["delta"], k0, thr),
                   "K_pilot_vbar": cv.k_closed_form(pilot_vbar, N, thr) if pilot_vbar is not None else None,
                   "wall_seconds": wall, "test_accuracy_K": None}
            if ss.K is not None and ss.K >= 2:
                params = training_params(s.dataset, s.model, s.seed, int(ss.K), run["data_seed"], recipe)
                res = train_one(store, params, device=device, progress=progress, result_folder=VALIDATION,
                                name=f"{name}_n{ss.K}")
                row["test_accuracy_K"] = res["test_accuracy"]
            rows.append(row)
    return rows


def learning_curve_rows(store: ResultStore, common: Common, section: Convergence) -> list[dict]:
    """Test accuracy of the recipe trained on the first n samples, for each n of ``learning_sizes``."""
    rows, seed = [], common.seeds[0]
    for ds in common.datasets:
        for m in section.learning_models:
            run, recipe = recipe_of(store, ds, m, seed)
            for n in section.learning_sizes:
                params = training_params(ds, m, seed, int(n), run["data_seed"], recipe)
                res = train_one(store, params, device=common.device, progress=common.progress,
                                result_folder=LEARNING, name=f"{run_name(ds, m, seed)}_n{n}")
                rows.append({"dataset": ds, "model": m, "n": n, "test_accuracy": res["test_accuracy"],
                             "train_loss": res["train_loss"]})
    return rows


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
                  "epochs": sec.r0_epochs, "batch_size": recipe.batch_size, "lr": recipe.lr, "seed": seed}

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


def run(store: ResultStore, common: Common, section: Convergence) -> dict[str, list[dict]]:
    """Every table of the stage, each saved in ``analysis/<table>.json`` with the section's parameters."""
    curves = load_plan(store)
    params = {**dataclasses.asdict(common), **dataclasses.asdict(section)}
    tables = {}
    for table, make in (("slopes", lambda: slope_rows(store, curves)),
                        ("theory", lambda: theory_rows(store, curves)),
                        ("loss_correlation", lambda: loss_correlation_rows(store, curves)),
                        ("sample_size", lambda: sample_size_rows(store, curves, section, device=common.device,
                                                                 progress=common.progress)),
                        ("learning_curve", lambda: learning_curve_rows(store, common, section)),
                        ("r0", lambda: r0_rows(store, common, section))):
        tables[table] = make()
        save_table(store, table, tables[table], params)
    return tables


def save_table(store: ResultStore, name: str, rows, params: dict) -> None:
    store.save(ANALYSIS, name, {"rows": rows}, params, ext="json")


def load_table(store: ResultStore, name: str) -> list[dict]:
    return load(store, ANALYSIS, name).payload["rows"]


def load_r0_curve(store: ResultStore, name: str) -> dict:
    return load(store, R0, name).payload
