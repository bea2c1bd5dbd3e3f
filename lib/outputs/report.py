"""Numbers and tables of the paper, generated from saved results only (notebook 06).

``numbers(store, ...)`` returns ``{macro: value string}``; ``write_numbers`` writes one ``\\newcommand`` per number
into ``paper/generated/numbers.tex``; ``*_table`` functions return LaTeX tables (booktabs).
"""
from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import numpy as np
import torch

from lib import REPO_ROOT
from lib.core.models import MODELS, build
from lib.core.tensors import n_params
from lib.infra.data import DATASETS
from lib.infra.results import atomic_write_bytes, git_commit, package_versions
from lib.stages.base import load, run_name
from lib.stages.convergence import load_table
from lib.stages.monte_carlo import main_curves
from lib.stages.spectrum import FOLDER as SPECTRA
from lib.stages.spectrum import load_solvers, load_spectrum, solver_runs, spectrum_seeds
from lib.stages.train import FOLDER as TRAINED

GENERATED = REPO_ROOT / "paper" / "generated"
FIGURES = REPO_ROOT / "paper" / "figures"
_DIGITS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]
NAMES = {"mnist": "Mnist", "fashion_mnist": "Fashion", "mlp1": "MlpOne", "mlp2": "MlpTwo", "cnn": "Cnn",
         "hessian": "Hess", "random": "Rand"}
TEX_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "mlp1": "MLP-1", "mlp2": "MLP-2", "cnn": "CNN"}


def macro(*parts) -> str:
    """A LaTeX macro name from parts: letters only, digits spelled out (``macro('acc', 'mnist', 'mlp2')``)."""
    out = ""
    for p in parts:
        p = NAMES.get(str(p), str(p))
        for word in re.split(r"[^A-Za-z0-9]+", p):
            if word:
                out += word[0].upper() + word[1:]
    return "".join(_DIGITS[int(ch)] if ch.isdigit() else ch for ch in out)


def fmt(x, digits: int = 3) -> str:
    """Significant-digit formatting for text; large/small values in LaTeX scientific notation."""
    if x is None:
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}".replace(",", "{,}")
    x = float(x)
    if not np.isfinite(x):
        return "n/a"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        mant, exp = f"{x:.{digits - 1}e}".split("e")
        return f"\\ensuremath{{{mant}\\times 10^{{{int(exp)}}}}}"
    s = f"{x:.{digits}g}"
    if "e" in s:   # 10**digits <= |x| < 1e5: whole number with a thin thousands separator
        s = f"{round(x):,}".replace(",", "{,}")
    return s


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}"


def prune_figures(made, folder: Path | None = None) -> list[str]:
    """Delete figure files (PDF/PNG) in ``folder`` (default ``FIGURES``) that this run did not write, so that every
    file there traces back to the results of the last 06 run; returns the removed names."""
    folder = FIGURES if folder is None else Path(folder)
    removed = []
    for path in sorted(folder.glob("*")):
        if path.suffix in (".pdf", ".png") and path.stem not in made:
            path.unlink()
            removed.append(path.name)
    return removed


