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
# L_k(w*), log-log slopes and k^2 Delta_k, the sample-size table K(Delta) with its validation (the recipe trained
# on the first K samples vs on all N), a learning curve, and the R = 0 curves of Kiselev & Grabovoy with their
# Hessian-norm bound for bias-free ReLU MLPs (SCIENCE.md sections 4b-7). Tables go to
# `results/<profile>/analysis/`.

# %% tags=["parameters"]
profile = "smoke"
device = "cpu"
datasets = ["mnist"]
models = ["mlp2"]
seeds = [0]
n_train = 1000
data_seed = 0
progress = True
delta_grid = [0.01, 0.001, 0.0001]
pilot_k0 = 100
learning_sizes = [100, 300, 1000]
learning_models = ["mlp2"]
r0_dataset = "mnist"
r0_n_train = 500
r0_architectures = [[32], [32, 32]]
r0_orders = 4
r0_hessian_samples = 2
r0_epochs = 1

# %%
import matplotlib.pyplot as plt

from lib.stages import analysis

from lib.core import convergence as cv

from lib.outputs import figures
from lib.infra.config import check_parameters
from lib.stages.experiments import group, load_curve, load_plan
from lib.stages.pipeline import format_table
from lib.infra.results import ResultStore

params = check_parameters("convergence", globals())
store = ResultStore(profile)
plan = load_plan(store)

# %% [markdown]
# ## Slopes and k^2 Delta_k of the main curves

# %%
slopes = []
for s in group(plan, "main"):
    c = load_curve(store, s)
    fit = cv.fit_slope(c["k"], c["delta"], k_min=10)
    k2 = cv.k2_summary(c["k"], c["delta"], c["stderr"], k_min=10)
    slopes.append({"dataset": s.dataset, "model": s.model, "subspace": s.subspace, "D": s.D, "sigma": s.sigma,
                   "slope": fit.slope, "slope_se": fit.slope_stderr, "k2_median": k2["median"],
                   "k2_q25": k2["q25"], "k2_q75": k2["q75"], "vbar": c["vbar"], "vbar_se": c["vbar_stderr"]})
analysis.save_analysis(store, "slopes", slopes, params)
print(format_table(slopes, ["dataset", "model", "subspace", "slope", "slope_se", "k2_median", "k2_q25", "k2_q75",
                            "vbar", "vbar_se"]))

# %% [markdown]
# ## Theory vs Monte Carlo: where the quadratic prediction holds and where it breaks

# %%
theory = analysis.theory_table(store, plan)
analysis.save_analysis(store, "theory", theory, params)
print(format_table(theory, ["dataset", "model", "subspace", "D", "distribution", "sigma", "estimator",
                            "median_mc_over_q", "share_within_3se", "median_mc_over_t"]))

# %% [markdown]
# ## Delta_k vs L_k(w*)

# %%
corr = analysis.loss_correlation(store, plan)
analysis.save_analysis(store, "loss_correlation", corr, params)
print(format_table(corr, ["dataset", "model", "subspace", "rho", "p_value", "n"]))

# %% [markdown]
# ## Sufficient sample size, validated by training on the first K samples

# %%
table = analysis.sample_size_rows(store, plan, delta_grid, pilot_k0, device=device, progress=progress)
analysis.save_analysis(store, "sample_size", table, params)
print(format_table(table, ["dataset", "model", "delta", "K_mc", "K_conservative", "K_q", "K_closed", "K_pilot_fit",
                           "K_pilot_vbar", "test_accuracy_K", "test_accuracy_N", "wall_seconds"]))

# %% [markdown]
# ## Learning curve

# %%
learning = analysis.learning_curve(store, datasets, learning_models, seeds[0], learning_sizes, device=device,
                                   progress=progress)
analysis.save_analysis(store, "learning_curve", learning, params)
print(format_table(learning, ["dataset", "model", "n", "test_accuracy", "train_loss"]))

# %% [markdown]
# ## R = 0 curves and the Hessian-norm bound (bias-free ReLU MLPs)

# %%
recipe = analysis.recipe_of(store, datasets[0], models[0], seeds[0])   # batch size and lr of section 1
r0 = analysis.r0_sweep(store, r0_dataset, r0_n_train, data_seed, r0_architectures, n_orders=r0_orders,
                       n_hessian=r0_hessian_samples, epochs=r0_epochs, batch_size=recipe["batch_size"],
                       lr=recipe["lr"], seed=seeds[0], progress=progress)
analysis.save_analysis(store, "r0", r0, params)
print(format_table(r0, ["name", "n_params", "n_layers", "M_W", "M_x", "hessian_bound", "max_measured_norm", "slope"]))

# %% [markdown]
# ## Previews

# %%
for fig in (figures.order_average(store, plan), figures.vbar_parts(store, plan), figures.theory_vs_mc(store, plan),
            figures.delta_vs_loss(store, plan), figures.learning_curve(store), figures.r0_curves(store)):
    plt.show()
