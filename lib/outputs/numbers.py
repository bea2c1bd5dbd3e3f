"""Every number the paper quotes, generated from saved results only (notebook 06): ``numbers(store, ...)`` returns
``{macro: value string}`` (``latex.write_numbers`` writes it as ``numbers.tex``); one builder per study."""
from __future__ import annotations

import json
import platform
import re

import numpy as np
import torch

from lib.core.sample_size.decay import first_k_below
from lib.core.tensors import n_params
from lib.core.training.models import MODELS, build, hvp_multiply_adds
from lib.infra.config import FULL_SPECIFICATION
from lib.infra.results import git_commit, package_versions
from lib.outputs.latex import TEX_LABELS, fmt, fmt_k, macro, pct, tex_text
from lib.outputs.seed_numbers import seed_numbers
from lib.outputs.tables import bench_target, load_bench
from lib.records import REGISTRY
from lib.records.convergence import load_table
from lib.records.monte_carlo import (
    FULL_SPACE,
    FullSpaceSpec,
    group,
    load_full_space_curve,
    load_full_space_plan,
    load_speed,
    main_curves,
)
from lib.records.projection import FOLDER as PROJECTED
from lib.records.runs import load, run_name
from lib.records.spectrum import FOLDER as SPECTRA
from lib.records.spectrum import load_solvers, load_spectrum, solver_runs, spectrum_seeds
from lib.records.train import FOLDER as TRAINED
from lib.records.your_model import FOLDER as YOUR_MODEL
from lib.records.your_model import load_your_model, your_model_runs

#: how the paper names each trace estimator (``TraceEstimate.method``; {k}: the deflation rank)
TRACE_METHOD_TEXT = {"deflated": "the top-{k} eigenvalues plus Hutchinson off their eigenvectors",
                     "hutchinson": "Hutchinson, Rademacher probes", "hutch++": "Hutch++"}


