"""Every figure of the paper (docs/specification.md section 7), drawn from saved results only.

Each function takes the profile's ``ResultStore`` (plus what selects the runs) and returns a matplotlib figure;
notebooks 02-05 call them for previews; ``lib.outputs.registry`` says which output file each one makes.
"""
from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from lib.core.sample_size.decay import first_k_below, k_closed_form, spearman
from lib.outputs import plotting
from lib.records.convergence import load_r0_curve, load_table
from lib.records.monte_carlo import (
    CurveSpec,
    group,
    load_curve,
    load_full_space_curve,
    load_full_space_plan,
    main_curves,
)
from lib.records.projection import load_projection
from lib.records.spectrum import load_spectrum, spectrum_seeds
from lib.records.your_model import load_your_model, your_model_runs

LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "mlp1": "MLP-1", "mlp2": "MLP-2", "cnn": "CNN",
          "hessian": "Hessian subspace", "random": "random subspace"}


#: points of the centred moving average drawn over raw R = 0 curves
SMOOTH_WINDOW = 21


def centred_moving_average(values, window: int) -> np.ndarray:
    """Mean over a centred window of ``window`` points (shrinking at the ends), not an exponential average seeded
    at the first value (which inflates early values)."""
    v = np.asarray(values, dtype=np.float64)
    half = window // 2
    c = np.concatenate([[0.0], np.cumsum(v)])
    lo = np.clip(np.arange(len(v)) - half, 0, len(v))
    hi = np.clip(np.arange(len(v)) + half + 1, 0, len(v))
    return (c[hi] - c[lo]) / (hi - lo)


def _log_index(n: int, points: int = 400) -> np.ndarray:
    """Indices 0..n-1 spaced logarithmically (for plotting long curves on log axes)."""
    return np.unique(np.round(np.geomspace(1, n, points)).astype(int) - 1)


def _runs(plan_specs: list[CurveSpec]) -> list[tuple[str, str]]:
    seen = []
    for s in plan_specs:
        if (s.dataset, s.model) not in seen:
            seen.append((s.dataset, s.model))
    return seen


# -------------------------------------------------------------------------------------------- spectrum
def spectrum(store, datasets, models, seeds, max_seeds: dict | None = None):
    with plotting.style():
        fig, axes = plotting.figure(2, len(datasets), width=plotting.FULL_WIDTH, aspect=0.6)
        for r, ds in enumerate(datasets):
            ax_ev, ax_d = axes[r]
            for i, m in enumerate(models):
                used = spectrum_seeds(m, seeds, max_seeds)
                specs = [load_spectrum(store, ds, m, s) for s in used]
                ev = np.array([p["eigenvalues"].numpy() for p in specs])
                idx = np.arange(1, ev.shape[1] + 1)
                sd = ev.std(0, ddof=1) if len(used) > 1 else np.zeros(ev.shape[1])
                n_label = "" if len(used) == len(seeds) else f", {len(used)} seed{'s' * (len(used) > 1)}"
                ax_ev.errorbar(idx, ev.mean(0), yerr=sd, marker=".", ms=3, capsize=1.5, lw=0.8,
                               color=plotting.PALETTE[i],
                               label=f"{LABELS[m]} (tr = {specs[0]['trace']:.3g}{n_label})")
                p0 = specs[0]
                ax_d.semilogy(p0["grid"], np.maximum(p0["density"], 1e-12), color=plotting.PALETTE[i],
                              label=LABELS[m])
                if p0.get("pyhessian"):   # PyHessian's own SLQ on the same probes, same grid
                    theirs = p0["pyhessian"]["density"]["density"]
                    ax_d.semilogy(p0["grid"], np.maximum(theirs, 1e-12), color=plotting.PALETTE[i], ls=":",
                                  lw=1.4, label=f"{LABELS[m]}, PyHessian (L1 diff. "
                                                f"{p0['pyhessian']['l1_difference']:.1e})")
            ax_ev.set_yscale("log")
            ax_ev.set(xlabel="index $i$", ylabel=r"eigenvalue $\lambda_i$",
                      title=f"{LABELS[ds]}: top eigenvalues (mean $\\pm$ sd over {len(seeds)} seeds)")
            ax_d.set(xlabel=r"eigenvalue $\lambda$", ylabel="spectral density", ylim=(1e-7, None),
                     title=f"{LABELS[ds]}: SLQ density (seed {seeds[0]})")
            ax_ev.legend(fontsize=6)
            ax_d.legend(fontsize=6)
        fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------- surfaces
