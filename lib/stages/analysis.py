"""Stage functions of notebook 05: theory vs Monte Carlo, Delta_k vs L_k, sample-size table with validation,
learning curves and the R = 0 curves with the Hessian-norm bound (SCIENCE.md sections 4b-7)."""
from __future__ import annotations

import numpy as np
import torch

from lib.core import convergence as cv
from lib.infra import data
from lib.core import models as model_zoo
from lib.stages.experiments import CurveSpec, _sampler, group, load_curve, load_terms
from lib.stages.pipeline import cached, run_name, train_one, training_params
from lib.infra.results import ResultStore

ANALYSIS_STAGE = "analysis"
LEARNING_STAGE = "learning_curve"
VALIDATION_STAGE = "validation"
R0_STAGE = "r0"


def theory_table(store: ResultStore, plan) -> list[dict]:
    """Per curve with a quadratic prediction: median MC/Q_k and MC/T_k over k, and the share of k where the
    Monte-Carlo value is within 3 standard errors of Q_k."""
    rows = []
    specs = [s for s in dict.fromkeys(s for _, s in plan) if s.theory]
    for s in specs:
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


def loss_correlation(store: ResultStore, plan) -> list[dict]:
    """Spearman correlation over k of Delta_k with L_k(w*) for each main curve."""
    rows = []
    for s in group(plan, "main"):
        c = load_curve(store, s)
        L = np.cumsum(c["losses0"]) / np.arange(1, len(c["losses0"]) + 1)
        r = cv.spearman(c["delta"], L[:-1])
        rows.append({"dataset": s.dataset, "model": s.model, "subspace": s.subspace, "rho": r["rho"],
                     "p_value": r["p_value"], "n": r["n"]})
    return rows


def recipe_of(store: ResultStore, dataset: str, model: str, seed: int) -> dict:
    """The training recipe (n_train, data_seed, epochs, batch_size, lr) of a trained run."""
    p = store.meta("train", run_name(dataset, model, seed))
    if p is None:
        raise FileNotFoundError(f"no trained model {run_name(dataset, model, seed)}; run notebooks/01_train.py")
    return {k: p["params"][k] for k in ("n_train", "data_seed", "epochs", "batch_size", "lr")}


def sample_size_rows(store: ResultStore, plan, delta_grid, pilot_k0: int, *, device: str = "cpu",
                     progress: bool = False) -> list[dict]:
    """The sample-size table: for each main Hessian curve and each Delta of the grid, K from Monte Carlo,
    conservative K, K from Q_k, K of the order-averaged curve (closed form), pilot K (power-law fit and
    quadratic V-bar on the first k0 samples) and test accuracy of the recipe trained on the first K samples."""
    rows = []
    for s in [s for s in group(plan, "main") if s.subspace == "hessian"]:
        c = load_curve(store, s)
        k, N = c["k"], c["N"]
        if not 3 <= pilot_k0 < N:
            raise ValueError(f"pilot_k0={pilot_k0} must be in [3, N-1={N - 1}]")
        full = store.meta("train", run_name(s.dataset, s.model, s.seed))["summary"]
        spec_meta = store.meta("spectrum", run_name(s.dataset, s.model, s.seed))
        curve_meta = store.meta("curves", s.name)
        wall = spec_meta["seconds"] + curve_meta["seconds"]
        pilot_vbar = None
        if s.theory:
            terms = load_terms(store, s)
            from lib.core.quadratic import PerSampleTerms, variance_quadratic

            head = PerSampleTerms(a=terms.a[:pilot_k0], b=terms.b[:pilot_k0], C=terms.C[:pilot_k0])
            pilot_vbar = variance_quadratic(head, _sampler(s, c["eigenvalues"])).vbar
        r = recipe_of(store, s.dataset, s.model, s.seed)
        for thr in delta_grid:
            ss = cv.sufficient_sample_size(k, c["delta"], thr, stderr=c["stderr"])
            row = {"dataset": s.dataset, "model": s.model, "n_params": full.get("n_params"), "N": N,
                   "test_accuracy_N": full["test_accuracy"], "delta": thr, "K_mc": ss.K,
                   "K_conservative": ss.K_conservative,
                   "K_closed": cv.k_closed_form(c["vbar"], N, thr),
                   "K_q": cv.first_k_below(k, c["Q"], thr) if s.theory else None,
                   "K_pilot_fit": _safe_pilot(k, c["delta"], pilot_k0, thr),
                   "K_pilot_vbar": cv.k_closed_form(pilot_vbar, N, thr) if pilot_vbar is not None else None,
                   "wall_seconds": wall}
            row["test_accuracy_K"] = None
            if ss.K is not None and ss.K >= 2:
                params = training_params(s.dataset, s.model, s.seed, int(ss.K), r["data_seed"], r["epochs"],
                                         r["batch_size"], r["lr"])
                res = train_one(store, params, device=device, progress=progress, stage=VALIDATION_STAGE,
                                name=f"{run_name(s.dataset, s.model, s.seed)}_n{ss.K}")
                row["test_accuracy_K"] = res["test_accuracy"]
            rows.append(row)
    return rows


