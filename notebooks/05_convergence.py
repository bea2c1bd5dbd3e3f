# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (landscape-hessian)
#     language: python
#     name: landscape-hessian
# ---

# %% [markdown]
# # 05 - Convergence analysis and the sufficient sample size
#
# From the curves of 04: where the quadratic prediction holds (theory vs Monte Carlo across sigma), Delta_k vs
# L_k(w*), log-log slopes and k^2 Delta_k; the sufficient sample size K(Delta) with its uncertainty (random
# insertion orders x training seeds, a simultaneous band over k), real pilots trained on the first n0 samples
# only, a learning curve with every seed up to the largest size, the power-law learning-curve competitor, the
# calibration threshold Delta* and the machine-readable headline `results/<profile>/summary.json`; the R = 0
# curves of Kiselev & Grabovoy with their Hessian-norm bound for bias-free ReLU MLPs. Tables go to
# `results/<profile>/analysis/`.

# %% tags=["parameters"]
# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the profile's values.
profile = 'smoke'
device = 'cpu'
datasets = ['mnist']
models = ['mlp2']
seeds = [0, 1]
progress = False
n_train = 1000
data_seed = 0
spectrum_max_seeds = {}
workers = 1
delta_grid = [0.01, 0.001, 0.0001]
pilot_sizes = [200, 400]
pilot_samples = 32
learning_sizes = [100, 200, 400, 1000, 2000]
learning_models = ['mlp2']
accuracy_gaps = [0.01, 0.005]
r0_dataset = 'mnist'
r0_n_train = 500
r0_architectures = [[32], [32, 32]]
r0_orders = 4
r0_hessian_samples = 2
r0_epochs = 1
cnn_bound_samples = 4
seed_study_seeds = 4
seed_study_dataset = 'mnist'
seed_study_model = 'mlp1'
seed_study_n = 300
seed_study_thetas = 32
seed_study_orders = 20
seed_study_gap_repeats = 5
seed_study_k_ref = 0.125
seed_study_level = 0.9

# %%
import matplotlib.pyplot as plt
import numpy as np

from lib.core import hessian
from lib.core.landscape.sampling import make_sampler
from lib.core.landscape.subspace import per_sample_losses
from lib.core.sample_size import decay as cv
from lib.core.sample_size import sufficient as ss
from lib.core.tensors import torch_threads
from lib.core.training.models import build as build_model
from lib.core.training.recipe import train
from lib.infra import data
from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.records.monte_carlo import load_curve, load_plan, main_curves
from lib.records.train import recipe_of
from lib.stages import convergence
from lib.stages.base import format_table

common, section = from_namespace("convergence", globals())
store = ResultStore(common.profile)

# %% [markdown]
# ## One run worked through
# The main Hessian-subspace curve of the first seed of the first model on the first dataset (notebook 04's, read
# back with `load_curve`), with `lib.core.sample_size.decay` and `lib.core.sample_size.sufficient`. **K on that curve**:
# `K(Delta) = min{k : Delta_k' < Delta for every k' >= k}` on the given insertion order; on the upper edge of the
# simultaneous band (a conservative K); over the `R` random insertion orders (median, 5-95 %, conformal 95 % upper
# bound); and the closed form of the order-averaged curve `V-bar N / ((N-1) k (k+1)) < Delta`.

# %%
ds, m, seed = common.datasets[0], common.models[0], common.seeds[0]
plan = load_plan(store)
spec = next(s for s in main_curves(plan) if (s.dataset, s.model, s.seed, s.subspace) == (ds, m, seed, "hessian"))
c = load_curve(store, spec)
k, delta, N = np.asarray(c["k"]), np.asarray(c["delta"]), int(c["N"])
print(f"{spec.name}: N = {N}, D = {spec.D}, sigma = {spec.sigma:g}, T = {spec.n_samples}, R = {spec.n_orders}, "
      f"V-bar = {float(c['vbar']):.5f}")
per_order = ss.k_per_order(k, np.asarray(c["order_suffix_max"], dtype=np.float64), section.delta_grid)  # (R, G)
rows_k = []
for g, thr in enumerate(section.delta_grid):
    orders = ss.order_summary(per_order[:, g])
    rows_k.append({"delta": thr, "K": cv.first_k_below(k, delta, thr),
                   "K_band": cv.first_k_below(k, delta + c["band_multiplier"] * np.asarray(c["band_se"]), thr),
                   "K_order_median": orders.median, "K_order_q05": orders.q05, "K_order_q95": orders.q95,
                   "K_order_upper": orders.upper, "K_closed": cv.k_closed_form(float(c["vbar"]), N, thr)})