#: the two planes of the surfaces figure: (result key, panel-title label, axis labels)
SURFACE_PLANES = [("hessian", "Hessian plane (top-2 eigenvectors)",
                   (r"$\theta_1$ (along $v_1$)", r"$\theta_2$ (along $v_2$)")),
                  ("filter_normalized", "random plane (filter-normalised)",
                   (r"$\theta_1$ (random direction 1)", r"$\theta_2$ (random direction 2)"))]


def surfaces(store, dataset, model, seed):
    """The loss of one run (dataset, model, seed) on two planes through w*: the top-2 Hessian eigenvectors (upper
    row) and two filter-normalised random directions (lower row); columns L_k at a small k, L_{N-1} and the squared
    increment (L_{k+1} - L_k)^2, each on a log10 colour scale with its own labelled colour bar."""
    p = load_projection(store, dataset, model, seed)
    k_small, N = p["k"][0], p["N"]
    with plotting.style():
        fig, axes = plotting.figure(3, 2, width=plotting.FULL_WIDTH, aspect=1.05)
        for r, (plane, label, (xlabel, ylabel)) in enumerate(SURFACE_PLANES):
            g = p[plane]
            a = g["axis"]
            panels = [(g[f"L_{k_small}"], f"$L_{{{k_small}}}$", f"$\\log_{{10}} L_{{{k_small}}}$ (nats)"),
                      (g[f"L_{N - 1}"], f"$L_{{{N - 1}}}$", f"$\\log_{{10}} L_{{{N - 1}}}$ (nats)"),
                      ((g[f"L_{k_small + 1}"] - g[f"L_{k_small}"]) ** 2,
                       f"$(L_{{{k_small + 1}}} - L_{{{k_small}}})^2$",
                       f"$\\log_{{10}} (L_{{{k_small + 1}}} - L_{{{k_small}}})^2$ (nats$^2$)")]
            for c, (z, title, unit) in enumerate(panels):
                ax = axes[r, c]
                cs = ax.contourf(a, a, np.log10(np.maximum(z.T, 1e-12)), levels=20)
                ax.plot(0, 0, "w+", ms=8, mew=1.5)
                cb = fig.colorbar(cs, ax=ax, shrink=0.95)
                cb.set_label(unit, fontsize=7)
                cb.ax.tick_params(labelsize=6.5)
                cb.locator = MaxNLocator(6)
                cb.update_ticks()
                ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{title}\n{label}")
                ax.grid(False)
        fig.suptitle(f"{LABELS[dataset]}, {LABELS[model]}, seed {seed}, N = {N}: training loss (cross-entropy) on "
                     "two planes through $w^*$ (+)", fontsize=9)
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------- Delta curves
def _curve_line(ax, c, color, label, key="delta", se_key="stderr", scale=None):
    idx = _log_index(len(c["k"]))
    k = c["k"][idx]
    y = c[key][idx] * (1 if scale is None else scale(k))
    se = 2 * c[se_key][idx] * (1 if scale is None else scale(k)) if se_key else np.zeros_like(y)
    return plotting.band(ax, k, y, se, label=label, color=color)