def numbers(store, datasets, models, seeds, plan, timings: dict | None = None,
            spectrum_max_seeds: dict | None = None) -> dict:
    """Every number the paper quotes, keyed by macro name."""
    out: dict[str, str] = {}
    out[macro("profile")] = store.profile
    first = load(store, TRAINED, run_name(datasets[0], models[0], seeds[0])).meta["params"]
    out[macro("n", "train")] = fmt(int(first["n_train"]))
    out[macro("epochs")] = fmt(int(first["epochs"]))
    out[macro("n", "seeds")] = fmt(len(seeds))
    capped = [f"{TEX_LABELS[m]}: {n} seed{'s' * (n > 1)}" for m, n in sorted((spectrum_max_seeds or {}).items())
              if m in models and n < len(seeds)]
    out[macro("spectrum", "seeds", "note")] = (f" (spectrum: {'; '.join(capped)})" if capped else "")
    for ds in DATASETS:
        for m in MODELS:
            for key in (("acc", ds, m), ("acc", "sd", ds, m), ("train", "loss", ds, m), ("lambda", "one", ds, m),
                        ("lambda", "last", ds, m), ("lambda", "min", ds, m), ("trace", ds, m),
                        ("K", "mc", ds, m), ("K", "closed", ds, m), ("acc", "K", ds, m), ("wall", "K", ds, m)):
                out[macro(*key)] = "n/a"
            for sub in ("hessian", "random"):
                for key in (("slope", ds, m, sub), ("slope", "se", ds, m, sub), ("k2", ds, m, sub),
                            ("vbar", ds, m, sub), ("rho", ds, m, sub)):
                    out[macro(*key)] = "n/a"
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
            out[macro("k", "top")] = fmt(int(ev.shape[1]))
    main = main_curves(plan)
    if main:
        out[macro("mc", "D")] = fmt(int(main[0].D))
        out[macro("mc", "sigma")] = fmt(main[0].sigma)
        out[macro("mc", "T")] = fmt(int(main[0].n_samples))
        out[macro("mc", "orders")] = fmt(int(main[0].n_orders))
    first = main[0].seed if main else None
    for row in [r for r in load_table(store, "slopes") if r["seed"] == first]:
        key = (row["dataset"], row["model"], row["subspace"])
        out[macro("slope", *key)] = fmt(row["slope"])
        out[macro("slope", "se", *key)] = fmt(row["slope_se"], 2)
        out[macro("k2", *key)] = fmt(row["k2_median"])
        out[macro("vbar", *key)] = fmt(row["vbar"])
    for row in [r for r in load_table(store, "loss_correlation") if r["seed"] == first]:
        out[macro("rho", row["dataset"], row["model"], row["subspace"])] = fmt(row["rho"], 2)
    theory = [r for r in load_table(store, "theory")
              if r["subspace"] == "hessian" and r["distribution"] == "gaussian" and r["estimator"] == "plain"]
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
    r0 = load_table(store, "r0")
    if r0:
        out[macro("r0", "slope", "min")] = fmt(min(r["slope"] for r in r0))
        out[macro("r0", "slope", "max")] = fmt(max(r["slope"] for r in r0))
        out[macro("bound", "over", "measured", "min")] = fmt(min(r["hessian_bound"] / r["max_measured_norm"]
                                                                  for r in r0))
    if timings:
        for stage, sec in timings.items():
            out[macro("time", re.sub(r"^\d+_", "", stage))] = fmt(sec / 60, 2)
        out[macro("time", "total")] = fmt(sum(timings.values()) / 60, 2)
    versions = package_versions()
    out[macro("version", "torch")] = versions["torch"].split("+")[0]
    out[macro("version", "python")] = versions["python"]
    out[macro("git", "commit")] = git_commit()["commit"][:10]
    out[macro("machine")] = platform.machine().replace("_", r"\_")
    out[macro("threads")] = fmt(int(torch.get_num_threads()))
    return out


def write_numbers(values: dict, path: Path | None = None) -> Path:
    path = path or GENERATED / "numbers.tex"
    lines = ["% Generated by notebooks/06_figures.py from results; do not edit."]
    lines += [f"\\newcommand{{\\{k}}}{{{v}}}" for k, v in sorted(values.items())]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(values, indent=1, sort_keys=True) + "\n").encode())
    return path


def _tabular(header: list[str], rows: list[list[str]], align: str) -> str:
    body = [" & ".join(header) + r" \\", r"\midrule"] + [" & ".join(r) + r" \\" for r in rows]
    return "\n".join([f"\\begin{{tabular}}{{{align}}}", r"\toprule", *body, r"\bottomrule", r"\end{tabular}"]) + "\n"


def _k(value) -> str:
    return fmt(int(round(value))) if value is not None else "--"


def sample_size_table(store) -> str:
    """K(Delta) per run (dataset, model, seed) and scale: the given order, the simultaneous-band K, the median and
    5-95 % range over random orders, the conformal upper K, and the closed form."""
    rows = []
    for r in load_table(store, "sample_size"):
        scale = r"$\sigma=" + fmt(r["sigma"], 2) + "$" + (" (gap)" if r["scale"] == "loss_gap" else "")
        rows.append([TEX_LABELS[r["dataset"]], TEX_LABELS[r["model"]], str(r["seed"]), scale,
                     f"${fmt(r['delta'], 2)}$", _k(r["K_fixed"]), _k(r["K_band"]), _k(r["K_order_median"]),
                     f"{_k(r['K_order_q05'])}--{_k(r['K_order_q95'])}", _k(r["K_order_upper"]), _k(r["K_closed"]),
                     pct(r["test_accuracy_K"]), pct(r["test_accuracy_N"])])
    header = ["data", "model", "seed", "scale", r"$\Delta$", r"$K$", r"$K$ band", r"$K$ orders", "5--95\\%",
              r"upper", r"$K$ $\bar V$", r"acc.\ $K$", r"acc.\ $N$"]
    return _tabular(header, rows, "lllll" + "r" * 8)