def numbers(store, datasets, models, seeds, plan, timings: dict | None = None,
            spectrum_max_seeds: dict | None = None) -> dict:
    """Every number the paper quotes, keyed by macro name."""
    out: dict[str, str] = {}
    out[macro("profile")] = store.profile
    first_meta = load(store, TRAINED, run_name(datasets[0], models[0], seeds[0])).meta
    first = first_meta["params"]
    out[macro("n", "train")] = fmt(int(first["n_train"]))
    out[macro("epochs")] = fmt(int(first["epochs"]))
    out[macro("train", "threads")] = fmt(int(first["threads"]))
    out[macro("n", "seeds")] = fmt(len(seeds))
    capped = [f"{TEX_LABELS[m]}: {n} seed{'s' * (n > 1)}" for m, n in sorted((spectrum_max_seeds or {}).items())
              if m in models and n < len(seeds)]
    out[macro("spectrum", "seeds", "note")] = (f" (spectrum: {'; '.join(capped)})" if capped else "")
    for m in MODELS:
        out[macro("params", m)] = fmt(n_params(build(m, 0)))
    for ds in datasets:
        for m in models:
            metas = [load(store, TRAINED, run_name(ds, m, s)).meta["summary"] for s in seeds]
            out[macro("acc", ds, m)] = pct(np.mean([x["test_accuracy"] for x in metas]))
            out[macro("acc", "sd", ds, m)] = pct(np.std([x["test_accuracy"] for x in metas]))
            out[macro("train", "loss", ds, m)] = fmt(np.mean([x["train_loss"] for x in metas]))
            specs = [load_spectrum(store, ds, m, s) for s in spectrum_seeds(m, seeds, spectrum_max_seeds)]
            ev = np.array([p["eigenvalues"].numpy() for p in specs])
            out[macro("lambda", "one", ds, m)] = fmt(ev[:, 0].mean())
            out[macro("lambda", "last", ds, m)] = fmt(ev[:, -1].mean())
            out[macro("lambda", "min", ds, m)] = fmt(specs[0]["smallest"])
            out[macro("trace", ds, m)] = fmt(specs[0]["trace"])
            out[macro("trace", "se", ds, m)] = fmt(specs[0]["trace_stderr"])
            out[macro("k", "top")] = fmt(int(ev.shape[1]))
            method = specs[0].get("trace_estimator", "hutchinson")
            out[macro("trace", "method")] = TRACE_METHOD_TEXT[method].format(k=int(specs[0].get("trace_rank", 0)))
            out[macro("trace", "products")] = fmt(int(specs[0]["hvp_counts"]["trace"]))
    main = main_curves(plan)
    if main:
        out[macro("mc", "D")] = fmt(int(main[0].D))
        out[macro("mc", "sigma")] = fmt(main[0].sigma)
        out[macro("mc", "T")] = fmt(int(main[0].n_samples))
        out[macro("mc", "orders")] = fmt(int(main[0].n_orders))
    out[macro("specification", "note")] = specification_note(store, datasets, models, seeds, plan,
                                                             spectrum_max_seeds)
    first = main[0].seed if main else None
    for row in [r for r in load_table(store, "slopes") if r["seed"] == first]:
        key = (row["dataset"], row["model"], row["subspace"])
        out[macro("slope", *key)] = fmt(row["slope"])
        out[macro("slope", "se", *key)] = fmt(row["slope_se"], 2)
        out[macro("k2", *key)] = fmt(row["k2_median"])
        out[macro("vbar", *key)] = fmt(row["vbar"])
    for row in [r for r in load_table(store, "loss_correlation") if r["seed"] == first]:
        out[macro("rho", row["dataset"], row["model"], row["subspace"])] = fmt(row["rho"], 2)
    # the sigma sweep's run (dataset, model, seed), Hessian subspace: the low/high sigma numbers of the abstract
    sweep = {(c.dataset, c.model, c.seed, c.D) for c in group(plan, "sigma") if c.subspace == "hessian"}
    theory = [r for r in load_table(store, "theory")
              if r["subspace"] == "hessian" and r["distribution"] == "gaussian" and r["estimator"] == "plain"
              and (r["dataset"], r["model"], r["seed"], r["D"]) in sweep]
    if theory:
        sig = sorted({r["sigma"] for r in theory})
        lo = next(r for r in theory if r["sigma"] == sig[0])
        hi = next(r for r in theory if r["sigma"] == sig[-1])
        out[macro("theory", "sigma", "low")] = fmt(sig[0])
        out[macro("theory", "sigma", "high")] = fmt(sig[-1])
        out[macro("theory", "ratio", "low")] = fmt(lo["median_mc_over_q"])
        out[macro("theory", "ratio", "high")] = fmt(hi["median_mc_over_q"])
        out[macro("theory", "within", "low")] = pct(lo["share_within_3se"])
        # where the fixed-order predictions sit relative to Monte Carlo at the largest sigma (MC / Q_k > 1: below)
        out[macro("theory", "side", "high")] = "below" if hi["median_mc_over_q"] > 1 else "above"
    table = [r for r in load_table(store, "sample_size") if r["seed"] == first and r["scale"] == "sigma"]
    if table:
        thr = sorted({r["delta"] for r in table})
        out[macro("delta", "table")] = fmt(thr[len(thr) // 2])
        for r in table:
            if r["delta"] == thr[len(thr) // 2]:
                out[macro("K", "mc", r["dataset"], r["model"])] = fmt(r["K_fixed"]) if r["K_fixed"] else "not reached"
                out[macro("K", "closed", r["dataset"], r["model"])] = fmt(r["K_closed"])
                out[macro("acc", "K", r["dataset"], r["model"])] = pct(r["test_accuracy_K"])
                out[macro("wall", "K", r["dataset"], r["model"])] = fmt(int(round(r["wall_seconds"])))
    for r in load_table(store, "cnn_bound"):
        out[macro("cnn", "bound", r["dataset"])] = fmt(r["bound"], 2)
        out[macro("cnn", "bound", "exact", r["dataset"])] = fmt(r["bound_exact_norms"], 2)
        out[macro("cnn", "outer", "max", r["dataset"])] = fmt(r["outer_norms_max"], 3)
        out[macro("cnn", "full", "max", r["dataset"])] = fmt(r["full_norms_max"], 3)
        out[macro("cnn", "bound", "over", "measured", r["dataset"])] = fmt(r["bound"] / r["outer_norms_max"], 2)
    for ds, m, seed in solver_runs(store):
        for r in load_solvers(store, ds, m, seed)["rows"]:
            tag = {"lanczos (ours)": "Lanczos", "power (ours)": "Power", "PyHessian 0.1": "PyHessian"}[r["method"]]
            out[macro("solver", "res", tag, ds, m)] = fmt(r["max_residual"], 2)
            out[macro("solver", "hvp", tag, ds, m)] = fmt(int(r["hvp_count"]))
    for ds in datasets:
        for m in models:
            p = load_spectrum(store, ds, m, seeds[0])
            if p.get("pyhessian"):
                out[macro("pyhessian", "density", "l1", ds, m)] = fmt(p["pyhessian"]["l1_difference"], 2)
                out[macro("pyhessian", "trace", ds, m)] = fmt(p["pyhessian"]["trace"]["estimate"])
                out[macro("trace", "hutchinson", ds, m)] = fmt(p.get("trace_hutchinson", p["trace"]))
                out[macro("trace", "hutchinson", "se", ds, m)] = fmt(p.get("trace_hutchinson_stderr",
                                                                            p["trace_stderr"]))
    r0 = load_table(store, "r0")
    if r0:
        out[macro("r0", "slope", "min")] = fmt(min(r["slope"] for r in r0))
        out[macro("r0", "slope", "max")] = fmt(max(r["slope"] for r in r0))
        out[macro("bound", "over", "measured", "min")] = fmt(min(r["hessian_bound"] / r["max_measured_norm"]
                                                                  for r in r0))
    out.update(sample_size_numbers(store))
    out.update(seed_numbers(store))
    out.update(full_space_numbers(store))
    out.update(speed_numbers(store))
    out.update(your_model_numbers(store))
    out.update(bench_numbers(store))
    out.update(claim_numbers(store, first))
    timings = timings or {}
    for info in REGISTRY.values():   # a stage not yet timed (06 while it runs, on a first run) prints "--"
        out[macro("time", info.name)] = "--"
    for stage, sec in timings.items():
        out[macro("time", re.sub(r"^\d+_", "", stage))] = fmt(sec / 60, 2)
    out[macro("time", "total")] = fmt(sum(timings.values()) / 60, 2) if timings else "--"
    versions = package_versions()
    out[macro("version", "torch")] = versions["torch"].split("+")[0]
    out[macro("version", "python")] = versions["python"]
    out[macro("git", "commit")] = git_commit()["commit"][:10]
    out[macro("machine")] = tex_text(platform.machine())
    cpu = (first_meta.get("provenance") or {}).get("cpu") or {}
    out[macro("cpu", "model")] = tex_text(cpu.get("model") or "not recorded")   # where 01 trained
    out[macro("threads")] = fmt(int(torch.get_num_threads()))
    return out


def _range(values, digits=2) -> str:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "n/a"
    return fmt(min(v), digits) if len(v) == 1 else f"{fmt(min(v), digits)} to {fmt(max(v), digits)}"


def claim_numbers(store, first_seed) -> dict:
    """Numbers behind the paper's qualitative statements: detrended correlations, bulk vs spikes of MC/Q_k,
    quadratic V-bar against Monte Carlo, the spread of k^2 Delta_k, the gradient inside the subspace."""
    out: dict[str, str] = {}
    corr = [r for r in load_table(store, "loss_correlation") if r["subspace"] == "hessian"]
    out[macro("rho", "hess", "range")] = _range([r["rho"] for r in corr])
    out[macro("rho", "detrended", "range")] = _range([r["rho_detrended"] for r in corr])
    out[macro("rho", "k", "loss", "range")] = _range([r["rho_k_loss"] for r in corr])
    out[macro("rho", "runs")] = fmt(len(corr))
    theory = [r for r in load_table(store, "theory") if r["distribution"] == "gaussian" and r["estimator"] == "plain"
              and r["scale"] == "sigma" and r["seed"] == first_seed]
    hess = sorted([r for r in theory if r["subspace"] == "hessian"], key=lambda r: r["sigma"])
    rand = sorted([r for r in theory if r["subspace"] == "random"], key=lambda r: r["sigma"])
    for name, rows in (("hess", hess), ("rand", rand)):
        if rows:
            out[macro("theory", name, "ratio", "range")] = _range([r["median_mc_over_q"] for r in rows])
            out[macro("theory", name, "bulk", "range")] = _range([r["median_mc_over_q_bulk"] for r in rows])
            out[macro("theory", name, "spikes", "range")] = _range([r["median_mc_over_q_spikes"] for r in rows])
            out[macro("theory", name, "vbar", "range")] = _range([r["vbar_q_over_mc"] for r in rows])
            out[macro("theory", name, "surrogate", "range")] = _range([r.get("median_mc_over_surrogate")
                                                                         for r in rows])
            out[macro("theory", name, "surrogate", "vbar", "range")] = _range([r.get("vbar_surrogate_over_mc")
                                                                                 for r in rows])
    # the Hessian curves at each run's loss-gap sigma (every seed): where the quadratic model and the surrogate
    # stand at the scale the sample-size study uses
    gap = [r for r in load_table(store, "theory") if r["distribution"] == "gaussian" and r["estimator"] == "plain"
           and r["scale"] == "loss_gap" and r["subspace"] == "hessian"]
    if gap:
        out[macro("theory", "gap", "runs")] = fmt(len(gap))
        for key, col in (("ratio", "median_mc_over_q"), ("bulk", "median_mc_over_q_bulk"),
                         ("spikes", "median_mc_over_q_spikes"), ("vbar", "vbar_q_over_mc"),
                         ("surrogate", "median_mc_over_surrogate"), ("surrogate vbar", "vbar_surrogate_over_mc")):
            out[macro("theory", "gap", *key.split(), "range")] = _range([r.get(col) for r in gap])
        mnist_mlp = [r for r in gap if r["dataset"] == "mnist" and r["model"] != "cnn"]
        rest = [r for r in gap if not (r["dataset"] == "mnist" and r["model"] != "cnn")]
        for tag, rows in (("mnist mlp", mnist_mlp), ("rest", rest)):
            if rows:
                out[macro("theory", "gap", *tag.split(), "ratio", "range")] = _range(
                    [r["median_mc_over_q"] for r in rows])
                out[macro("theory", "gap", *tag.split(), "spikes", "range")] = _range(
                    [r["median_mc_over_q_spikes"] for r in rows])
                out[macro("theory", "gap", *tag.split(), "vbar", "range")] = _range(
                    [r["vbar_q_over_mc"] for r in rows])
    sweep = [r for r in hess if r["dataset"] == (hess[0]["dataset"] if hess else None)
             and r["model"] == hess[0]["model"]]
    for r in sweep:
        tag = fmt(r["sigma"]).replace(".", "p")
        out[macro("theory", "ratio", "sigma", tag)] = fmt(r["median_mc_over_q"], 2)
        out[macro("theory", "vbar", "sigma", tag)] = fmt(r["vbar_q_over_mc"], 2)
        out[macro("theory", "surrogate", "sigma", tag)] = fmt(r.get("median_mc_over_surrogate"), 2)
        out[macro("theory", "surrogate", "vbar", "sigma", tag)] = fmt(r.get("vbar_surrogate_over_mc"), 2)
    slopes = [r for r in load_table(store, "slopes") if r["seed"] == first_seed]
    iqr = [r["k2_q75"] / r["k2_q25"] for r in slopes if r["subspace"] == "hessian" and r["k2_q25"] > 0]
    out[macro("k2", "iqr", "hess", "range")] = _range(iqr)
    grads = [r["subspace_gradient_norm"] for r in slopes if r.get("subspace_gradient_norm") is not None]
    out[macro("subspace", "gradient", "range")] = _range(grads)
    ratio = []
    for ds_m in {(r["dataset"], r["model"]) for r in slopes}:
        h = [r for r in slopes if (r["dataset"], r["model"]) == ds_m and r["subspace"] == "hessian"]
        q = [r for r in slopes if (r["dataset"], r["model"]) == ds_m and r["subspace"] == "random"]
        if h and q and q[0]["vbar"] > 0:
            ratio.append(h[0]["vbar"] / q[0]["vbar"])
    out[macro("vbar", "ratio", "range")] = _range(ratio, 3)
    return out


def _ratio_spread(values) -> float | None:
    v = [x for x in values if x]
    return max(v) / min(v) if len(v) > 1 else None


def _factor(pred, true) -> float | None:
    """How far a prediction is from the truth as a factor >= 1 (2 = off by a factor of two either way)."""
    if not pred or not true:
        return None
    return float(max(pred / true, true / pred))


def your_model_numbers(store) -> dict:
    """Macros of notebook 07 (residual CNN on scikit-learn's digits through ``lib.api.analyze``, every saved seed
    with the same settings): the setup, test accuracy, Delta_k slope, V-bar, the top eigenvalue, and K(Delta) with
    its uncertainty at the middle threshold (first seed; the range of K over seeds), and the cost. Nothing when
    notebook 07 has not run (the paper's macros then become placeholders)."""
    out: dict[str, str] = {}
    if not store.names(YOUR_MODEL):
        return out
    seeds = your_model_runs(store)
    runs = [load_your_model(store, s) for s in seeds]
    summaries = [r["meta"]["summary"] for r in runs]
    first, params, rep = summaries[0], runs[0]["meta"]["params"], runs[0]["report"]
    ym = ("your", "model")
    out[macro(*ym, "seeds")] = fmt(len(seeds))
    out[macro(*ym, "seed", "list")] = ", ".join(str(s) for s in seeds)
    out[macro(*ym, "first", "seed")] = str(seeds[0])
    out[macro(*ym, "params")] = fmt(int(first["n_params"]))
    out[macro(*ym, "channels")] = fmt(int(params["channels"]))
    out[macro(*ym, "n", "train")] = fmt(int(first["n_train"]))
    out[macro(*ym, "n", "test")] = fmt(int(first["n_test"]))
    out[macro(*ym, "epochs")] = fmt(int(params["epochs"]))
    out[macro(*ym, "D")] = fmt(int(params["D"]))
    out[macro(*ym, "sigma")] = fmt(params["sigma"])
    out[macro(*ym, "T")] = fmt(int(params["n_samples"]))
    out[macro(*ym, "orders")] = fmt(int(params["n_orders"]))
    acc = [x["test_accuracy"] for x in summaries]
    out[macro(*ym, "acc")] = pct(np.mean(acc))
    out[macro(*ym, "acc", "range")] = (pct(acc[0]) if len(acc) == 1 else f"{pct(min(acc))}--{pct(max(acc))}")
    out[macro(*ym, "loss", "star")] = fmt(np.mean([x["loss_star"] for x in summaries]))
    out[macro(*ym, "loss", "theta")] = fmt(np.mean([x["loss_theta"] for x in summaries]))
    out[macro(*ym, "test", "loss")] = fmt(np.mean([x["test_loss"] for x in summaries]))
    out[macro(*ym, "lambda", "one")] = fmt(first["lambda_1"])
    out[macro(*ym, "slope")] = fmt(first["slope"])
    out[macro(*ym, "slope", "se")] = fmt(first["slope_se"], 2)
    out[macro(*ym, "slope", "range")] = _range([x["slope"] for x in summaries], 3)
    out[macro(*ym, "vbar")] = fmt(first["vbar"])
    out[macro(*ym, "vbar", "se")] = fmt(first["vbar_stderr"], 2)
    out[macro(*ym, "vbar", "range")] = _range([x["vbar"] for x in summaries], 3)
    thresholds = [z["threshold"] for z in first["sample_sizes"]]
    mid = len(thresholds) // 2
    out[macro(*ym, "delta")] = fmt(thresholds[mid])
    z = first["sample_sizes"][mid]
    out[macro(*ym, "K")] = fmt_k(z["K"], "not reached")
    out[macro(*ym, "K", "band")] = fmt_k(z["K_band"], "not reached")
    out[macro(*ym, "K", "median")] = fmt_k(z["K_order_median"], "not reached")
    out[macro(*ym, "K", "low")] = fmt_k(z["K_order_q05"], "not reached")
    out[macro(*ym, "K", "high")] = fmt_k(z["K_order_q95"], "not reached")
    out[macro(*ym, "K", "upper")] = fmt_k(z["K_order_upper"], "not reached")
    out[macro(*ym, "K", "closed")] = fmt_k(z["K_closed"], "not reached")
    median = z["K_order_median"]
    out[macro(*ym, "closed", "vs", "median")] = (
        "the median over orders is not reached" if median is None else
        f"{'below' if z['K_closed'] < median else 'above' if z['K_closed'] > median else 'equal to'} the median "
        "over orders")
    ks = [x["sample_sizes"][mid]["K"] for x in summaries]
    reached = [k for k in ks if k is not None]
    span = ("not reached" if not reached else fmt_k(min(reached)) if min(reached) == max(reached)
            else f"{fmt_k(min(reached))}--{fmt_k(max(reached))}")
    out[macro(*ym, "K", "seed", "range")] = span + (f" ({len(ks) - len(reached)} of {len(ks)} seeds not reached)"
                                                    if reached and len(reached) < len(ks) else "")
    out[macro(*ym, "hvp")] = fmt(int(first["hvp_count"]))
    out[macro(*ym, "seconds")] = fmt(float(np.mean([x["analyze_seconds"] for x in summaries])), 2)
    out[macro(*ym, "train", "seconds")] = fmt(float(np.mean([x["train_seconds"] for x in summaries])), 2)
    out[macro(*ym, "quadratic")] = ("computed" if rep["Q"] is not None else "skipped")
    return out


def sample_size_numbers(store) -> dict:
    """Macros of the sample-size study: K over orders x seeds per run and scale at the table threshold, the
    loss-gap sigma, pilot and learning-curve prediction errors, and the spread of the calibration Delta*."""
    out: dict[str, str] = {}
    summary = load_table(store, "summary")
    if not summary:
        return out
    # values that can be legitimately absent (nothing predicted, nothing reached) print as "--", not "n/a"
    for tag in ("Gap", "Fixed"):
        for key in (("pilot", "factor", "median", tag), ("pilot", "factor", "max", tag),
                    ("predict", "land", tag, "median"), ("predict", "land", tag, "max"),
                    ("delta", "star", "min", tag), ("delta", "star", "max", tag), ("delta", "star", "spread", tag)):
            out[macro(*key)] = "--"
        out[macro("delta", "star", "verdict", tag)] = "cannot be judged"
    for key in (("predict", "lc", "", "median"), ("predict", "lc", "", "max"), ("sigma", "gap", "min"),
                ("sigma", "gap", "max")):
        out[macro(*key)] = "--"
    grid = sorted({r["delta"] for r in summary})
    thr = grid[len(grid) // 2]
    out[macro("delta", "headline")] = fmt(thr)
    learning = load_table(store, "learning_curve")
    n_max = max((int(r["n"]) for r in learning), default=None)
    out[macro("learning", "max", "n")] = fmt(n_max) if learning else "--"
    out[macro("learning", "seeds")] = fmt(len({r["seed"] for r in learning})) if learning else "--"
    # runs whose measured n within 1 point is the largest learning-curve size: the target is censored there
    firsts = {(r["dataset"], r["model"]): r["n_within_1pt"] for r in summary}
    out[macro("n", "within", "at", "max")] = fmt(sum(v == n_max for v in firsts.values() if v is not None))
    out[macro("n", "within", "runs")] = fmt(sum(v is not None for v in firsts.values()))
    scales = {"sigma": "Fixed", "loss_gap": "Gap"}
    for r in [r for r in summary if r["delta"] == thr]:
        tag = scales[r["scale"]]
        for key in ("K_median", "K_q05", "K_q95", "K_pilot"):
            out[macro(key.replace("_", " "), tag, r["dataset"], r["model"])] = (
                fmt(int(round(r[key]))) if r[key] is not None else "not reached")
        if r["scale"] == "loss_gap":
            sig = r["sigma"] if isinstance(r["sigma"], list) else [r["sigma"]]
            out[macro("sigma", "gap", r["dataset"], r["model"])] = (
                fmt(min(sig), 2) if len(sig) == 1 else f"{fmt(min(sig), 2)}--{fmt(max(sig), 2)}")
    gap_sigmas = [x for r in summary if r["scale"] == "loss_gap"
                  for x in (r["sigma"] if isinstance(r["sigma"], list) else [r["sigma"]])]
    if gap_sigmas:
        out[macro("sigma", "gap", "min")] = fmt(min(gap_sigmas), 2)
        out[macro("sigma", "gap", "max")] = fmt(max(gap_sigmas), 2)
    pilot_err = {tag: [_factor(r["K_pilot"], r["K_median"]) for r in summary
                       if r["delta"] == thr and scales[r["scale"]] == tag] for tag in scales.values()}
    for tag, errs in pilot_err.items():
        errs = [e for e in errs if e]
        if errs:
            out[macro("pilot", "factor", "median", tag)] = fmt(float(np.median(errs)), 2)
            out[macro("pilot", "factor", "max", tag)] = fmt(float(np.max(errs)), 2)
    predictors = load_table(store, "predictors")
    if predictors:
        n0 = max(p["n0"] for p in predictors)
        one = [p for p in predictors if p["n0"] == n0 and abs(p["gap"] - 0.01) < 1e-12]
        out[macro("pilot", "n", "zero")] = fmt(int(n0))
        for name, key in (("lc", "n_learning_curve"), ("land", "n_landscape_loss_gap"),
                          ("land", "n_landscape_sigma")):
            tag = "Gap" if key.endswith("loss_gap") else ("Fixed" if key.endswith("sigma") else "")
            errs = [_factor(p.get(key), p["n_within"]) for p in one]
            errs = [e for e in errs if e]
            out[macro("predict", name, tag, "n", "runs")] = fmt(len(errs))
            if errs:
                out[macro("predict", name, tag, "median")] = fmt(float(np.median(errs)), 2)
                out[macro("predict", name, tag, "max")] = fmt(float(np.max(errs)), 2)
        for p in one:
            out[macro("n", "within", p["dataset"], p["model"])] = fmt_k(p["n_within"])
            out[macro("n", "lc", p["dataset"], p["model"])] = fmt_k(p["n_learning_curve"])
    calibration = load_table(store, "calibration")
    for scale, tag in scales.items():
        stars = [c["delta_star"] for c in calibration if c["scale"] == scale and abs(c["gap"] - 0.01) < 1e-12]
        reached = [x for x in stars if x]
        out[macro("delta", "star", "runs", tag)] = fmt(len(stars))
        out[macro("delta", "star", "reached", tag)] = fmt(len(reached))
        spread = _ratio_spread(reached)
        if reached:
            out[macro("delta", "star", "min", tag)] = fmt(min(reached), 2)
            out[macro("delta", "star", "max", tag)] = fmt(max(reached), 2)
        if spread:
            out[macro("delta", "star", "spread", tag)] = fmt(spread, 2)
            out[macro("delta", "star", "verdict", tag)] = "agrees" if spread <= 3 else "does not agree"
    return out


def specification_note(store, datasets, models, seeds, plan, spectrum_max_seeds: dict | None = None) -> str:
    """One sentence: which values of ``FULL_SPECIFICATION`` (docs/specification.md section 7) this build trimmed,
    read from the saved results (main curves, first spectrum with extras, first surface), or that it trimmed none."""
    full = FULL_SPECIFICATION
    trims = []
    main = main_curves(plan)
    if main and int(main[0].n_samples) < full["monte_carlo.n_samples"]:
        trims.append(f"the main curves use $T={fmt(int(main[0].n_samples))}$ draws rather than "
                     f"{fmt(full['monte_carlo.n_samples'])}")
    spec = store.meta(SPECTRA, run_name(datasets[0], models[0], seeds[0]))
    if spec is not None:
        probes, steps = int(spec["params"]["trace_probes"]), int(spec["params"]["slq_iter"])
        if probes < full["spectrum.trace_probes"]:
            trims.append(f"the trace {probes} products rather than {full['spectrum.trace_probes']}")
        if steps < full["spectrum.slq_iter"]:
            trims.append(f"the density {steps} Lanczos steps rather than {full['spectrum.slq_iter']}")
    surfaces = sorted(store.root.joinpath(PROJECTED).glob("*.meta.json"))
    if surfaces:
        g = int(json.loads(surfaces[0].read_text())["params"]["grid_points"])
        if g < full["projection.grid_points"]:
            f = full["projection.grid_points"]
            trims.append(f"the surfaces a ${g}\\times{g}$ grid rather than ${f}\\times{f}$")
    capped = [f"the {TEX_LABELS[m]} spectrum {n} seed{'s' * (n > 1)} of {len(seeds)}"
              for m, n in sorted((spectrum_max_seeds or {}).items()) if m in models and n < len(seeds)]
    trims += capped
    if not trims:
        return ("The profile runs the specification in full ($T=" + fmt(full["monte_carlo.n_samples"])
                + f"$ main-curve draws, {full['spectrum.trace_probes']} trace probes, {full['spectrum.slq_iter']} "
                f"SLQ steps, ${full['projection.grid_points']}\\times{full['projection.grid_points']}$ surfaces, "
                "every spectrum seed)")
    return ("The profile trims the specification to fit a 2-core CPU: " + ", ".join(trims)
            + r" (\texttt{make reproduce FULL=1} runs it in full)")


def _median_ratio(store, pair) -> float:
    a, b = load_full_space_curve(store, pair["subspace"]), load_full_space_curve(store, pair["full"])
    return float(np.median(a["delta"] / b["delta"]))


def full_space_numbers(store) -> dict:
    """Macros of the full-space comparison (``full_space`` group): the median over k of Delta^(D)_k /
    Delta^(full)_k at the main (D, sigma) and at the ends of both sweeps (ranges over the runs), the per-coordinate
    scale, the cost per theta, the pointwise criterion against sqrt(Delta_k) (Jensen) and K(Delta) against
    K_pointwise(sqrt(Delta)) at the headline Delta of the sample-size table."""
    out: dict[str, str] = {}
    pairs = load_full_space_plan(store)
    if not pairs:
        return out
    runs = list(dict.fromkeys((p["dataset"], p["model"]) for p in pairs))
    datasets = list(dict.fromkeys(TEX_LABELS[d] for d, _ in runs))
    models = list(dict.fromkeys(TEX_LABELS[m] for _, m in runs))
    out[macro("full", "runs")] = (f"{' and '.join(datasets)}, {' and '.join(models)}, seed {pairs[0]['seed']}")
    out[macro("full", "T")] = fmt(int(pairs[0]["subspace"]["n_samples"]))
    sig_line = [p for p in pairs if p["line"] == "sigma"]
    dim_line = [p for p in pairs if p["line"] == "dim"]
    D, sigma = (sig_line or dim_line)[0]["D"], (dim_line or sig_line)[0]["sigma"]
    out[macro("full", "D")] = fmt(int(D))
    out[macro("full", "sigma")] = fmt(sigma)
    norm = [p for p in pairs if p["scale"] == "norm"]
    main = [p for p in norm if p["D"] == D and p["sigma"] == sigma]
    out[macro("full", "ratio", "main")] = _range([_median_ratio(store, p) for p in main], 2)
    for line, key, tag in ((sig_line, "sigma", "Sigma"), (dim_line, "D", "Dim")):
        values = sorted({p[key] for p in line})
        if not values:
            continue
        for end, v in (("low", values[0]), ("high", values[-1])):
            at = [p for p in line if p[key] == v]
            out[macro("full", tag, end)] = fmt(v)
            out[macro("full", "ratio", tag, end)] = _range([_median_ratio(store, p) for p in at
                                                            if p["scale"] == "norm"], 2)
            out[macro("full", "ratio", "coord", tag, end)] = _range([_median_ratio(store, p) for p in at
                                                                     if p["scale"] == "coordinate"], 2)
    summaries = {kind: [load(store, FULL_SPACE, FullSpaceSpec(**p[kind]).name).meta["summary"] for p in pairs]
                 for kind in ("subspace", "full")}
    seconds = {kind: [sm["seconds_per_theta"] for sm in rows] for kind, rows in summaries.items()}
    together = sorted({sm.get("scales_together", 1) for sm in summaries["full"]})
    out[macro("full", "scales", "together")] = _range(together, 3)
    out[macro("full", "seconds", "per", "theta")] = _range(seconds["full"], 2)
    out[macro("full", "sub", "seconds", "per", "theta")] = _range(seconds["subspace"], 2)
    jensen = {kind: [float(np.median(c["abs_mean"] / np.sqrt(c["delta"])))
                     for c in (load_full_space_curve(store, p[kind]) for p in norm)] for kind in ("subspace", "full")}
    out[macro("pointwise", "jensen", "range")] = _range(jensen["subspace"], 2)
    out[macro("pointwise", "jensen", "full", "range")] = _range(jensen["full"], 2)
    zero = [float(np.median(c["abs0"] / c["abs_mean"])) for c in (load_full_space_curve(store, p["subspace"])
                                                                  for p in main)]
    out[macro("pointwise", "zero", "range")] = _range(zero, 2)
    table = load_table(store, "sample_size")
    grid = sorted({r["delta"] for r in table})
    if grid and main:
        thr = grid[len(grid) // 2]
        out[macro("full", "delta", "thr")] = fmt(thr)
        ks = {"sub": [], "full": [], "pointwise": [], "pointwise_full": []}
        for p in main:
            a, b = load_full_space_curve(store, p["subspace"]), load_full_space_curve(store, p["full"])
            ks["sub"].append(first_k_below(a["k"], a["delta"], thr))
            ks["full"].append(first_k_below(b["k"], b["delta"], thr))
            ks["pointwise"].append(first_k_below(a["k"], a["abs_mean"], float(np.sqrt(thr))))
            ks["pointwise_full"].append(first_k_below(b["k"], b["abs_mean"], float(np.sqrt(thr))))
        for key, values in ks.items():
            reached = [v for v in values if v is not None]
            text = _range(reached, 3) if reached else "not reached"
            if reached and len(reached) < len(values):
                text += f" ({len(values) - len(reached)} not reached)"
            out[macro("full", "K", key)] = text
    return out


def speed_numbers(store) -> dict:
    """Macros of the closed-form vs Monte-Carlo comparison: per run (main curve, first seed) the Monte-Carlo time to
    1 % relative SE, the closed-form time and the jet time; ranges over the runs; MC/Q_k at the main sigma and at
    the ends of the sigma sweep."""
    out: dict[str, str] = {}
    rows = load_speed(store)
    if not rows:
        return out
    main = [r for r in rows if r["group"] == "main"]
    if not main:
        return out
    sigma_main = main[0]["sigma"]
    for r in main:
        key = (r["dataset"], r["model"])
        out[macro("speed", "mc", *key)] = fmt(r["mc_seconds_target"], 2)
        out[macro("speed", "closed", *key)] = fmt(r["closed_seconds"], 2)
        out[macro("speed", "jet", *key)] = fmt(r["jet_seconds"], 2)
        out[macro("speed", "ratio", *key)] = fmt(r["speedup"], 2)
    out[macro("speed", "sigma")] = fmt(sigma_main)
    out[macro("speed", "runs")] = fmt(len(main))
    for parts, key in ((("mc",), "mc_seconds_target"), (("closed",), "closed_seconds"), (("jet",), "jet_seconds"),
                       (("ratio",), "speedup"), (("ratio", "jet"), "speedup_with_jet"),
                       (("accuracy",), "median_mc_over_q"), (("T", "target"), "T_target")):
        out[macro("speed", *parts, "range")] = _range([r[key] for r in main], 2)
    out[macro("speed", "rel", "se", "range")] = _range([100 * r["relative_se"] for r in main], 2)
    sweep = sorted([r for r in rows if r["group"] == "sigma"], key=lambda r: r["sigma"])
    if sweep:
        for end, r in (("low", sweep[0]), ("high", sweep[-1])):
            out[macro("speed", "sigma", end)] = fmt(r["sigma"])
            out[macro("speed", "accuracy", "sigma", end)] = fmt(r["median_mc_over_q"], 2)
    return out


def bench_numbers(store) -> dict:
    """The arithmetic of one exact Hessian-vector product of MLP-2 and of the CNN in their forward passes (from the
    layer shapes: ``lib.core.training.models.hvp_multiply_adds``), and what the last ``make bench`` run says: when,
    where
    and how many of its targets it met (``BenchStatus``), and which it missed (``BenchMissed``, a clause)."""
    out = {}
    for m in ("mlp2", "cnn"):
        a = hvp_multiply_adds(build(m, 0), torch.zeros(1, 1, 28, 28))
        out[macro("hvp", "multiply", "adds", "kept", m)] = fmt(a["kept_in_forwards"], 3)
        out[macro("hvp", "multiply", "adds", "recompute", m)] = fmt(a["recompute_in_forwards"], 3)
    res = load_bench(store)
    if res is None:
        out[macro("bench", "status")] = (r"have not been measured for this build (\texttt{make bench}: about ten "
                                         r"minutes on a 2-core CPU, written to \texttt{results/bench/})")
        out[macro("bench", "missed")] = ""
        out[macro("bench", "api", "sentence")] = ""
        return out
    rows, meta = res.payload["summary"], res.meta
    judged = [r for r in rows if r["ok"] is not None]
    missed = [r for r in judged if not r["ok"]]
    git = meta["provenance"]["git"]
    when = meta["provenance"]["written_at"][:10]
    before, after = (float(la[0]) for la in res.payload["load_average"])
    out[macro("bench", "status")] = (
        f"were measured in one run of \\texttt{{make bench}} at commit \\texttt{{{git['commit'][:10]}}}"
        f"{' (with uncommitted changes)' if git.get('dirty') else ''} on {when} (CPU: "
        f"{tex_text(meta['provenance'].get('cpu', {}).get('model') or 'not recorded')}; "
        f"{fmt(int(meta['params']['n']))} "
        f"MNIST images, MLP-2 from {tex_text(meta['params'].get('mlp2') or 'not recorded')}, "
        f"{meta['params']['threads']} threads, load average {before:.1f} to {after:.1f}, "
        f"{res.payload['minutes']:.1f} minutes): {len(judged) - len(missed)} of its {len(judged)} targets are met")
    out[macro("bench", "missed")] = ("" if not missed else "; missed: " + "; ".join(
        f"{tex_text(r['measure'])}, {fmt(r['value'], 3)} against {bench_target(r)}" for r in missed))
    out[macro("bench", "api", "sentence")] = api_sentence(res.payload.get("api") or [])
    return out


def api_sentence(api: list[dict]) -> str:
    """One sentence on the public operator's rows of a bench run (``bench.__main__.api_runs``): the large MLP's
    product in gradients with kept state and rebuilt, curvlinops where it ran, the top-k seconds; empty without."""
    run = next((r for r in api if r["model"] == "mlp"), None)
    if run is None:
        return ""
    c = run["costs"]
    rows = {r["operator"]: r for r in c["rows"]}
    kept, rebuilt = c["rows"][0], rows.get("ours (rebuild)")
    # runs saved before the rows named their engine carry it only in the label "ours (<engine>)"
    engine = kept.get("engine") or re.fullmatch(r"ours \((.+)\)", kept["operator"]).group(1)
    text = (f"The public operator (\\texttt{{BatchedHessianOperator}}, what users' own models get) keeps each batch's "
            f"state between products: on the {fmt(c['n_params'] / 1e6, 3)}M-parameter MLP of "
            f"\\texttt{{bench/large\\_model.py}} ({fmt(int(c['N']))} MNIST images) one product costs "
            f"{fmt(kept['in_gradients'], 3)} gradients with its {tex_text(engine)} state")
    if rebuilt is not None:
        text += f", against {fmt(rebuilt['in_gradients'], 3)} when each batch's graph is rebuilt"
    if "curvlinops" in rows:
        text += f" and {fmt(rows['curvlinops']['in_gradients'], 3)} for curvlinops"
    if run["rows"]:
        top = run["rows"][0]
        method = top.get("method", "lanczos")       # runs saved before the field ran ARPACK's Lanczos
        solver = {"thick-restart": "the thick-restart Lanczos", "lanczos": "ARPACK's Lanczos"}.get(
            method, f"the {tex_text(method)} solver")
        text += (f"; its top-{top['k']} eigenpairs take {fmt(top['top_seconds'], 3)} s in {top['top_hvps']} products "
                 f"by {solver}")
        if "top_growth_vectors" in top:
            text += (f", which grew the peak memory by {fmt(top['top_growth_vectors'], 3)} float64 vectors of "
                     "n\\_params (target $2k + 4$ plus the kept state)")
    return text + "."