def delta_main(store, plan, k2: bool = False):
    """Delta_k (or k^2 Delta_k) vs k, Hessian vs random subspace, one panel per (dataset, model)."""
    specs = main_curves(plan)
    runs = _runs(specs)
    ncols = min(3, len(runs))
    nrows = int(np.ceil(len(runs) / ncols))
    with plotting.style():
        fig, axes = plotting.figure(ncols, nrows, width=plotting.FULL_WIDTH, aspect=0.8)
        for ax in axes.flat[len(runs):]:
            ax.set_visible(False)
        for ax, (ds, m) in zip(axes.flat, runs):
            ax.set_xscale("log")
            ax.set_yscale("log")
            for i, sub in enumerate(("hessian", "random")):
                spec = next(s for s in specs if (s.dataset, s.model, s.subspace) == (ds, m, sub))
                c = load_curve(store, spec)
                _curve_line(ax, c, plotting.PALETTE[i], f"{LABELS[sub]}, D={spec.D}",
                            scale=(lambda k: k ** 2) if k2 else None)
            ylabel = r"$k^2 \Delta_k$" if k2 else r"$\Delta_k$"
            ax.set(xlabel="sample size $k$", ylabel=ylabel,
                   title=f"{LABELS[ds]}, {LABELS[m]}, $\\sigma$={specs[0].sigma:g}")
            # Delta_k falls from the top left: the bottom left corner is empty
            ax.legend(fontsize=6, loc="best" if k2 else "lower left")
        fig.tight_layout()
    return fig


def sweep(store, plan, which: str):
    """Delta_k for the sigma sweep (Hessian and random), the D sweep, the distributions or the estimators."""
    specs = group(plan, which)
    attr = {"sigma": "sigma", "dim": "D", "distribution": "distribution", "estimator": "estimator"}[which]
    panels = [("hessian", [s for s in specs if s.subspace == "hessian"])]
    if which == "sigma":
        panels.append(("random", [s for s in specs if s.subspace == "random"]))
    with plotting.style():
        fig, axes = plotting.figure(len(panels), width=plotting.COLUMN_WIDTH * len(panels), aspect=0.8)
        for ax, (sub, ss) in zip(axes.flat, panels):
            ax.set_xscale("log")
            ax.set_yscale("log")
            for i, s in enumerate(ss):
                c = load_curve(store, s)
                _curve_line(ax, c, plotting.PALETTE[i % len(plotting.PALETTE)], f"{attr} = {getattr(s, attr)}")
            ax.set(xlabel="sample size $k$", ylabel=r"$\Delta_k$",
                   title=f"{LABELS[ss[0].dataset]}, {LABELS[ss[0].model]}, {LABELS[sub]}")
            ax.legend(fontsize=6)
        fig.tight_layout()
    return fig


def estimator_efficiency(store, plan):
    """Relative standard error x sqrt(cost) per estimator and distribution (lower is better)."""
    rows = []
    for which in ("estimator", "distribution"):
        for s in group(plan, which):
            c = load_curve(store, s)
            rel = np.median(c["stderr"] / np.maximum(c["delta"], 1e-300))
            rows.append((f"{s.distribution}/{s.estimator}", rel * np.sqrt(c["n_forward"])))
    labels, values = zip(*dict(rows).items()) if rows else ((), ())
    with plotting.style():
        fig, axes = plotting.figure(1, aspect=0.6)
        ax = axes[0, 0]
        ax.barh(range(len(values)), values, color=plotting.PALETTE[0])
        ax.set_yticks(range(len(values)), labels)
        ax.set(xlabel=r"median$_k$ (SE$_k$ / $\Delta_k$) $\times \sqrt{\mathrm{forward\ passes}}$",
               title="Monte-Carlo efficiency (lower is better)")
        fig.tight_layout()
    return fig


