"""The paper's figures (``lib.outputs.figures``) on the tiny pipeline's saved results (``conftest.tiny_pipeline``):
every figure function is registered and makes its files, and what each figure plots against the saved curves."""
import inspect

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy.stats import spearmanr

from lib.outputs import figures, registry
from lib.records import convergence as convergence_records
from lib.records import monte_carlo as mc_records
from lib.records import projection as projection_records
from lib.records import spectrum as spectrum_records
from tests.stages.conftest import DS, MODEL, SEED, N

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

FIGURE_FUNCTIONS = ["spectrum", "surfaces", "delta_main", "sweep", "estimator_efficiency", "theory_vs_mc",
                    "order_average", "vbar_parts", "delta_vs_loss", "learning_curve", "k_vs_scale", "r0_curves",
                    "full_space_ratio", "your_model"]          # your_model: tests/stages/test_your_model.py
REGISTERED = ["spectrum", "surfaces", "delta_main", "k2_delta_main", "sweep_sigma", "sweep_dim", "sweep_distribution",
              "sweep_estimator", "estimator_efficiency", "theory_vs_mc", "order_average", "vbar_parts",
              "delta_vs_loss", "learning_curve", "k_vs_scale", "r0_curves", "full_space_ratio", "your_model",
              "prediction_scatter", "prediction_task"]


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


# ------------------------------------------------------------------------------------------------ registered
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
