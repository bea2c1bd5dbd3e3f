"""Every figure, table and number of the paper (``lib.outputs``) on the tiny pipeline's saved results
(``conftest.tiny_pipeline``): what each figure plots against the saved curves, each table's rows against the saved
rows formatted with ``fmt``/``pct``, ``numbers`` against the results, the formatting helpers on edge values and
``registry.missing``."""
import inspect
import json
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy.stats import spearmanr

from lib.core.sample_size.decay import first_k_below, fit_slope
from lib.infra.results import ResultStore
from lib.outputs import figures, latex, registry, tables
from lib.outputs import numbers as paper_numbers
from lib.outputs.latex import fmt, macro, pct
from lib.records import convergence as convergence_records
from lib.records import monte_carlo as mc_records
from lib.records import projection as projection_records
from lib.records import spectrum as spectrum_records
from lib.records.runs import run_name
from tests.conftest import TINY_TIMINGS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

DS, MODEL, SEED, N = "mnist", "mlp1", 0, 200
RUN = run_name(DS, MODEL, SEED)
FIGURE_FUNCTIONS = ["spectrum", "surfaces", "delta_main", "sweep", "estimator_efficiency", "theory_vs_mc",
                    "order_average", "vbar_parts", "delta_vs_loss", "learning_curve", "k_vs_scale", "r0_curves",
                    "full_space_ratio", "your_model"]          # your_model: tests/stages/test_your_model.py
REGISTERED = ["spectrum", "surfaces", "delta_main", "k2_delta_main", "sweep_sigma", "sweep_dim", "sweep_distribution",
              "sweep_estimator", "estimator_efficiency", "theory_vs_mc", "order_average", "vbar_parts",
              "delta_vs_loss", "learning_curve", "k_vs_scale", "r0_curves", "full_space_ratio", "your_model",
              "prediction_scatter", "prediction_task"]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def inputs(tiny_pipeline):
    return registry.Inputs.of(tiny_pipeline.store, tiny_pipeline.stage("figures")[0])


@pytest.fixture(scope="module")
def made(inputs):
    """Every registered figure, made once from the saved results (closed at the end of the module)."""
    out = {}
    for make in registry.FIGURES.values():
        out.update(make(inputs))
    yield out
    for fig in out.values():
        plt.close(fig)