def _safe_pilot(k, delta, k0, thr):
    try:
        return float(cv.pilot_prediction(k, delta, k0, thr).K)
    except ValueError:
        return None


def learning_curve(store: ResultStore, datasets, models, seed: int, sizes, *, device: str = "cpu",
                   progress: bool = False) -> list[dict]:
    """Test accuracy of the recipe trained on the first n samples, for each n in ``sizes``."""
    rows = []
    for ds in datasets:
        for m in models:
            r = recipe_of(store, ds, m, seed)
            for n in sizes:
                params = training_params(ds, m, seed, int(n), r["data_seed"], r["epochs"], r["batch_size"], r["lr"])
                res = train_one(store, params, device=device, progress=progress, stage=LEARNING_STAGE,
                                name=f"{run_name(ds, m, seed)}_n{n}")
                rows.append({"dataset": ds, "model": m, "n": n, "test_accuracy": res["test_accuracy"],
                             "train_loss": res["train_loss"]})
    return rows


def r0_sweep(store: ResultStore, dataset: str, n_train: int, data_seed: int, architectures, *, n_orders: int,
             n_hessian: int, epochs: int, batch_size: int, lr: float, seed: int = 0, progress: bool = False) -> list[dict]:
    """Kiselev & Grabovoy at R = 0 for bias-free ReLU MLPs of several widths/depths: trained w*, the mean over
    random orders of |L_{k+1} - L_k|(w*), their Hessian-norm bound and measured ||Hess l_i||_2 on n_hessian samples."""
    from lib.core.train import train

    x, y = data.training_subset(dataset, n_train, data_seed)
    rows = []
    for hidden in architectures:
        hidden = [int(h) for h in hidden]
        name = f"{dataset}_mlp{'-'.join(map(str, hidden))}_nobias_s{seed}"
        params = {"dataset": dataset, "hidden": hidden, "n_train": n_train, "data_seed": data_seed,
                  "n_orders": n_orders, "n_hessian": n_hessian, "epochs": epochs, "batch_size": batch_size,
                  "lr": lr, "seed": seed}

        def compute(hidden=hidden):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = model_zoo.mlp(hidden, bias=False)
            train(net, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
            with torch.no_grad():
                losses = torch.nn.functional.cross_entropy(net(x), y, reduction="none").double()
            curve = cv.r0_curve(losses, n_orders, seed=seed)
            consts = cv.bound_constants(net, x)
            bound = cv.hessian_norm_bound(**consts)
            idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_hessian].tolist()
            norms = cv.per_sample_hessian_norms(net, x, y, idx, tol=1e-4, seed=seed)
            M_l = float(losses.max())
            payload = {"k": curve["k"], "mean": curve["mean"], "stderr": curve["stderr"],
                       "bound_curve": cv.loss_difference_bound(curve["k"], M_l, bound, R=0.0),
                       "hessian_norms": norms, "hessian_indices": idx, "losses": losses.numpy()}
            summary = {"hidden": hidden, "n_params": model_zoo.n_params(net), **consts, "hessian_bound": bound,
                       "max_measured_norm": float(norms.max()), "M_l": M_l,
                       "slope": cv.fit_slope(curve["k"], curve["mean"], k_min=10).slope}
            return payload, summary

        summary, _ = cached(store, R0_STAGE, name, params, compute)
        rows.append({"name": name, **summary})
    return rows


def save_analysis(store: ResultStore, name: str, rows, params: dict) -> None:
    store.save(ANALYSIS_STAGE, name, {"rows": rows}, params, ext="json")


def load_analysis(store: ResultStore, name: str) -> list[dict]:
    return store.load(ANALYSIS_STAGE, name, made_by="notebooks/05_convergence.py").payload["rows"]