def theory_vs_mc(store, plan):
    """Monte Carlo vs the quadratic prediction Q_k and Theorem 1's T_k across sigma (Hessian subspace)."""
    specs = [s for s in group(plan, "sigma") if s.subspace == "hessian" and s.theory]
    if not specs:
        specs = [s for s in main_curves(plan) if s.theory][:1]
    with plotting.style():
        ncols = min(3, len(specs))
        nrows = -(-len(specs) // ncols)
        fig, axes = plotting.figure(ncols, nrows, width=plotting.FULL_WIDTH, aspect=0.75)
        for ax, s in zip(axes.flat, specs):
            c = load_curve(store, s)
            idx = _log_index(len(c["k"]))
            k = c["k"][idx]
            ax.set_xscale("log")
            ax.set_yscale("log")
            plotting.band(ax, k, c["delta"][idx], 2 * c["stderr"][idx], label="Monte Carlo", color=plotting.PALETTE[0])
            ax.plot(k, c["Q"][idx], color=plotting.PALETTE[1], ls="--", label="$Q_k$ (quadratic)")
            if c.get("T") is not None:
                ax.plot(k, np.maximum(c["T"][idx], 1e-300), color=plotting.PALETTE[2], ls=":", label="$T_k$ (Thm. 1)")
            ax.set(xlabel="$k$", title=f"$\\sigma$ = {s.sigma:g}")
        for ax in axes[:, 0]:
            ax.set_ylabel(r"$\Delta_k$")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        spare = list(axes.flat)[len(specs):]
        for ax in spare:
            ax.axis("off")
        if spare:   # the legend in the first empty panel, else below the panels
            spare[0].legend(handles, labels, loc="center", fontsize=7)
        else:
            fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7)
        fig.suptitle(f"{LABELS[specs[0].dataset]}, {LABELS[specs[0].model]}, D = {specs[0].D}, Hessian subspace",
                     fontsize=8)
        fig.tight_layout(rect=(0, 0 if spare else 0.08, 1, 1))
    return fig


def order_average(store, plan):
    """k(k+1) Delta_k: fixed order, mean and median over R random orders, and V-bar N/(N-1)."""
    specs = [s for s in main_curves(plan) if s.n_orders > 0]
    runs = _runs(specs)
    # one model per dataset keeps the panels legible: the model of the sigma sweep (the original's network),
    # else the first one; every other run's curves are in the results and in the notebooks
    sweep = group(plan, "sigma")
    focus = sweep[0].model if sweep and any(m == sweep[0].model for _, m in runs) else runs[0][1]
    runs = [(ds, m) for ds, m in runs if m == focus]
    with plotting.style():
        fig, axes = plotting.figure(2, len(runs), width=plotting.FULL_WIDTH, aspect=0.6)
        for r, (ds, m) in enumerate(runs):
            for c_, sub in enumerate(("hessian", "random")):
                ax = axes[r, c_]
                s = next(x for x in specs if (x.dataset, x.model, x.subspace) == (ds, m, sub))
                c = load_curve(store, s)
                idx = _log_index(len(c["k"]))
                k = c["k"][idx]
                kk = k * (k + 1)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.plot(k, kk * c["delta"][idx], color=plotting.PALETTE[0], lw=0.8, label="fixed order")
                ax.plot(k, kk * c["order_mean"][idx], color=plotting.PALETTE[1], label=f"mean of {s.n_orders} orders")
                ax.plot(k, kk * c["order_median"][idx], color=plotting.PALETTE[2], ls="--", label="median of orders")
                ax.axhline(c["vbar"] * c["N"] / (c["N"] - 1), color="k", ls=":", label=r"$\bar V N/(N-1)$")
                ax.set(xlabel="$k$", ylabel=r"$k(k+1)\Delta_k$", title=f"{LABELS[ds]}, {LABELS[m]}, {LABELS[sub]}")
                ax.legend(fontsize=5)
        fig.tight_layout()
    return fig


