"""The paper's tables as LaTeX tabulars (booktabs), generated from saved results only (notebook 06): sample
sizes, predictors, solvers, theory vs Monte Carlo, closed-form speed, and the last ``make bench`` run."""
from __future__ import annotations

from pathlib import Path

from lib.infra.results import ResultStore
from lib.outputs.latex import TEX_LABELS, fmt, fmt_k, pct, tabular, tex_text
from lib.records.convergence import load_table
from lib.records.monte_carlo import load_speed
from lib.records.runs import load, run_name
from lib.records.spectrum import FOLDER as SPECTRA
from lib.records.spectrum import load_solvers, load_spectrum, solver_runs

BENCH_RUN = ("bench", "full")


def _k_range(lo, hi) -> str:
    """The 5-95 % range of K over orders: ``lo--hi``, ``lo--$>N$`` when the upper end is not reached, ``--``."""
    if lo is None:
        return "--"
    return f"{fmt_k(lo)}--{fmt_k(hi) if hi is not None else '$>N$'}"


def sample_size_table(store) -> str:
    """K(Delta) per run (dataset, model, seed) and scale: the given order, the simultaneous-band K, the median and
    5-95 % range over random orders, the conformal upper K, and the closed form."""
    rows = []
    for r in load_table(store, "sample_size"):
        scale = r"$\sigma=" + fmt(r["sigma"], 2) + "$" + (" (gap)" if r["scale"] == "loss_gap" else "")
        rows.append([TEX_LABELS[r["dataset"]], TEX_LABELS[r["model"]], str(r["seed"]), scale,
                     f"${fmt(r['delta'], 2)}$", fmt_k(r["K_fixed"]), fmt_k(r["K_band"]), fmt_k(r["K_order_median"]),
                     _k_range(r["K_order_q05"], r["K_order_q95"]), fmt_k(r["K_order_upper"]), fmt_k(r["K_closed"]),
                     "--" if r["test_accuracy_K"] is None else pct(r["test_accuracy_K"]), pct(r["test_accuracy_N"])])
    header = ["data", "model", "seed", "scale", r"$\Delta$", r"$K$", r"$K$ band", r"$K$ orders", "5--95\\%",
              r"upper", r"$K$ $\bar V$", r"acc.\ $K$", r"acc.\ $N$"]
    return tabular(header, rows, "lllll" + "r" * 8)


def predictor_table(store) -> str:
    """Per (dataset, model) and accuracy gap: the measured n within the gap of the plateau (">= n (censored)" where
    it is the largest learning-curve size), the power-law learning-curve prediction and the landscape pilot
    prediction from the largest pilot, with their costs."""
    rows = []
    predictors = load_table(store, "predictors")
    n0 = max((p["n0"] for p in predictors), default=None)
    n_max = max((r["n"] for r in load_table(store, "learning_curve")), default=None)
    for p in [p for p in predictors if p["n0"] == n0]:
        lc, ls = p["cost_learning_curve"], p["cost_landscape"]
        measured = (r"$\ge$" + fmt_k(p["n_within"]) + " (censored)" if p["n_within"] is not None
                    and n_max is not None and p["n_within"] >= n_max else fmt_k(p["n_within"]))
        rows.append([TEX_LABELS[p["dataset"]], TEX_LABELS[p["model"]], pct(p["gap"]), measured,
                     fmt_k(p["n_learning_curve"]), fmt_k(p.get("n_landscape_loss_gap")),
                     fmt_k(p.get("n_landscape_sigma")),
                     f"{lc['trainings']} / {fmt(int(round(lc['seconds'])))}",
                     f"{ls['trainings']} / {fmt(int(round(ls['seconds'])))}"])
    header = ["data", "model", "gap (pt)", "$n$ measured", "power law", r"landscape (gap $\sigma$)",
              r"landscape ($\sigma$ fixed)", "cost LC (trainings / s)", "cost pilot (trainings / s)"]
    return tabular(header, rows, "llr" + "r" * 6)


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
                    ("trace, Hutchinson", hvp.get("trace_hutchinson", hvp["trace"]),
                     ours_s.get("trace_hutchinson", ours_s.get("trace")),
                     {**p["pyhessian"]["trace"], "seconds": ours_s.get("pyhessian_trace")}),
                    ("density", hvp["density"], ours_s.get("density"),
                     {**p["pyhessian"]["density"], "seconds": ours_s.get("pyhessian_density")})):
                rows.append([TEX_LABELS[ds], TEX_LABELS[m], f"{label} (ours)", "--", "--", fmt(int(ours_n)),
                             fmt(ours_t, 2) if ours_t else "--", "--"])
                rows.append([TEX_LABELS[ds], TEX_LABELS[m], f"{label} (PyHessian)", "--", "--",
                             fmt(int(theirs["products"])),
                             fmt(theirs["seconds"], 2) if theirs["seconds"] is not None else "--", "--"])
    header = ["data", "model", "solver", "$k$", "$N$", "products", "time (s)", "max residual"]
    return tabular(header, rows, "lllrrrrr")


