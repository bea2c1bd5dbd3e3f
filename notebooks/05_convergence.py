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
# Hessian-norm bound for bias-free ReLU MLPs. Tables go to
# `results/<profile>/analysis/`.

# %% tags=["parameters"]
# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the profile's values.
profile = 'smoke'
device = 'cpu'
datasets = ['mnist']
models = ['mlp2']
seeds = [0]
progress = False
data_seed = 0
delta_grid = [0.01, 0.001, 0.0001]
pilot_k0 = 100
learning_sizes = [100, 300, 1000]
learning_models = ['mlp2']
r0_dataset = 'mnist'
r0_n_train = 500
r0_architectures = [[32], [32, 32]]
r0_orders = 4
r0_hessian_samples = 2
r0_epochs = 1

# %%
import matplotlib.pyplot as plt

from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.stages import convergence, monte_carlo
from lib.stages.base import format_table

common, section = from_namespace("convergence", globals())
store = ResultStore(common.profile)

# %%
tables = convergence.run(store, common, section)

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
# ## Sufficient sample size, validated by training on the first K samples

# %%
print(format_table(tables["sample_size"], ["dataset", "model", "delta", "K_mc", "K_conservative", "K_q", "K_closed",
                                           "K_pilot_fit", "K_pilot_vbar", "test_accuracy_K", "test_accuracy_N",
                                           "wall_seconds"]))

# %% [markdown]
# ## Learning curve

# %%
print(format_table(tables["learning_curve"], ["dataset", "model", "n", "test_accuracy", "train_loss"]))

# %% [markdown]
# ## R = 0 curves and the Hessian-norm bound (bias-free ReLU MLPs)

# %%
print(format_table(tables["r0"], ["name", "n_params", "n_layers", "M_W", "M_x", "hessian_bound",
                                  "max_measured_norm", "slope"]))

# %% [markdown]
# ## Previews

# %%
plan = monte_carlo.load_plan(store)
for make in (figures.order_average, figures.vbar_parts, figures.theory_vs_mc, figures.delta_vs_loss):
    make(store, plan)
    plt.show()
for make in (figures.learning_curve, figures.r0_curves):
    make(store)
    plt.show()