def vbar_parts(store, plan):
    """V-bar (Monte Carlo) and its quadratic-model parts V0, s V2, m V4 across sigma, Hessian vs random."""
    specs = group(plan, "sigma")
    with plotting.style():
        fig, axes = plotting.figure(2, width=plotting.FULL_WIDTH, aspect=0.7)
        for ax, sub in zip(axes.flat, ("hessian", "random")):
            ss = sorted((s for s in specs if s.subspace == sub), key=lambda s: s.sigma)
            if not ss:
                continue
            cs = [load_curve(store, s) for s in ss]
            sig = np.array([s.sigma for s in ss])
            ax.errorbar(sig, [c["vbar"] for c in cs], yerr=[2 * c["vbar_stderr"] for c in cs], marker="o", ms=3,
                        color="k", label=r"$\bar V$ (Monte Carlo)")
            if all("vbar_quadratic" in c for c in cs):
                q = [c["vbar_quadratic"] for c in cs]
                for i, (key, lab) in enumerate([("vbar", r"$\bar V$ (quadratic)"), ("V0", "$V_0$"),
                                                ("grad_part", r"$\sigma^2 V_2$"), ("curv_part", r"$\sigma^4 V_4$")]):
                    ax.plot(sig, [abs(x[key]) for x in q], marker=".", ls="--" if i == 0 else "-",
                            color=plotting.PALETTE[i], label=lab)
            ax.set(xscale="log", yscale="log", xlabel=r"$\sigma$", ylabel="across-sample loss variance",
                   title=f"{LABELS[ss[0].dataset]}, {LABELS[ss[0].model]}, {LABELS[sub]}")
            ax.legend(fontsize=6)
        fig.tight_layout()
    return fig


def delta_vs_loss(store, plan):
    """Delta_k against L_k(w*) along k for the main Hessian curves, with Spearman's rho."""
    specs = [s for s in main_curves(plan) if s.subspace == "hessian"]
    with plotting.style():
        fig, axes = plotting.figure(1, width=plotting.COLUMN_WIDTH, aspect=0.8)
        ax = axes[0, 0]
        for i, s in enumerate(specs):
            c = load_curve(store, s)
            L = (np.cumsum(c["losses0"]) / np.arange(1, len(c["losses0"]) + 1))[:-1]
            rho = spearman(c["delta"], L)["rho"]
            idx = _log_index(len(L))
            ax.loglog(L[idx], c["delta"][idx], ".", ms=2, color=plotting.PALETTE[i % 8],
                      label=f"{LABELS[s.dataset]}, {LABELS[s.model]} ($\\rho$ = {rho:.2f})")
        ax.set(xlabel=r"$L_k(w^*)$", ylabel=r"$\Delta_k$", title=r"$\Delta_k$ vs the loss at the minimum")
        ax.legend(fontsize=5)
        fig.tight_layout()
    return fig


def learning_curve(store):
    """Test accuracy against n (mean and range over seeds) for every (dataset, model), one panel per dataset, with
    the measured n within 1 point of the plateau (o), the power-law prediction from sizes <= n0 (^) and the
    landscape pilot's prediction K(Delta*) (v), each on its own run's curve."""
    rows = load_table(store, "learning_curve")
    predictors = load_table(store, "predictors")
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    with plotting.style():
        fig, axes = plotting.figure(len(datasets), width=plotting.COLUMN_WIDTH * len(datasets), aspect=0.8)
        for ax, ds in zip(axes.flat, datasets):
            models = list(dict.fromkeys(r["model"] for r in rows if r["dataset"] == ds))
            for i, m in enumerate(models):
                color = plotting.PALETTE[i % 8]
                rr = [r for r in rows if (r["dataset"], r["model"]) == (ds, m)]
                sizes = sorted({r["n"] for r in rr})
                acc = np.array([[100 * r["test_accuracy"] for r in rr if r["n"] == n] for n in sizes])
                mean = acc.mean(1)
                ax.fill_between(sizes, acc.min(1), acc.max(1), color=color, alpha=0.25, lw=0)
                ax.plot(sizes, mean, marker=".", ms=3, color=color,
                        label=f"{LABELS[m]} ({acc.shape[1]} seed{'s' * (acc.shape[1] > 1)})")

                def at(n, sizes=sizes, mean=mean):
                    return float(np.interp(np.log(n), np.log(sizes), mean))

                pred = [p for p in predictors if (p["dataset"], p["model"]) == (ds, m) and abs(p["gap"] - 0.01) < 1e-12]
                if pred:
                    p = max(pred, key=lambda p: p["n0"])
                    if p["n_within"]:
                        ax.plot(p["n_within"], at(p["n_within"]), "o", mfc="none", color=color, ms=6)
                    for key, marker in (("n_learning_curve", "^"), ("n_landscape_loss_gap", "v"),
                                        ("n_landscape_sigma", "v")):
                        n = p.get(key)
                        if n and sizes[0] <= n <= sizes[-1]:
                            ax.plot(n, at(n), marker, color=color, ms=4, mfc="none" if "sigma" in key else color)
            ax.set(xscale="log", xlabel="training-set size $n$ (first $n$ of the insertion order)",
                   ylabel="test accuracy (%)", title=f"{LABELS[ds]}: o measured, ^ power law, v landscape")
            ax.legend(fontsize=6, loc="lower right")
        fig.tight_layout()
    return fig