print(format_table(rows_k, ["delta", "K", "K_band", "K_order_median", "K_order_q05", "K_order_q95", "K_order_upper",
                            "K_closed"]))
print("(None: not reached within the N samples; K_closed > N - 1 says the same for the order average)")

# %% [markdown]
# **One order against the order average.** The given insertion order's curve is one draw; averaged over random
# orders, `Delta_k` has the closed form `V-bar N / ((N-1) k (k+1))` (specification 4.2). The mean of the `R` order
# curves, the closed form and the given order, with the thresholds and the given order's K.

# %%
formula = np.asarray(c["order_formula"])
ratio = delta / formula
print(f"given order / closed form: median {np.median(ratio):.3f}, 5-95 % {np.quantile(ratio, 0.05):.3f}-"
      f"{np.quantile(ratio, 0.95):.3f}; mean of the {spec.n_orders} orders / closed form: median "
      f"{np.median(np.asarray(c['order_mean']) / formula):.3f}")
fig, ax = plt.subplots(figsize=(4.5, 2.8))
ax.loglog(k, delta, lw=0.9, label="given order")
ax.loglog(k, c["order_mean"], lw=0.9, label=f"mean over {spec.n_orders} random orders")
ax.loglog(k, formula, "k--", lw=0.8, label="V-bar N / ((N-1) k (k+1))")
for row in rows_k:
    ax.axhline(row["delta"], color="0.6", lw=0.6, ls=":")
    if row["K"] is not None:
        ax.plot([row["K"]], [row["delta"]], "o", color="C3", mfc="none")
ax.set_xlabel("k")
ax.set_ylabel("Delta_k")
ax.set_title(f"{ds} {m} seed {seed}: one order and the order average (o: K)", fontsize=9)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# **The pilot.** Only the first `n0 = pilot_sizes[0]` samples: train the recipe there, take the top-D Hessian
# subspace of the pilot's own loss, estimate V-bar over the n0 samples from `pilot_samples` thetas at the curve's
# sigma, and predict K from the closed form with the full N. Beside it, the curve's own first n0 points
# extrapolated by a power law (`pilot_prediction`).

# %%
n0 = section.pilot_sizes[0]
run, recipe = recipe_of(store, ds, m, seed)
xp, yp = data.training_subset(ds, n0, run["data_seed"])               # the first n0 of the insertion order
pilot = build_model(m, seed)
with torch_threads(recipe.threads):
    train(pilot, xp, yp, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed, progress=False)
    top = hessian.top_eigenpairs(hessian.HessianOperator(pilot, xp, yp), spec.D, tol=1e-3, seed=seed)
    z = make_sampler("gaussian", sigma=1.0).sample(section.pilot_samples, spec.D, seed=seed)
    losses = per_sample_losses(pilot, xp, yp, top.eigenvectors, spec.sigma * z).double()   # (thetas, n0)
vbar_pilot = float(losses.var(dim=1, unbiased=False).mean())
print(f"pilot on n0 = {n0}: lambda_1 = {float(top.eigenvalues[0]):.3f}, V-bar = {vbar_pilot:.5f} "
      f"(the full curve's: {float(c['vbar']):.5f})")
print(format_table([{"delta": thr, "K": row["K"], "K_closed": row["K_closed"],
                     "K_pilot": cv.k_closed_form(vbar_pilot, N, thr),
                     "K_extrapolated": round(cv.pilot_prediction(k, delta, n0, thr).K)}
                    for thr, row in zip(section.delta_grid, rows_k)],
                   ["delta", "K", "K_closed", "K_pilot", "K_extrapolated"]))

# %% [markdown]
# ## Every table of the stage

# %%
tables = convergence.run(store, common, section)

# %% [markdown]
# The worked pilot is the sweep's pilot of the same run and n0 (the same V-bar, bit for bit).

# %% tags=["nbval-check-output"]
same = [p for p in tables["pilots"] if (p["dataset"], p["model"], p["seed"], p["n0"]) == (ds, m, seed, n0)]
print(f"pilot V-bar worked {vbar_pilot:.6e}, saved {same[0]['vbar_sigma']:.6e}; equal: "
      f"{vbar_pilot == same[0]['vbar_sigma']}")

