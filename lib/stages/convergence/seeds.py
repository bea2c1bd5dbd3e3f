"""Notebook 05's seed study: K of many training seeds x insertion orders x two theta sets on a small configuration, its
variance split into seed, order and Monte Carlo, an interval for a new seed with its leave-one-seed-out coverage, and
how well the pipeline's loss-gap sigma is determined (its standard error over repeated searches and the K it
implies).

Per seed (cached in ``convergence/seeds/``): the recipe trained on the first ``seed_study_n`` samples, the top-D Hessian
subspace (D and the fixed sigma of the pipeline's first main Hessian curve), the loss-gap sigma found the pipeline's way
(its ``monte_carlo.gap_thetas`` draws, 2 % bisection tolerance; ``lib.stages.monte_carlo``) with
``seed_study_gap_repeats`` independent repeats (a quarter of them also with ``LARGER_DRAWS`` x the draws) and one
reference search (``REFERENCE_DRAWS`` x the draws, 0.2 % tolerance), and at the fixed sigma and at the loss-gap sigma
two Delta_k curves from independent thetas with the same ``seed_study_orders`` insertion orders. The threshold of each
scale is the median over seeds of the first theta set's order-mean curve at k = ``seed_study_k_ref`` x N (so K sits
inside N), the same for every seed.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from lib.core import hessian
from lib.core.landscape.delta import delta_curve
from lib.core.landscape.sampling import make_sampler
from lib.core.landscape.subspace import SubspaceLosses
from lib.core.sample_size.decay import k_closed_form
from lib.core.sample_size.seed_interval import leave_one_seed_out, new_seed_interval, variance_parts
from lib.core.sample_size.sufficient import GAP_REL_TOL, k_per_order, loss_gap_scale, suffix_max
from lib.core.tensors import torch_threads
from lib.core.training import models
from lib.core.training.recipe import TRAINER, evaluate, train
from lib.infra import data
from lib.infra.config import Common, Convergence, MonteCarlo, Train
from lib.infra.results import ResultStore
from lib.records.convergence import SEEDS
from lib.records.monte_carlo import SCALES as SCALES_FOLDER
from lib.records.runs import load, run_name
from lib.records.train import recipe_of
from lib.stages.base import cached, run_missing

#: the layout of a seed's record (part of its parameters): v2 compares V-bar at sigma_gap (1 +- SE) with V-bar at
#: sigma_gap on the same thetas (v1 used the first curve's V-bar, other thetas, which added their Monte Carlo)
RECORD = "seed-study/v2"
#: the two scales of the study: the profile's fixed sigma and each seed's own loss-gap sigma
SCALES = ("sigma", "gap")
#: a quarter of the repeated loss-gap searches (at least 3) is also run with this many times the pipeline's draws
#: (what more draws buy); the reference search uses REFERENCE_DRAWS times the draws and a 0.2 % tolerance
LARGER_DRAWS = 4
REFERENCE_DRAWS = 8


def seed_params(section: Convergence, pipeline: dict, recipe: Train, data_seed: int, seed: int) -> dict:
    """What defines one seed's record (its identity in the result store)."""
    s = section
    return {"dataset": s.seed_study_dataset, "model": s.seed_study_model, "seed": seed, "n": s.seed_study_n,
            "data_seed": data_seed, "recipe": {"epochs": recipe.epochs, "batch_size": recipe.batch_size,
                                               "lr": recipe.lr, "threads": recipe.threads}, "trainer": TRAINER,
            **pipeline, "thetas": s.seed_study_thetas,
            "orders": s.seed_study_orders, "gap_repeats": s.seed_study_gap_repeats, "larger_draws": LARGER_DRAWS,
            "reference_draws": REFERENCE_DRAWS, "record": RECORD}


def seed_name(p: dict) -> str:
    return f"{run_name(p['dataset'], p['model'], p['seed'])}_n{p['n']}"