def k_vs_scale(store, plan, thresholds):
    """K(Delta) against sigma (left) and against D (right) for the sweep model, from Monte Carlo (the given order,
    filled) and from the order-averaged closed form with the Monte-Carlo V-bar (open)."""
    panels = [([s for s in group(plan, "sigma") if s.subspace == "hessian"], "sigma", r"scale $\sigma$"),
              (group(plan, "dim"), "D", "subspace dimension $D$")]
    with plotting.style():
        fig, axes = plotting.figure(2, width=plotting.FULL_WIDTH, aspect=0.45)
        for ax, (specs, attr, xlabel) in zip(axes.flat, panels):
            specs = sorted(specs, key=lambda s: getattr(s, attr))
            if not specs:
                ax.set_visible(False)
                continue
            xs = [getattr(s, attr) for s in specs]
            curves = [load_curve(store, s) for s in specs]
            for i, thr in enumerate(thresholds):
                color = plotting.PALETTE[i % 8]
                mc = [first_k_below(c["k"], c["delta"], thr) for c in curves]
                closed = [k_closed_form(c["vbar"], c["N"], thr) for c in curves]
                ax.plot(xs, [np.nan if v is None else v for v in mc], "o-", color=color, ms=3,
                        label=rf"$\Delta={thr:g}$")
                ax.plot(xs, closed, "s--", color=color, ms=3, mfc="none", lw=0.8)
            N = curves[0]["N"]
            ax.axhline(N, color="0.5", lw=0.6, ls=":")
            ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=r"$K(\Delta)$",
                   title=f"{LABELS[specs[0].dataset]}, {LABELS[specs[0].model]}: K vs {attr} (dotted: N)")
            ax.legend(fontsize=6)
        fig.tight_layout()
    return fig


def r0_curves(store):
    """Mean over random orders of |L_{k+1} - L_k|(w*) for bias-free MLPs, with the bound 2 M_l / (k+1)."""
    rows = load_table(store, "r0")
    with plotting.style():
        fig, axes = plotting.figure(2, width=plotting.FULL_WIDTH, aspect=0.7)
        ax, ax2 = axes[0]
        for i, r in enumerate(rows):
            p = load_r0_curve(store, r["name"])
            idx = _log_index(len(p["k"]))
            lab = "-".join(map(str, r["hidden"]))
            color = plotting.PALETTE[i] if len(rows) <= len(plotting.PALETTE) else plotting.sequential(i, len(rows))
            ax.plot(p["k"][idx], p["mean"][idx], color=color, lw=0.4, alpha=0.45)
            smooth = centred_moving_average(p["mean"], SMOOTH_WINDOW)
            ax.plot(p["k"][idx], smooth[idx], color=color, lw=1.0,
                    label=f"784-{lab}-10 (slope {r['slope']:.2f})" if lab else f"784-10 (slope {r['slope']:.2f})")
            ax.plot(p["k"][idx], p["bound_curve"][idx], ls=":", color=plotting.PALETTE[i % 8])
        ax.set(xscale="log", yscale="log", xlabel="$k$", ylabel=r"$|L_{k+1}-L_k|(w^*)$",
               title=f"R = 0: raw (thin), centred {SMOOTH_WINDOW}-point mean (thick), bound (dotted)")
        ax.legend(fontsize=5)
        names = ["-".join(map(str, r["hidden"])) or "none" for r in rows]
        x = np.arange(len(rows))
        ax2.bar(x - 0.2, [r["hessian_bound"] for r in rows], 0.4, label="bound", color=plotting.PALETTE[1])
        ax2.bar(x + 0.2, [r["max_measured_norm"] for r in rows], 0.4, label=r"measured max$_i$ $\|\nabla^2 l_i\|_2$",
                color=plotting.PALETTE[0])
        ax2.set_xticks(x, names)
        ax2.set(yscale="log", xlabel="hidden widths", ylabel="spectral norm", title="Hessian-norm bound vs measured")
        ax2.legend(fontsize=6)
        fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------- full space