# %% [markdown]
# ## Slopes and k^2 Delta_k of the main curves

# %%
print(format_table(tables["slopes"], ["dataset", "model", "subspace", "slope", "slope_se", "k2_median", "k2_q25",
                                      "k2_q75", "vbar", "vbar_se"]))

# %% [markdown]
# ## Theory vs Monte Carlo: where the quadratic prediction holds and where it breaks

# %%
print(format_table(tables["theory"], ["dataset", "model", "subspace", "D", "distribution", "sigma", "estimator",
                                      "median_mc_over_q", "share_within_3se", "median_mc_over_t"]))

# %% [markdown]
# ## Delta_k vs L_k(w*)

# %%
print(format_table(tables["loss_correlation"], ["dataset", "model", "subspace", "rho", "p_value", "n"]))

# %% [markdown]
# ## Learning curve (every seed, up to the largest size)

# %%
print(format_table(tables["learning_curve"], ["dataset", "model", "seed", "n", "test_accuracy", "test_loss"]))

# %% [markdown]
# ## Sufficient sample size: the given order, the simultaneous band, and the spread over random orders

# %%
print(format_table(tables["sample_size"], ["dataset", "model", "seed", "scale", "sigma", "delta", "K_fixed",
                                           "K_band", "K_order_median", "K_order_q05", "K_order_q95",
                                           "K_order_upper", "K_closed", "test_accuracy_K", "test_accuracy_N"]))

# %% [markdown]
# ## Real pilots (first n0 samples only) and the calibration threshold Delta*

# %%
print(format_table(tables["pilots"], ["dataset", "model", "seed", "n0", "vbar_sigma", "sigma_gap", "vbar_gap",
                                      "gap", "test_accuracy"]))
print(format_table(tables["calibration"], ["dataset", "model", "seed", "scale", "gap", "n_within", "delta_star"]))

# %% [markdown]
# ## Predicting where the learning curve reaches its plateau: power law vs landscape pilot

# %%
print(format_table(tables["predictors"], ["dataset", "model", "gap", "n0", "n_within", "n_learning_curve",
                                          "n_landscape_sigma", "n_landscape_loss_gap"]))
print(format_table(tables["summary"], ["dataset", "model", "scale", "delta", "K_median", "K_q05", "K_q95",
                                       "K_pilot", "n_learning_curve", "n_within_1pt", "delta_star"]))

# %% [markdown]
# ## R = 0 curves and the Hessian-norm bound (bias-free ReLU MLPs)

# %%
print(format_table(tables["r0"], ["name", "n_params", "n_layers", "M_W", "M_x", "hessian_bound",
                                  "max_measured_norm", "slope"]))

# %% [markdown]
# ## Seeds, orders and Monte Carlo: what each interval covers
# Many seeds of one small configuration (`seed_study_*` parameters), each with two independent theta sets and the
# same insertion orders: the variance of log K split into seed, order and Monte Carlo, a prediction interval for
# K of a new seed with its leave-one-seed-out coverage (next to one seed's order range), and the loss-gap sigma's
# standard error over repeated searches with the change in K it implies.

# %%
study = tables["seed_study"]
print(format_table([r for r in study if r["scale"] != "gap_sigma"],
                   ["scale", "threshold", "K_median", "share_seed", "share_order", "share_monte_carlo",
                    "interval_low", "interval_high", "loso_new_seed", "loso_order_range", "censored"]))
print(format_table([r for r in study if r["scale"] == "gap_sigma"],
                   ["gap_thetas", "repeats", "rel_se_median", "rel_se_max", "pipeline_vs_reference_max",
                    "k_change_at_1se_median", "sigma_gap_between_seeds_cv"]))

# %% [markdown]
# ## Previews

# %%
for make in (figures.order_average, figures.vbar_parts, figures.theory_vs_mc, figures.delta_vs_loss):
    make(store, plan)
    plt.show()
for make in (figures.learning_curve, figures.r0_curves):
    make(store)
    plt.show()


# %% [markdown]
# ## Key numbers
# From the saved results, fixed format. `make nbval` (a step of `make test`) re-executes this notebook and compares
# this cell's output with the saved one (tag `nbval-check-output`): a changed number fails.

# %% tags=["nbval-check-output"]
from lib.outputs import key_numbers

print(key_numbers.text("convergence", store, common))