def _panels(fig):
    """Visible axes that are not colour bars."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _labelled(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def _legend(ax):
    leg = ax.get_legend()
    assert leg is not None, f"no legend on {ax.get_title()!r}"
    return [t.get_text() for t in leg.get_texts()]


def _curve(store, spec):
    return mc_records.load_curve(store, spec)


def _check_line(line, k, values):
    """A plotted line of (k, values[k - 1]) at increasing k from 1 to N - 1 (log-spaced, every k of the curve)."""
    x, y = np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)
    assert x[0] == 1 and x[-1] == N - 1 and np.all(np.diff(x) > 0) and 50 < len(x) <= N - 1
    np.testing.assert_allclose(y, values[x.astype(int) - 1], rtol=1e-12)


def _rows(tex):
    """Cells of the body rows of a booktabs tabular."""
    lines = tex.splitlines()
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert all(line.endswith(r" \\") for line in body)
    return [line[:-3].split(" & ") for line in body]


def _header(tex):
    lines = tex.splitlines()
    return lines[lines.index(r"\toprule") + 1][:-3].split(" & ")


# ------------------------------------------------------------------------------------------------ registry
def test_every_figure_function_is_registered_and_every_entry_makes_its_files(made, tiny_pipeline):
    public = sorted(n for n, f in inspect.getmembers(figures, inspect.isfunction)       # figure makers take the store
                    if f.__module__ == figures.__name__ and not n.startswith("_")
                    and next(iter(inspect.signature(f).parameters)) == "store")
    assert public == sorted(FIGURE_FUNCTIONS), "a figure function without a test below (or a test without one)"
    assert list(registry.FIGURES) == REGISTERED
    runs = projection_records.projected_runs(tiny_pipeline.store)
    assert runs == [(DS, MODEL, SEED)]
    assert list(made) == [n if n != "surfaces" else f"surfaces_{DS}_{MODEL}" for n in REGISTERED]
    for name, fig in made.items():
        panels = _panels(fig)
        assert panels, name
        for ax in panels:
            assert ax.get_xlabel() and ax.get_title(), (name, ax.get_title())
        # a y label on some panel (the efficiency bars name their rows with tick labels instead)
        assert any(ax.get_ylabel() for ax in panels) or name == "estimator_efficiency", name


# ------------------------------------------------------------------------------------------------ figures
def test_spectrum_figure_plots_the_saved_eigenvalues_and_densities(made, tiny_pipeline):
    fig = made["spectrum"]
    p = spectrum_records.load_spectrum(tiny_pipeline.store, DS, MODEL, SEED)
    ax_ev, ax_d = _panels(fig)
    assert len(ax_ev.containers) == 1                     # one errorbar per model
    data_line = ax_ev.containers[0].lines[0]
    np.testing.assert_array_equal(data_line.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(data_line.get_ydata(), p["eigenvalues"].numpy(), rtol=1e-12)
    assert ax_ev.get_yscale() == "log" and ax_ev.get_ylabel() == r"eigenvalue $\lambda_i$"
    assert _legend(ax_ev) == [f"MLP-1 (tr = {p['trace']:.3g})"]
    ours = _labelled(ax_d)[0]
    np.testing.assert_allclose(ours.get_xdata(), p["grid"])
    np.testing.assert_allclose(ours.get_ydata(), np.maximum(p["density"], 1e-12))
    labels = _legend(ax_d)
    assert labels[0] == "MLP-1" and ax_d.get_yscale() == "log"
    if p.get("pyhessian"):                                # PyHessian's density on the same grid, dotted
        assert len(_labelled(ax_d)) == 2 and labels[1].startswith("MLP-1, PyHessian (L1 diff. ")
        np.testing.assert_allclose(_labelled(ax_d)[1].get_ydata(),
                                   np.maximum(p["pyhessian"]["density"]["density"], 1e-12))
    else:
        assert len(_labelled(ax_d)) == 1
    assert "MNIST" in ax_ev.get_title() and "seed 0" in ax_d.get_title()


def test_surfaces_figure_plots_the_saved_grids(made, tiny_pipeline):
    fig = made[f"surfaces_{DS}_{MODEL}"]
    p = projection_records.load_projection(tiny_pipeline.store, DS, MODEL, SEED)
    panels = _panels(fig)
    assert len(panels) == 6 and len(fig.axes) == 12      # 6 surfaces, each with its colour bar
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    expected = []
    for plane, label, axis in (("hessian", "Hessian plane (top-2 eigenvectors)",
                                (r"$\theta_1$ (along $v_1$)", r"$\theta_2$ (along $v_2$)")),
                               ("filter_normalized", "random plane (filter-normalised)",
                                (r"$\theta_1$ (random direction 1)", r"$\theta_2$ (random direction 2)"))):
        g = p[plane]
        expected += [(g["L_10"], f"$L_{{10}}$\n{label}", axis, r"$\log_{10} L_{10}$ (nats)"),
                     (g["L_199"], f"$L_{{199}}$\n{label}", axis, r"$\log_{10} L_{199}$ (nats)"),
                     ((g["L_11"] - g["L_10"]) ** 2, f"$(L_{{11}} - L_{{10}})^2$\n{label}", axis,
                      r"$\log_{10} (L_{11} - L_{10})^2$ (nats$^2$)")]
    for ax, bar, (z, title, axis, unit) in zip(panels, bars, expected):
        assert ax.get_title() == title
        (cs,) = ax.collections
        logz = np.log10(np.maximum(z, 1e-12))
        assert cs.zmin == pytest.approx(logz.min()) and cs.zmax == pytest.approx(logz.max())
        (marker,) = ax.get_lines()                            # w* at the origin
        assert list(marker.get_xdata()) == [0] and list(marker.get_ydata()) == [0]
        assert (ax.get_xlabel(), ax.get_ylabel()) == axis
        assert bar.get_ylabel() == unit                       # each colour bar names its quantity and unit
    assert fig._suptitle.get_text() == ("MNIST, MLP-1, seed 0, N = 200: training loss (cross-entropy) on two planes "
                                        "through $w^*$ (+)")
    w, h = fig.get_size_inches()                              # full text width, panels about as tall as wide
    assert w == pytest.approx(7.0) and h > 0.6 * w


@pytest.mark.parametrize("k2", [False, True], ids=["delta", "k2_delta"])
def test_delta_main_figure_plots_hessian_and_random_curves(made, tiny_pipeline, k2):
    fig = made["k2_delta_main" if k2 else "delta_main"]
    store = tiny_pipeline.store
    (ax,) = _panels(fig)
    assert _legend(ax) == ["Hessian subspace, D=2", "random subspace, D=2"]
    lines = _labelled(ax)
    assert len(lines) == 2 and len(ax.collections) == 2     # a line and a 2-SE band each
    for line, sub in zip(lines, ("hessian", "random")):
        spec = next(s for s in mc_records.main_curves(mc_records.load_plan(store)) if s.subspace == sub)
        c = _curve(store, spec)
        _check_line(line, c["k"], c["delta"] * (c["k"] ** 2 if k2 else 1))
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_ylabel() == (r"$k^2 \Delta_k$" if k2 else r"$\Delta_k$") and "$\\sigma$=0.3" in ax.get_title()


SWEEPS = {"sigma": ("sigma", [["sigma = 0.1", "sigma = 1.0"], ["sigma = 0.1", "sigma = 1.0"]]),
          "dim": ("D", [["D = 1", "D = 2"]]),
          "distribution": ("distribution", [[f"distribution = {d}" for d in ("gaussian", "ball", "sphere",
                                                                             "curvature")]]),
          "estimator": ("estimator", [[f"estimator = {e}" for e in ("plain", "antithetic", "sobol")]])}


@pytest.mark.parametrize("which", list(SWEEPS))
def test_sweep_figure_plots_one_line_per_swept_curve(made, tiny_pipeline, which):
    store = tiny_pipeline.store
    attr, legends = SWEEPS[which]
    panels = _panels(made[f"sweep_{which}"])
    assert len(panels) == len(legends)
    specs = mc_records.group(mc_records.load_plan(store), which)
    for ax, labels, sub in zip(panels, legends, ("hessian", "random")):
        assert _legend(ax) == labels and sub in ax.get_title().lower() and "MLP-1" in ax.get_title()
        ss = [s for s in specs if s.subspace == sub]
        assert len(_labelled(ax)) == len(ss) == len(labels) and len(ax.collections) == len(ss)
        for line, s in zip(_labelled(ax), ss):
            c = _curve(store, s)
            _check_line(line, c["k"], c["delta"])


def test_estimator_efficiency_figure_bars(made, tiny_pipeline):
    store = tiny_pipeline.store
    (ax,) = _panels(made["estimator_efficiency"])
    plan = mc_records.load_plan(store)
    expected = {}
    for which in ("estimator", "distribution"):
        for s in mc_records.group(plan, which):
            c = _curve(store, s)
            expected[f"{s.distribution}/{s.estimator}"] = np.median(c["stderr"] / c["delta"]) * np.sqrt(
                s.n_samples + 1)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["gaussian/plain", "gaussian/antithetic", "gaussian/sobol", "ball/plain", "sphere/plain",
                      "curvature/plain"]
    widths = [bar.get_width() for bar in ax.patches]
    np.testing.assert_allclose(widths, [expected[lab] for lab in labels], rtol=1e-12)


def test_theory_vs_mc_figure_plots_monte_carlo_q_and_t(made, tiny_pipeline):
    store = tiny_pipeline.store
    fig = made["theory_vs_mc"]
    panels = _panels(fig)
    specs = sorted((s for s in mc_records.group(mc_records.load_plan(store), "sigma") if s.subspace == "hessian"),
                   key=lambda s: s.sigma)
    assert len(panels) == len(specs) == 2
    assert [ax.get_title() for ax in panels] == ["$\\sigma$ = 0.1", "$\\sigma$ = 1"]
    assert panels[0].get_ylabel() == r"$\Delta_k$"
    for ax, s in zip(panels, specs):
        c = _curve(store, s)
        mc, q, t = ax.get_lines()
        _check_line(mc, c["k"], c["delta"])
        _check_line(q, c["k"], c["Q"])
        _check_line(t, c["k"], np.maximum(c["T"], 1e-300))
        assert len(ax.collections) == 1
    (legend,) = fig.legends                                 # no spare panel: one legend below the panels
    assert [t.get_text() for t in legend.get_texts()] == ["Monte Carlo", "$Q_k$ (quadratic)", "$T_k$ (Thm. 1)"]


def test_order_average_figure_plots_k_k1_delta_and_vbar(made, tiny_pipeline):
    store = tiny_pipeline.store
    panels = _panels(made["order_average"])
    assert len(panels) == 2
    for ax, sub in zip(panels, ("hessian", "random")):
        spec = next(s for s in mc_records.main_curves(mc_records.load_plan(store)) if s.subspace == sub)
        c = _curve(store, spec)
        kk = c["k"] * (c["k"] + 1.0)
        fixed, mean, median, vbar = ax.get_lines()
        _check_line(fixed, c["k"], kk * c["delta"])
        _check_line(mean, c["k"], kk * c["order_mean"])
        _check_line(median, c["k"], kk * c["order_median"])
        np.testing.assert_allclose(vbar.get_ydata(), [c["vbar"] * N / (N - 1)] * 2, rtol=1e-12)
        assert _legend(ax) == ["fixed order", "mean of 2 orders", "median of orders", r"$\bar V N/(N-1)$"]
        assert sub in ax.get_title().lower()


def test_vbar_parts_figure_plots_monte_carlo_and_quadratic_parts(made, tiny_pipeline):
    store = tiny_pipeline.store
    panels = _panels(made["vbar_parts"])
    assert len(panels) == 2
    for ax, sub in zip(panels, ("hessian", "random")):
        ss = sorted((s for s in mc_records.group(mc_records.load_plan(store), "sigma") if s.subspace == sub),
                    key=lambda s: s.sigma)
        cs = [_curve(store, s) for s in ss]
        (bars,) = ax.containers
        np.testing.assert_allclose(np.asarray(bars.lines[0].get_xdata(), float), [0.1, 1.0])
        np.testing.assert_allclose(np.asarray(bars.lines[0].get_ydata(), float), [c["vbar"] for c in cs], rtol=1e-12)
        parts = _labelled(ax)                               # the errorbar's own line is not labelled
        assert len(parts) == 4
        for line, key in zip(parts, ("vbar", "V0", "grad_part", "curv_part")):
            np.testing.assert_allclose(line.get_ydata(), [abs(c["vbar_quadratic"][key]) for c in cs], rtol=1e-12)
        assert sorted(_legend(ax)) == sorted([r"$\bar V$ (Monte Carlo)", r"$\bar V$ (quadratic)", "$V_0$",
                                              r"$\sigma^2 V_2$", r"$\sigma^4 V_4$"])


def test_delta_vs_loss_figure_pairs_delta_with_the_prefix_loss(made, tiny_pipeline):
    store = tiny_pipeline.store
    (ax,) = _panels(made["delta_vs_loss"])
    spec = next(s for s in mc_records.main_curves(mc_records.load_plan(store)) if s.subspace == "hessian")
    c = _curve(store, spec)
    L = (np.cumsum(c["losses0"]) / np.arange(1, N + 1))[:-1]
    (line,) = _labelled(ax)
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert len(x) > 50
    for xi, yi in zip(x, y):                               # every plotted point is (L_k, Delta_k) of one k
        k = np.flatnonzero(c["delta"] == yi)
        assert len(k) >= 1 and np.any(L[k] == xi)
    rho = spearmanr(c["delta"], L).statistic
    assert _legend(ax) == [f"MNIST, MLP-1 ($\\rho$ = {rho:.2f})"]
    assert ax.get_xscale() == ax.get_yscale() == "log"


def test_learning_curve_figure_plots_accuracy_and_the_predictions(made, tiny_pipeline):
    store = tiny_pipeline.store
    (ax,) = _panels(made["learning_curve"])
    rows = convergence_records.load_table(store, "learning_curve")
    sizes = [r["n"] for r in rows]
    acc = np.array([100 * r["test_accuracy"] for r in rows])
    mean, *markers = ax.get_lines()
    np.testing.assert_array_equal(mean.get_xdata(), sizes)
    np.testing.assert_allclose(mean.get_ydata(), acc, rtol=1e-12)
    assert _legend(ax) == ["MLP-1 (1 seed)"] and len(ax.collections) == 1
    pred = max((p for p in convergence_records.load_table(store, "predictors") if p["gap"] == 0.01),
               key=lambda p: p["n0"])
    expected = [pred["n_within"]] + [pred[k] for k in ("n_learning_curve", "n_landscape_loss_gap",
                                                        "n_landscape_sigma")
                                     if pred[k] and sizes[0] <= pred[k] <= sizes[-1]]
    assert [float(m.get_xdata()[0]) for m in markers] == pytest.approx(expected)
    for m in markers:
        n = float(m.get_xdata()[0])
        assert float(m.get_ydata()[0]) == pytest.approx(np.interp(np.log(n), np.log(sizes), acc))
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "test accuracy (%)"


def test_k_vs_scale_figure_plots_k_of_the_sweeps(made, tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    panels = _panels(made["k_vs_scale"])
    assert len(panels) == 2
    thresholds = [0.01, 0.001]
    for ax, (specs, attr) in zip(panels, (
            ([s for s in mc_records.group(plan, "sigma") if s.subspace == "hessian"], "sigma"),
            (mc_records.group(plan, "dim"), "D"))):
        specs = sorted(specs, key=lambda s: getattr(s, attr))
        curves = [_curve(store, s) for s in specs]
        lines = ax.get_lines()
        assert len(lines) == 2 * len(thresholds) + 1        # MC and closed form per threshold, and N
        for i, thr in enumerate(thresholds):
            mc, closed = lines[2 * i], lines[2 * i + 1]
            np.testing.assert_allclose(mc.get_xdata(), [getattr(s, attr) for s in specs])
            ks = []
            for c in curves:
                below = c["delta"] < thr
                bad = np.flatnonzero(~below)
                ks.append(np.nan if not below[-1] else (1 if len(bad) == 0 else bad[-1] + 2))
            np.testing.assert_allclose(np.asarray(mc.get_ydata(), float), ks)
            for c, kc in zip(curves, closed.get_ydata()):
                assert c["vbar"] * N / ((N - 1) * kc * (kc + 1)) < thr <= c["vbar"] * N / ((N - 1) * (kc - 1) * kc)
        np.testing.assert_allclose(lines[-1].get_ydata(), [N, N])
        assert _legend(ax) == [r"$\Delta=0.01$", r"$\Delta=0.001$"]


def test_r0_curves_figure_plots_the_mean_and_its_bound(made, tiny_pipeline):
    store = tiny_pipeline.store
    ax, ax2 = _panels(made["r0_curves"])
    (row,) = convergence_records.load_table(store, "r0")
    p = convergence_records.load_r0_curve(store, row["name"])
    raw, smooth, bound = ax.get_lines()
    x = np.asarray(raw.get_xdata(), dtype=float)
    assert x[0] == 1 and x[-1] == 99
    np.testing.assert_allclose(raw.get_ydata(), p["mean"][x.astype(int) - 1], rtol=1e-12)
    w = figures.SMOOTH_WINDOW // 2                            # centred window, shrinking at the ends
    means = np.array([p["mean"][max(0, j - w):j + w + 1].mean() for j in range(99)])
    np.testing.assert_allclose(smooth.get_ydata(), means[x.astype(int) - 1], rtol=1e-9)
    np.testing.assert_allclose(bound.get_ydata(), 2 * row["M_l"] / (x + 1), rtol=1e-9)
    assert _legend(ax) == [f"784-8-10 (slope {row['slope']:.2f})"]
    heights = [b.get_height() for b in ax2.patches]
    assert heights == pytest.approx([row["hessian_bound"], row["max_measured_norm"]])
    assert [t.get_text() for t in ax2.get_xticklabels()] == ["8"] and ax2.get_yscale() == "log"


def test_full_space_ratio_figure_plots_subspace_over_full_space(made, tiny_pipeline):
    """One row per full-space run, the sigma line and the D line; each line is Delta^(D)_k / Delta^(full)_k of the
    saved curves (solid: equal-norm scale, labelled; dashed: per-coordinate scale)."""
    store = tiny_pipeline.store
    pairs = mc_records.load_full_space_plan(store)
    ax_sigma, ax_dim = _panels(made["full_space_ratio"])
    assert "D = 2" in ax_sigma.get_title() and r"$\sigma$ = 0.3" in ax_dim.get_title()
    for ax, line in ((ax_sigma, "sigma"), (ax_dim, "dim")):
        mine = [p for p in pairs if p["line"] == line]
        curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
        assert len(curves) == len(mine) == 4
        for ln, p in zip(curves, mine):
            a, b = (mc_records.load_full_space_curve(store, p[k]) for k in ("subspace", "full"))
            _check_line(ln, a["k"], a["delta"] / b["delta"])
            assert ln.get_linestyle() == ("-" if p["scale"] == "norm" else "--")
        want = [f"$\\sigma$ = {p['sigma']:g}" if line == "sigma" else f"D = {p['D']}" for p in mine
                if p["scale"] == "norm"]
        assert _legend(ax) == want


def test_centred_moving_average_edge_values():
    np.testing.assert_allclose(figures.centred_moving_average([1.0, 2.0, 3.0, 4.0], 3), [1.5, 2.0, 3.0, 3.5])
    np.testing.assert_allclose(figures.centred_moving_average([5.0, -1.0, 2.0], 1), [5.0, -1.0, 2.0])
    np.testing.assert_allclose(figures.centred_moving_average([1.0, 3.0], 9), [2.0, 2.0])      # wider than the data


# ------------------------------------------------------------------------------------------------ tables
def _k(value):
    return fmt(int(round(value))) if value is not None else "--"


def test_sample_size_table_has_one_row_per_saved_row(tiny_pipeline):
    store = tiny_pipeline.store
    saved = convergence_records.load_table(store, "sample_size")
    rows = _rows(tables.sample_size_table(store))
    assert len(rows) == len(saved) == 4
    for cells, r in zip(rows, saved):
        assert len(cells) == len(_header(tables.sample_size_table(store))) == 13
        assert cells[:3] == ["MNIST", "MLP-1", "0"]
        assert cells[3] == "$\\sigma=" + fmt(r["sigma"], 2) + "$" + (" (gap)" if r["scale"] == "loss_gap" else "")
        assert cells[4] == f"${fmt(r['delta'], 2)}$" and cells[4] in ("$0.01$", "$0.001$")
        assert cells[5] == str(r["K_fixed"]) and cells[6] == str(r["K_band"])
        assert cells[7] == _k(r["K_order_median"])
        lo, hi = r["K_order_q05"], r["K_order_q95"]
        assert cells[8] == ("--" if lo is None else f"{_k(lo)}--{_k(hi) if hi is not None else '$>N$'}")
        assert cells[9] == "--" and r["K_order_upper"] is None
        assert cells[10] == str(r["K_closed"])
        acc_k = "--" if r["test_accuracy_K"] is None else pct(r["test_accuracy_K"])
        assert cells[11] == acc_k and cells[12] == f"{100 * r['test_accuracy_N']:.1f}"
    assert [c[11] for c in rows].count("--") == sum(r["test_accuracy_K"] is None for r in saved)
    assert not any("n/a" in c for row in rows for c in row)


def test_solver_table_has_one_row_per_solver_and_pyhessian_pass(tiny_pipeline):
    store = tiny_pipeline.store
    tex = tables.solver_table(store)
    rows = _rows(tex)
    solvers = spectrum_records.load_solvers(store, DS, MODEL, SEED)["rows"]
    p = spectrum_records.load_spectrum(store, DS, MODEL, SEED)
    assert [r["method"] for r in solvers] == ["lanczos (ours)", "power (ours)", "PyHessian 0.1"]
    assert len(rows) == len(solvers) + (4 if p.get("pyhessian") else 0)
    for cells, r in zip(rows, solvers):
        assert cells == ["MNIST", "MLP-1", r["method"], "2", "200", fmt(int(r["hvp_count"])), fmt(r["seconds"], 2),
                         f"${fmt(r['max_residual'], 2)}$"]
    if p.get("pyhessian"):
        extra = rows[len(solvers):]
        assert [c[2] for c in extra] == ["trace (ours)", "trace (PyHessian)", "density (ours)",
                                         "density (PyHessian)"]
        assert extra[0][5] == "4" and extra[2][5] == "8"             # our products: trace_probes, slq_iter
        assert extra[1][5] == fmt(int(p["pyhessian"]["trace"]["products"]))


def test_solver_table_of_a_store_without_comparison_is_empty(tmp_path):
    assert _rows(tables.solver_table(ResultStore("none", root=tmp_path))) == []


def test_theory_table_has_one_row_per_gaussian_plain_curve(tiny_pipeline):
    store = tiny_pipeline.store
    saved = [r for r in convergence_records.load_table(store, "theory")
             if r["distribution"] == "gaussian" and r["estimator"] == "plain"]
    rows = _rows(tables.theory_table(store))
    assert len(rows) == len(saved) == 9            # main x 2, gap, sigma sweep x 4, D sweep x 2
    for cells, r in zip(rows, saved):
        scale = fmt(r["sigma"], 2) + (" (gap)" if r["scale"] == "loss_gap" else "")
        assert cells == ["MNIST", "MLP-1", str(r["seed"]), "H" if r["subspace"] == "hessian" else "R", str(r["D"]),
                         scale, fmt(r["median_mc_over_q"], 2), fmt(r["median_mc_over_q_bulk"], 2),
                         fmt(r["median_mc_over_q_spikes"], 2), f"{100 * r['share_within_3se']:.1f}",
                         fmt(r["vbar_q_over_mc"], 2), fmt(r["median_mc_over_surrogate"], 2),
                         fmt(r["vbar_surrogate_over_mc"], 2), fmt(r["median_mc_over_t"], 2)]
        assert cells[-1] != "n/a" and cells[-3] != "n/a"   # Gaussian: Theorem 1 applies; the surrogate ran


def test_predictor_table_has_one_row_per_gap_of_the_largest_pilot(tiny_pipeline):
    store = tiny_pipeline.store
    saved = [p for p in convergence_records.load_table(store, "predictors") if p["n0"] == 100]
    rows = _rows(tables.predictor_table(store))
    assert len(rows) == len(saved) == 2
    for cells, p in zip(rows, saved):
        lc, ls = p["cost_learning_curve"], p["cost_landscape"]
        # the tiny profile's largest learning-curve size is 200: a measured n there is censored and says so
        measured = r"$\ge$" + _k(p["n_within"]) + " (censored)" if p["n_within"] == 200 else _k(p["n_within"])
        assert cells == ["MNIST", "MLP-1", f"{100 * p['gap']:.1f}", measured, _k(p["n_learning_curve"]),
                         "--", "--", f"{lc['trainings']} / {fmt(int(round(lc['seconds'])))}",
                         f"{ls['trainings']} / {fmt(int(round(ls['seconds'])))}"]
        assert cells[3] == r"$\ge$200 (censored)" and cells[4] != "--"


def test_speed_table_has_one_row_per_saved_speed_row(tiny_pipeline):
    saved = mc_records.load_speed(tiny_pipeline.store)
    rows = _rows(tables.speed_table(tiny_pipeline.store))
    assert len(rows) == len(saved) == 3                         # the main Hessian curve and the sigma sweep x 2
    for cells, r in zip(rows, saved):
        assert cells == ["MNIST", "MLP-1", "2", fmt(r["sigma"], 2), "8", f"{100 * r['relative_se']:.1f}",
                         fmt(int(round(r["T_target"]))), fmt(r["mc_seconds"], 2), fmt(r["mc_seconds_target"], 2),
                         fmt(r["closed_seconds"], 2), fmt(r["jet_seconds"], 2), fmt(r["speedup"], 2),
                         fmt(r["speedup_with_jet"], 2), fmt(r["median_mc_over_q"], 2)]


def test_full_space_and_speed_numbers_equal_what_the_results_hold(inputs, tiny_pipeline):
    store = tiny_pipeline.store
    values = registry.numbers(inputs, timings=TINY_TIMINGS)
    pairs = mc_records.load_full_space_plan(store)

    def ratio(p):
        a, b = (mc_records.load_full_space_curve(store, p[k]) for k in ("subspace", "full"))
        return float(np.median(a["delta"] / b["delta"]))

    (main,) = [p for p in pairs if (p["D"], p["sigma"], p["scale"]) == (2, 0.3, "norm")]
    assert values["FullRuns"] == "MNIST, MLP-1, seed 0" and values["FullT"] == "4"
    assert (values["FullD"], values["FullSigma"]) == ("2", "0.3")
    assert values["FullRatioMain"] == fmt(ratio(main), 2)
    (hi,) = [p for p in pairs if (p["line"], p["sigma"], p["scale"]) == ("sigma", 1.0, "coordinate")]
    assert values["FullRatioCoordSigmaHigh"] == fmt(ratio(hi), 2) and values["FullSigmaHigh"] == "1"
    (lo,) = [p for p in pairs if (p["line"], p["D"], p["scale"]) == ("dim", 1, "norm")]
    assert values["FullRatioDimLow"] == fmt(ratio(lo), 2) and values["FullDimLow"] == "1"
    sub = mc_records.load_full_space_curve(store, main["subspace"])
    thr = 0.01                                                  # the middle of the sorted grid [0.001, 0.01]
    k = first_k_below(sub["k"], sub["delta"], thr)
    assert values["FullKSub"] == (fmt(k) if k else "not reached")
    kp = first_k_below(sub["k"], sub["abs_mean"], np.sqrt(thr))
    assert values["FullKPointwise"] == (fmt(kp) if kp else "not reached")
    if k is not None:                   # Jensen per k: Delta_k < thr for k >= K gives E|d_k| < sqrt(thr) there
        assert kp is not None and kp <= k
    speed = mc_records.load_speed(store)
    assert values["SpeedRatioMnistMlpOne"] == fmt(speed[0]["speedup"], 2)
    assert values["SpeedMcMnistMlpOne"] == fmt(speed[0]["mc_seconds_target"], 2)
    assert values["SpeedAccuracySigmaHigh"] == fmt(speed[-1]["median_mc_over_q"], 2)
    assert values["SpeedSigma"] == "0.3" and values["SpeedRuns"] == "1"


# ------------------------------------------------------------------------------------------------ numbers
def test_numbers_equal_what_the_results_hold(inputs, tiny_pipeline):
    store = tiny_pipeline.store
    values = registry.numbers(inputs, timings=TINY_TIMINGS)
    trained = store.meta("train", RUN)["summary"]
    p = spectrum_records.load_spectrum(store, DS, MODEL, SEED)
    ev = p["eigenvalues"].numpy()
    assert values["Profile"] == "pipeline_test"
    assert (values["NTrain"], values["Epochs"], values["NSeeds"], values["KTop"]) == ("200", "1", "1", "4")
    assert values["AccMnistMlpOne"] == f"{100 * trained['test_accuracy']:.1f}" and values["AccSdMnistMlpOne"] == "0.0"
    assert values["TrainLossMnistMlpOne"] == fmt(trained["train_loss"])
    assert values["LambdaOneMnistMlpOne"] == fmt(ev[0]) and values["LambdaLastMnistMlpOne"] == fmt(ev[3])
    assert values["LambdaMinMnistMlpOne"] == fmt(p["smallest"]) and values["TraceMnistMlpOne"] == fmt(p["trace"])
    assert values["ParamsMlpOne"] == "203{,}530" and values["ParamsMlpTwo"] == "269{,}322"
    cpu = store.meta("train", RUN)["provenance"]["cpu"]["model"]
    assert cpu and values["CpuModel"] == cpu.replace("_", r"\_")
    assert (values["McD"], values["McSigma"], values["McT"], values["McOrders"]) == ("2", "0.3", "8", "2")
    plan = mc_records.load_plan(store)
    for sub, tag in (("hessian", "Hess"), ("random", "Rand")):
        c = mc_records.load_curve(store, next(s for s in mc_records.main_curves(plan) if s.subspace == sub))
        assert values[f"SlopeMnistMlpOne{tag}"] == fmt(fit_slope(c["k"], c["delta"], k_min=10).slope)
        assert values[f"VbarMnistMlpOne{tag}"] == fmt(c["vbar"])
        assert values[f"KTwoMnistMlpOne{tag}"] == fmt(np.median((c["k"] ** 2 * c["delta"])[c["k"] >= 10]))
        L = (np.cumsum(c["losses0"]) / np.arange(1, N + 1))[:-1]
        assert values[f"RhoMnistMlpOne{tag}"] == fmt(spearmanr(c["delta"], L).statistic, 2)
    sample = next(r for r in convergence_records.load_table(store, "sample_size")
                  if r["scale"] == "sigma" and r["delta"] == 0.01)
    assert values["DeltaTable"] == "0.01"              # the middle of the sorted grid [0.001, 0.01]
    assert values["KMcMnistMlpOne"] == str(sample["K_fixed"])
    c = mc_records.load_curve(store, next(s for s in mc_records.main_curves(plan) if s.subspace == "hessian"))
    k = np.arange(1, 100 * N)
    assert values["KClosedMnistMlpOne"] == fmt(int(k[np.argmax(c["vbar"] * N / ((N - 1) * k * (k + 1)) < 0.01)]))
    assert values["AccKMnistMlpOne"] == pct(sample["test_accuracy_K"])
    assert (values["TheorySigmaLow"], values["TheorySigmaHigh"]) == ("0.1", "1")
    (r0,) = convergence_records.load_table(store, "r0")
    assert values["RZeroSlopeMin"] == values["RZeroSlopeMax"] == fmt(r0["slope"])
    assert values["BoundOverMeasuredMin"] == fmt(r0["hessian_bound"] / r0["max_measured_norm"])
    assert (values["TimeTrain"], values["TimeMonteCarlo"], values["TimeTotal"]) == ("1", "1.5", "2.5")
    for other in ("AccMnistMlpTwo", "KMcFashionCnn", "SlopeFashionMlpOneHess", "LambdaOneMnistCnn"):
        assert values.get(other, "n/a") == "n/a"          # runs the profile does not have: no number
    assert all(name.isalpha() for name in values) and all(isinstance(v, str) for v in values.values())


def test_write_numbers_one_sorted_newcommand_per_value_and_placeholders(tmp_path):
    values = {"Beta": "2", "Alpha": "1{,}000", "Epsilon": r"\ensuremath{x}"}
    missing = latex.write_numbers(values, tmp_path / "n.tex")
    assert missing == [m for m in latex.placeholders(values) if m != "PlaceholderNote"] and "Alpha" not in missing
    assert missing, "the paper uses numbers these three values do not give"
    # the setup sentence explaining "n/a" is there exactly when placeholders are
    full = {**values, **{m: "n/a" for m in missing}, "PlaceholderNote": "; entries ``n/a'' are not run in it"}
    assert (tmp_path / "n.tex").read_text().splitlines()[1:] == [f"\\newcommand{{\\{k}}}{{{v}}}"
                                                                for k, v in sorted(full.items())]
    assert json.loads((tmp_path / "n.json").read_text()) == full
    assert (tmp_path / "placeholders.txt").read_text().split() == missing
    with pytest.raises(ValueError, match=f"{len(missing)} number\\(s\\) the paper or slides use have no result"):
        latex.write_numbers(values, tmp_path / "m.tex", allow_placeholders=False)
    assert not (tmp_path / "m.tex").exists()
    complete = {m: "1" for m in latex.required_macros()}
    assert latex.write_numbers(complete, tmp_path / "c.tex", allow_placeholders=False) == []
    assert json.loads((tmp_path / "c.json").read_text())["PlaceholderNote"] == ""


def test_placeholders_are_the_macros_a_source_uses_without_a_value(tmp_path):
    tex = tmp_path / "main.tex"
    tex.write_text("\\newcommand{\\Local}{x}\nAcc \\AccMnistMlpTwo{} and \\KTop, $\\Delta$, \\Local, \\textbf{y}, "
                   "\\NTrain\n")
    assert latex.placeholders({"KTop": "4", "NTrain": "n/a"}, [tex]) == ["AccMnistMlpTwo", "NTrain"]
    assert latex.placeholders({"KTop": "4", "NTrain": "200", "AccMnistMlpTwo": "97.0"}, [tex]) == []


# ------------------------------------------------------------------------------------------------ fmt, pct, macro
@pytest.mark.parametrize("x, expected", [
    (0.123456, "0.123"), (-1.98, "-1.98"), (19.2345, "19.2"),
    (1245.68, "1{,}246"),                     # not 1245.68: three significant digits, whole number
    (27286.4, "27{,}286"), (99999.4, "99{,}999"),
    (123456.0, r"\ensuremath{1.23\times 10^{5}}"), (1e5, r"\ensuremath{1.00\times 10^{5}}"),
    (0.000298, r"\ensuremath{2.98\times 10^{-4}}"), (-0.000298, r"\ensuremath{-2.98\times 10^{-4}}"),
    (0.001, "0.001"), (0.0009999, r"\ensuremath{1.00\times 10^{-3}}"), (0.0, "0"), (1.0, "1"),
    (10000, "10{,}000"), (-1234567, "-1{,}234{,}567"), (np.int64(7), "7"),     # integers exactly
    (np.float32(0.5), "0.5"), (None, "n/a"), (float("nan"), "n/a"), (float("inf"), "n/a"), (-np.inf, "n/a"),
])
def test_fmt_edge_values(x, expected):
    assert fmt(x) == expected


def test_fmt_digits_and_pct():
    assert fmt(0.123456, 2) == "0.12" and fmt(1.5, 2) == "1.5" and fmt(3e-5, 2) == r"\ensuremath{3.0\times 10^{-5}}"
    assert pct(0.9651) == "96.5" and pct(1) == "100.0" and pct(0) == "0.0" and pct(None) == "n/a"
    assert pct(0.00049) == "0.0" and pct(np.float64(0.25)) == "25.0"


def test_macro_names_are_letters_only():
    assert macro("acc", "mnist", "mlp2") == "AccMnistMlpTwo"
    assert macro("K", "mc", "fashion_mnist", "cnn") == "KMcFashionCnn"
    assert macro("time", "04_monte_carlo") == "TimeZeroFourMonteCarlo"
    assert macro("k2", "mnist", "mlp1", "hessian") == "KTwoMnistMlpOneHess"
    assert macro("r0", "slope", "min") == "RZeroSlopeMin"
    assert macro("a-b_c d") == "ABCD" and macro() == "" and macro("", "x") == "X"


def test_prune_figures_removes_only_files_not_made(tmp_path):
    for name in ("spectrum.pdf", "spectrum.png", "surfaces_old.pdf", "surfaces_old.png", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert latex.prune_figures({"spectrum": None}, tmp_path) == ["surfaces_old.pdf", "surfaces_old.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "spectrum.pdf", "spectrum.png"]


# ------------------------------------------------------------------------------------------------ missing
P = "pipeline_test"      # the tiny pipeline's profile


@pytest.fixture
def outputs_copy(tiny_pipeline, tmp_path, monkeypatch):
    """A copy of what notebook 06 wrote, under latex.FIGURES / GENERATED (patched roots) / profile."""
    figs, gen = tmp_path / "figures" / P, tmp_path / "generated" / P
    shutil.copytree(tiny_pipeline.figures_dir, figs)
    shutil.copytree(tiny_pipeline.generated_dir, gen)
    monkeypatch.setattr(latex, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(latex, "GENERATED", tmp_path / "generated")
    return figs, gen


def test_missing_lists_exactly_the_removed_outputs(outputs_copy, capsys):
    figs, gen = outputs_copy
    assert registry.missing(P) == []
    assert registry.main(["--check", "--profile", P]) == 0
    assert f"all {len(registry.TABLES)} tables, numbers.tex and the recorded figures of profile {P} are present" \
        in capsys.readouterr().out
    assert len(registry.missing("other")) == len(registry.TABLES) + 2      # another profile: nothing there yet
    for path in (gen / "solvers.tex", gen / "numbers.tex", figs / "r0_curves.png", figs / "spectrum.pdf"):
        path.unlink()
    assert registry.missing(P) == [f"paper/generated/{P}/solvers.tex", f"paper/generated/{P}/numbers.tex",
                                   f"paper/figures/{P}/r0_curves.png", f"paper/figures/{P}/spectrum.pdf"]   # sorted
    assert registry.main(["--profile", P]) == 1
    err = capsys.readouterr().err
    assert f"missing output: paper/figures/{P}/r0_curves.png" in err and f"make reproduce PROFILE={P}" in err
    assert registry.missing(P, ["r0_curves", "never_made"]) == [
        f"paper/generated/{P}/solvers.tex", f"paper/generated/{P}/numbers.tex", f"paper/figures/{P}/r0_curves.png",
        f"paper/figures/{P}/never_made.pdf", f"paper/figures/{P}/never_made.png"]


def test_missing_without_source_json_checks_tables_only(outputs_copy):
    figs, gen = outputs_copy
    (gen / "source.json").unlink()
    (figs / "delta_main.pdf").unlink()
    assert registry.missing(P) == [f"paper/generated/{P}/source.json"]


def test_profile_folders_are_plain_names_under_the_roots(tmp_path, monkeypatch):
    monkeypatch.setattr(latex, "FIGURES", tmp_path / "f")
    monkeypatch.setattr(latex, "GENERATED", tmp_path / "g")
    assert latex.figures_dir("smoke") == tmp_path / "f" / "smoke"
    assert latex.generated_dir("paper") == tmp_path / "g" / "paper"
    for bad in ("", "../paper", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="not a plain folder name"):
            latex.figures_dir(bad)


def _bench_row(measure, value, target, kind):
    ok = None if kind is None else (value <= target if kind == "max" else value >= target)
    return {"measure": measure, "value": value, "target": target, "kind": kind, "ok": ok}


def test_bench_table_and_numbers_without_a_bench_run(tmp_path):
    store = ResultStore("x", root=tmp_path / "results" / "x")
    assert "has not been run" in tables.bench_table(store)
    values = paper_numbers.bench_numbers(store)
    assert values["BenchStatus"].startswith("have not been measured") and values["BenchMissed"] == ""
    # from the layer shapes alone: mlp2 (2 * 200,704 + 6 * 68,096) / 268,800, cnn (2 * 28,224 + 6 * 60,368) / 88,592
    assert values["HvpMultiplyAddsKeptMlpTwo"] == "3.01" and values["HvpMultiplyAddsKeptCnn"] == "4.73"
    assert values["HvpMultiplyAddsRecomputeCnn"] == fmt((4 * 28_224 + 9 * 60_368) / 88_592)


def test_bench_table_and_numbers_read_the_last_complete_bench_run(tmp_path):
    store = ResultStore("x", root=tmp_path / "results" / "x")
    rows = [_bench_row("one HVP / one forward, cnn (N=10000)", 6.27, 3.0, "max"),
            _bench_row("delta_curve s per theta / forward, mlp2 (T=64, D=10)", 0.477, 1.0, "max"),
            _bench_row("PyHessian / ours wall time", 13.7, 10.0, "min"),
            _bench_row("trainer / textbook loop, cnn", 2.58, None, None)]
    bench = ResultStore("bench", root=tmp_path / "results" / "bench")
    payload = {"summary": rows, "load_average": [[0.9, 1, 1], [1.25, 1, 1]], "minutes": 9.04}
    bench.save("bench", "quick", {**payload, "summary": rows[:1]}, {"n": 1000, "threads": 2}, overwrite=True)
    assert "has not been run" in tables.bench_table(store)                # a quick run is not the table
    bench.save("bench", "full", payload, {"n": 10_000, "threads": 2, "mlp2": "results/paper/train/mnist_mlp2_s0"},
               overwrite=True)
    table = tables.bench_table(store)
    body = [line for line in table.splitlines() if line.endswith(r"\\") and "measure &" not in line]
    assert len(body) == 4
    assert r"delta\_curve s per theta" in table and r"\textbf{no}" in table and r"$\le$ 3" in table
    assert r"$\ge$ 10" in table and body[-1].split("&")[2].strip() == "--"
    values = paper_numbers.bench_numbers(store)
    assert values["BenchStatus"].endswith(
        r"10{,}000 MNIST images, MLP-2 from results/paper/train/mnist\_mlp2\_s0, "
        "2 threads, load average 0.9 to 1.2, 9.0 minutes): 2 of its 3 targets are met")
    assert "(CPU: " in values["BenchStatus"]
    assert values["BenchMissed"] == r"; missed: one HVP / one forward, cnn (N=10000), 6.27 against $\le$ 3"