def full_space_ratio(store):
    """Delta^(D)_k / Delta^(full)_k against k (top-D Hessian subspace over the full-space isotropic criterion):
    one row per run of the ``full_space`` group, the sigma sweep at D (left) and the D sweep at sigma (right);
    solid: equal expected squared perturbation norm (s = sigma sqrt(D/n)), dashed: s = sigma per coordinate; bands
    +-2 SE of the ratio (the two curves' relative standard errors added in quadrature over the thetas)."""
    pairs = load_full_space_plan(store)
    runs = list(dict.fromkeys((p["dataset"], p["model"]) for p in pairs))
    with plotting.style():
        fig, axes = plotting.figure(2, max(1, len(runs)), width=plotting.FULL_WIDTH, aspect=0.6)
        if not runs:
            for ax in axes.flat:
                ax.set(xlabel="sample size $k$", title="no full-space runs in this profile")
                ax.text(0.5, 0.5, "monte_carlo.full_space_models = []", ha="center", transform=ax.transAxes)
        for r, (ds, m) in enumerate(runs):
            for c_, line in enumerate(("sigma", "dim")):
                ax = axes[r, c_]
                mine = [p for p in pairs if (p["dataset"], p["model"], p["line"]) == (ds, m, line)]
                values = sorted({p["sigma"] if line == "sigma" else p["D"] for p in mine})
                for p in mine:
                    a, b = load_full_space_curve(store, p["subspace"]), load_full_space_curve(store, p["full"])
                    idx = _log_index(len(a["k"]))
                    ratio = a["delta"][idx] / b["delta"][idx]
                    rel = np.sqrt((a["stderr"][idx] / a["delta"][idx]) ** 2 + (b["stderr"][idx] / b["delta"][idx]) ** 2)
                    v = p["sigma"] if line == "sigma" else p["D"]
                    color = plotting.PALETTE[values.index(v) % len(plotting.PALETTE)]
                    norm = p["scale"] == "norm"
                    label = (f"$\\sigma$ = {v:g}" if line == "sigma" else f"D = {v}") if norm else None
                    ax.set_xscale("log")
                    ax.set_yscale("log")
                    plotting.band(ax, a["k"][idx], ratio, 2 * rel * ratio, label=label, color=color,
                                  ls="-" if norm else "--", lw=1.0 if norm else 0.8)
                ax.axhline(1.0, color="0.4", lw=0.6, ls=":")
                ax.text(0.99, 0.02, r"solid: $s=\sigma\sqrt{D/n}$ (equal norm); dashed: $s=\sigma$ per coordinate",
                        fontsize=5, ha="right", va="bottom", transform=ax.transAxes)
                fixed = f"D = {mine[0]['D']}" if line == "sigma" else f"$\\sigma$ = {mine[0]['sigma']:g}"
                varies = r"$\sigma$" if line == "sigma" else "D"
                ax.set(xlabel="sample size $k$", ylabel=r"$\Delta^{(D)}_k / \Delta^{(\mathrm{full})}_k$",
                       title=f"{LABELS[ds]}, {LABELS[m]}: {fixed}, {varies} varies")
                ax.legend(fontsize=5, ncol=2)
        fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------- your model (07)