def theory_table(store) -> str:
    """Per curve with a quadratic prediction (gaussian, plain estimator; the first seed's main and sweep curves and
    every seed's loss-gap curves): the run, the scale, and how Monte Carlo compares with the quadratic model (per k,
    bulk vs top-1 % spikes, V-bar) and with the logit-space surrogate."""
    rows = []
    for r in load_table(store, "theory"):
        if r["distribution"] != "gaussian" or r["estimator"] != "plain":
            continue
        scale = fmt(r["sigma"], 2) + (" (gap)" if r["scale"] == "loss_gap" else "")
        rows.append([TEX_LABELS[r["dataset"]], TEX_LABELS[r["model"]], str(r["seed"]),
                     "H" if r["subspace"] == "hessian" else "R", fmt(int(r["D"])), scale,
                     fmt(r["median_mc_over_q"], 2), fmt(r["median_mc_over_q_bulk"], 2),
                     fmt(r["median_mc_over_q_spikes"], 2), pct(r["share_within_3se"]),
                     fmt(r.get("vbar_q_over_mc"), 2), fmt(r.get("median_mc_over_surrogate"), 2),
                     fmt(r.get("vbar_surrogate_over_mc"), 2), fmt(r.get("median_mc_over_t"), 2)])
    header = ["data", "model", "seed", "sub.", "$D$", r"$\sigma$", r"MC/$Q_k$", "bulk", "spikes",
              r"\% in 3 SE", r"$\bar V_Q/\bar V$", "MC/surr.", r"$\bar V_{s}/\bar V$", r"MC/$T_k$"]
    return tabular(header, rows, "llll" + "r" * 10)


def speed_table(store) -> str:
    """Closed form against Monte Carlo per Hessian curve with a quadratic prediction (main curves of the first seed
    and the sigma sweep): the Monte-Carlo time of the saved T and its relative SE, the T and time that give 1 %
    relative SE (SE ~ T^-1/2), the time of Q_k for every k, of the per-sample terms (jet, once per run and D), the two
    speed ratios and the median MC/Q_k (1 where the closed form is accurate)."""
    rows = []
    for r in load_speed(store):
        rows.append([TEX_LABELS[r["dataset"]], TEX_LABELS[r["model"]], fmt(int(r["D"])), fmt(r["sigma"], 2),
                     fmt(int(r["n_samples"])), pct(r["relative_se"]), fmt(int(round(r["T_target"]))),
                     fmt(r["mc_seconds"], 2), fmt(r["mc_seconds_target"], 2), fmt(r["closed_seconds"], 2),
                     fmt(r["jet_seconds"], 2), fmt(r["speedup"], 2), fmt(r["speedup_with_jet"], 2),
                     fmt(r["median_mc_over_q"], 2)])
    header = ["data", "model", "$D$", r"$\sigma$", "$T$", r"rel.\ SE (\%)", r"$T_{1\%}$", "MC (s)",
              r"MC$_{1\%}$ (s)", "$Q_k$ (s)", "jet (s)", r"MC$_{1\%}/Q_k$", r"MC$_{1\%}$/($Q_k$+jet)", r"MC/$Q_k$"]
    return tabular(header, rows, "ll" + "r" * 12)


def load_bench(store):
    """The last complete ``make bench`` run (``results/bench/bench/full.json``, beside the profile's own results),
    or None where it has not been run."""
    bench = ResultStore("bench", root=Path(store.root).parent / "bench")
    return bench.load(*BENCH_RUN) if bench.meta(*BENCH_RUN) is not None else None


def bench_target(r: dict) -> str:
    """A bench row's target for the table: "<= x", ">= x", "x" or "--"."""
    if r["target"] is None:
        return "--"
    return (r"$\le$ " if r["kind"] == "max" else r"$\ge$ " if r["kind"] == "min" else "") + fmt(r["target"], 3)


def bench_table(store) -> str:
    """Every row of the summary table of the last ``make bench`` run (measured, target, met), or one row saying
    that it has not been run."""
    res = load_bench(store)
    header = ["measure", "measured", "target", "met"]
    if res is None:
        return tabular(header, [[r"\texttt{make bench} has not been run for this build", "--", "--", "--"]], "lrrr")
    rows = [[tex_text(r["measure"]), fmt(r["value"], 3), bench_target(r),
             "--" if r["ok"] is None else ("yes" if r["ok"] else r"\textbf{no}")] for r in res.payload["summary"]]
    return tabular(header, rows, "lrrr")