def seed_record(p: dict) -> tuple[dict, dict]:
    """One seed: train, subspace, loss-gap sigma (pipeline rule, repeats, reference), and per scale two curves'
    per-order suffix maxima (for K of any threshold), order means and V-bar. Returns (payload, summary)."""
    x, y = data.training_subset(p["dataset"], p["n"], p["data_seed"])
    xt, yt = data.load(p["dataset"], "test")
    seed, D, N = p["seed"], p["D"], len(x)
    net = models.build(p["model"], seed)
    r = p["recipe"]
    train(net, x, y, epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"], seed=seed, progress=False)
    top = hessian.top_eigenpairs(hessian.HessianOperator(net, x, y), D, tol=1e-3, seed=seed)
    basis = top.eigenvectors
    gap = float(evaluate(net, xt, yt)["loss"] - evaluate(net, x, y)["loss"])
    losses = SubspaceLosses(net, x, y, basis)
    with torch.no_grad():
        base = float(losses(torch.zeros(1, D, dtype=torch.float64)).double().mean())
    if not gap > 0:
        raise ValueError(f"{seed_name(p)}: the test loss is not above the training loss (gap {gap:.4g}); the "
                         "loss-gap scale is undefined: use a smaller seed_study_n or another model")

    def gap_sigma(n_draws: int, draw_seed: int, rel_tol: float = GAP_REL_TOL) -> float:
        z = make_sampler("gaussian", sigma=1.0).sample(n_draws, D, seed=draw_seed)

        def rise(sigma: float) -> float:
            with torch.no_grad():
                return float(losses(sigma * z).double().mean()) - base
        return loss_gap_scale(rise, gap, float(top.eigenvalues.sum()), rel_tol=rel_tol)

    sigma_gap = gap_sigma(p["gap_thetas"], seed + 7919)                       # the pipeline's own search
    repeats = [gap_sigma(p["gap_thetas"], 1_000_003 * (i + 1) + seed) for i in range(p["gap_repeats"])]
    larger = [gap_sigma(p["larger_draws"] * p["gap_thetas"], 3_000_017 * (i + 1) + seed)
              for i in range(max(3, p["gap_repeats"] // 4))]
    reference = gap_sigma(p["reference_draws"] * p["gap_thetas"], 7_000_001 + seed, 0.002)
    rel_se = float(np.std(repeats, ddof=1) / np.mean(repeats))
    z = make_sampler("gaussian", sigma=1.0).sample(p["thetas"], D, seed=seed + 4_000_037)

    def vbar_at(sigma: float) -> float:
        with torch.no_grad():
            return float(losses(sigma * z).double().var(dim=1, unbiased=False).mean())

    payload, summary = {"k": None}, {"seed": seed, "N": N, "gap": gap, "lambda_1": float(top.eigenvalues[0]),
                                     "sigma_gap": sigma_gap, "sigma_gap_repeats": repeats,
                                     "sigma_gap_reference": reference, "sigma_gap_rel_se": rel_se,
                                     "sigma_gap_rel_se_larger": float(np.std(larger, ddof=1) / np.mean(larger)),
                                     "vbar_gap_centre": vbar_at(sigma_gap),
                                     "vbar_gap_minus": vbar_at(sigma_gap * (1 - rel_se)),
                                     "vbar_gap_plus": vbar_at(sigma_gap * (1 + rel_se))}
    for scale, sigma in zip(SCALES, (p["sigma"], sigma_gap)):
        for rep in (0, 1):
            c = delta_curve(net, x, y, basis, make_sampler("gaussian", sigma=sigma), p["thetas"],
                            seed=seed * 1000 + 17 * rep + 1, n_orders=p["orders"], order_seed=seed + 1,
                            progress=False)
            payload["k"] = c.k
            payload[f"{scale}_{rep}_suffix_max"] = suffix_max(c.order_curves).astype(np.float64)
            payload[f"{scale}_{rep}_order_mean"] = c.order_mean
            summary[f"vbar_{scale}_{rep}"] = c.vbar
    return payload, summary


def seed_one(store: ResultStore, params: dict) -> dict:
    """One cached seed record, computed with the recipe's intra-op threads; returns its summary."""
    def compute():
        with torch_threads(params["recipe"]["threads"]):
            return seed_record(params)
    summary, _ = cached(store, SEEDS, seed_name(params), params, compute)
    return summary


def pipeline_scale(store: ResultStore, D: int, sigma: float, dataset: str, model: str, seed: int) -> dict:
    """The pipeline's D, fixed sigma and loss-gap draws: those of its first main Hessian curve (the draws from that
    run's loss-gap record when notebook 04 made one, else ``monte_carlo.gap_thetas``'s default)."""
    meta = store.meta(SCALES_FOLDER, run_name(dataset, model, seed))
    return {"D": D, "sigma": sigma,
            "gap_thetas": meta["params"]["thetas"] if meta else MonteCarlo().gap_thetas}


def seed_study_rows(store: ResultStore, common: Common, section: Convergence, pipeline: dict) -> list[dict]:
    """One row per scale (fixed sigma, loss-gap sigma): the threshold, K's median, the variance parts of log K,
    the new-seed interval and its leave-one-seed-out coverage next to a one-seed order range's; then one row
    ``scale = "gap_sigma"`` on the loss-gap sigma search (relative standard error over repeats, the pipeline
    search against the reference, the K it implies at +-1 standard error)."""
    run, recipe = recipe_of(store, common.datasets[0], common.models[0], common.seeds[0])
    specs = [seed_params(section, pipeline, recipe, run["data_seed"], s) for s in range(section.seed_study_seeds)]
    summaries = run_missing(store, [{"folder": SEEDS, "name": seed_name(p), "params": p,
                                     "kwargs": {"store": store, "params": p}} for p in specs],
                            seed_one, common.workers, progress=common.progress, desc="seed study")
    payloads = [load(store, SEEDS, seed_name(p)).payload for p in specs]
    k = np.asarray(payloads[0]["k"], dtype=np.float64)
    N = int(summaries[0]["N"])
    k_ref = max(1, int(round(section.seed_study_k_ref * N)))
    level = section.seed_study_level
    rows = []
    for scale in SCALES:
        threshold = float(np.median([pl[f"{scale}_0_order_mean"][k_ref - 1] for pl in payloads]))
        per_rep = []
        for rep in (0, 1):
            K = np.stack([k_per_order(k, pl[f"{scale}_{rep}_suffix_max"], [threshold])[:, 0] for pl in payloads])
            per_rep.append(K)
        censored = int(sum(np.isnan(K).sum() for K in per_rep))
        log_k = [np.log(np.where(np.isnan(K), N, K)) for K in per_rep]       # censored: at N, counted above
        parts = variance_parts(log_k[0], log_k[1])
        lo, hi = new_seed_interval(log_k[0], level)
        loso = leave_one_seed_out(log_k[0], level)
        rows.append({"scale": scale, "threshold": threshold, "k_ref": k_ref, "N": N, "n_seeds": len(specs),
                     "n_orders": section.seed_study_orders, "thetas": section.seed_study_thetas,
                     "K_median": float(np.exp(np.median(log_k[0]))), "censored": censored,
                     "var_order": parts.order, "var_seed": parts.seed, "var_mc": parts.monte_carlo,
                     "var_total": parts.total, **{f"share_{n}": v for n, v in parts.shares().items()},
                     "level": level, "interval_low": lo, "interval_high": hi,
                     "loso_new_seed": loso["new_seed"], "loso_order_range": loso["order_range"],
                     "seed_K_medians": [float(np.exp(np.median(v))) for v in log_k[0]]})
    gap = next(r for r in rows if r["scale"] == "gap")
    change = [math.log(k_closed_form(s[f"vbar_gap_{side}"], N, gap["threshold"]) /
                       k_closed_form(s["vbar_gap_centre"], N, gap["threshold"]))
              for s in summaries for side in ("minus", "plus")]
    rows.append({"scale": "gap_sigma", "n_seeds": len(specs), "gap_thetas": pipeline["gap_thetas"],
                 "repeats": section.seed_study_gap_repeats,
                 "rel_se_median": float(np.median([s["sigma_gap_rel_se"] for s in summaries])),
                 "rel_se_max": float(np.max([s["sigma_gap_rel_se"] for s in summaries])),
                 "larger_draws": LARGER_DRAWS * pipeline["gap_thetas"],
                 "reference_draws": REFERENCE_DRAWS * pipeline["gap_thetas"],
                 "rel_se_larger_median": float(np.median([s["sigma_gap_rel_se_larger"] for s in summaries])),
                 "pipeline_vs_reference_max": float(np.max([abs(s["sigma_gap"] / s["sigma_gap_reference"] - 1)
                                                            for s in summaries])),
                 "k_change_at_1se_median": float(np.exp(np.median(np.abs(change))) - 1),
                 "k_change_at_1se_max": float(np.exp(np.max(np.abs(change))) - 1),
                 "sigma_gap_between_seeds_cv": float(np.std([s["sigma_gap"] for s in summaries], ddof=1)
                                                     / np.mean([s["sigma_gap"] for s in summaries]))})
    return rows