def predictor_table(store) -> str:
    """Per (dataset, model) and accuracy gap: the measured n within the gap of the plateau, the power-law
    learning-curve prediction and the landscape pilot prediction from the largest pilot, with their costs."""
    rows = []
    predictors = load_table(store, "predictors")
    n0 = max((p["n0"] for p in predictors), default=None)
    for p in [p for p in predictors if p["n0"] == n0]:
        lc, ls = p["cost_learning_curve"], p["cost_landscape"]
        rows.append([TEX_LABELS[p["dataset"]], TEX_LABELS[p["model"]], pct(p["gap"]), _k(p["n_within"]),
                     _k(p["n_learning_curve"]), _k(p.get("n_landscape_loss_gap")), _k(p.get("n_landscape_sigma")),
                     f"{lc['trainings']} / {fmt(int(round(lc['seconds'])))}",
                     f"{ls['trainings']} / {fmt(int(round(ls['seconds'])))}"])
    header = ["data", "model", "gap (pt)", "$n$ measured", "power law", r"landscape (gap $\sigma$)",
              r"landscape ($\sigma$ fixed)", "cost LC (trainings / s)", "cost pilot (trainings / s)"]
    return _tabular(header, rows, "llr" + "r" * 6)


def solver_table(store) -> str:
    """One row per solver and model of the solver comparison (first seed), and PyHessian's trace and density next
    to ours where the spectrum extras computed them."""
    rows = []
    for ds, m, seed in solver_runs(store):
        for r in load_solvers(store, ds, m, seed)["rows"]:
            rows.append([TEX_LABELS[ds], TEX_LABELS[m], r["method"], fmt(int(r["k"])), fmt(int(r["n"])),
                         fmt(int(r["hvp_count"])), fmt(r["seconds"], 2), f"${fmt(r['max_residual'], 2)}$"])
        p = load_spectrum(store, ds, m, seed)
        if p.get("pyhessian"):
            hvp = p["hvp_counts"]
            ours_s = load(store, SPECTRA, run_name(ds, m, seed)).meta["summary"]["solver_seconds"]
            for label, ours_n, ours_t, theirs in (
                    ("trace", hvp["trace"], ours_s.get("trace"), p["pyhessian"]["trace"]),
                    ("density", hvp["density"], ours_s.get("density"), p["pyhessian"]["density"])):
                rows.append([TEX_LABELS[ds], TEX_LABELS[m], f"{label} (ours)", "--", "--", fmt(int(ours_n)),
                             fmt(ours_t, 2) if ours_t else "--", "--"])
                rows.append([TEX_LABELS[ds], TEX_LABELS[m], f"{label} (PyHessian)", "--", "--",
                             fmt(int(theirs["products"])), fmt(theirs["seconds"], 2), "--"])
    header = ["data", "model", "solver", "$k$", "$N$", "products", "time (s)", "max residual"]
    return _tabular(header, rows, "lllrrrrr")


def theory_table(store) -> str:
    rows = []
    for r in load_table(store, "theory"):
        if r["distribution"] != "gaussian" or r["estimator"] != "plain":
            continue
        rows.append([r["subspace"], fmt(int(r["D"])), fmt(r["sigma"]), fmt(r["median_mc_over_q"]),
                     pct(r["share_within_3se"]), fmt(r.get("median_mc_over_t"))])
    header = ["subspace", "$D$", r"$\sigma$", r"median MC/$Q_k$", r"\% $k$ within 3 SE", r"median MC/$T_k$"]
    return _tabular(header, rows, "lrrrrr")


def write_table(name: str, tex: str) -> Path:
    path = GENERATED / f"{name}.tex"
    atomic_write_bytes(path, tex.encode())
    return path