def your_model(store):
    """Notebook 07's runs (residual CNN on scikit-learn's digits, through ``lib.api.analyze``). Left: Delta_k of the
    first seed with +-2 SE, the 5-95 % range over random insertion orders, the closed form V-bar N / ((N-1) k (k+1)),
    Q_k, the thresholds and K (given order: circles; conformal upper bound over orders: triangles); the other seeds
    as thin lines. Right: k (k+1) Delta_k (first seed's given order; every seed's median over random orders) against
    V-bar N / (N-1) (dashed, the exact order average), flat for a k^-2 law."""
    seeds = your_model_runs(store)
    runs = [load_your_model(store, s) for s in seeds]
    first = runs[0]["report"]
    with plotting.style():
        fig, axes = plotting.figure(2, 1, width=plotting.FULL_WIDTH, aspect=0.75)
        ax, ax2 = axes[0]
        k = np.asarray(first["k"], dtype=np.float64)
        idx = _log_index(len(k))
        d = np.asarray(first["delta"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        plotting.band(ax, k[idx], d[idx], 2 * np.asarray(first["stderr"])[idx], color=plotting.PALETTE[0],
                      label=f"$\\Delta_k$, seed {seeds[0]} ($\\pm 2$ SE)")
        if runs[0].get("order_q05") is not None:
            lo, hi = np.asarray(runs[0]["order_q05"]), np.asarray(runs[0]["order_q95"])
            ax.fill_between(k[idx], np.where(lo[idx] > 0, lo[idx], np.nan), hi[idx], color="0.5", alpha=0.25, lw=0,
                            label=f"5-95 % over {first['settings']['n_orders']} random orders")
        ax.plot(k[idx], np.asarray(first["order_formula"])[idx], "k--", lw=0.8,
                label=r"$\bar V N / ((N-1) k (k+1))$")
        if first["Q"] is not None:
            ax.plot(k[idx], np.maximum(np.asarray(first["Q"])[idx], 1e-300), ":", color=plotting.PALETTE[1], lw=1.0,
                    label="$Q_k$ (quadratic model)")
        for j, r in enumerate(runs[1:], 1):
            ax.plot(k[idx], np.asarray(r["report"]["delta"])[idx], lw=0.6, alpha=0.8,
                    color=plotting.PALETTE[(j + 1) % len(plotting.PALETTE)], label=f"seed {seeds[j]}")
        for z in first["sample_sizes"]:
            ax.axhline(z["threshold"], color="0.6", lw=0.5, ls=":")
            if z["K"] is not None:
                ax.plot([z["K"]], [z["threshold"]], "o", ms=4, mfc="none", color="C3")
            if z["K_order_upper"] is not None:
                ax.plot([z["K_order_upper"]], [z["threshold"]], "^", ms=4, mfc="none", color="0.2")
        ax.set(xlabel="sample size $k$ (insertion order)", ylabel=r"$\Delta_k = E_\theta (L_{k+1} - L_k)^2$",
               title=f"digits, residual CNN ({first['n_params']:,} parameters), N = {first['N']}: "
                     f"D = {first['D']}, $\\sigma$ = {first['settings']['sigma']:g}")
        ax.legend(fontsize=5.5, loc="upper right")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.plot(k[idx], (k * (k + 1) * d)[idx], lw=0.5, alpha=0.5, color=plotting.PALETTE[0],
                 label=f"seed {seeds[0]}, given order")
        for j, r in enumerate(runs):
            rep = r["report"]
            kk = np.asarray(rep["k"], dtype=np.float64)
            color = plotting.PALETTE[0] if j == 0 else plotting.PALETTE[(j + 1) % len(plotting.PALETTE)]
            if rep["order_median"] is not None:
                ax2.plot(kk[idx], (kk * (kk + 1) * np.asarray(rep["order_median"]))[idx], lw=1.0, color=color,
                         label=f"seed {seeds[j]}, median over orders")
            ax2.axhline(rep["vbar"] * rep["N"] / (rep["N"] - 1), color=color, lw=0.7, ls="--")
        ax2.set(xlabel="sample size $k$ (insertion order)", ylabel=r"$k (k+1) \Delta_k$",
                title=r"$k(k+1)\Delta_k$ against $\bar V N/(N-1)$ (dashed), per seed")
        ax2.legend(fontsize=5.5)
        fig.tight_layout()
    return fig
