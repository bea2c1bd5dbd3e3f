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

# %%
import matplotlib.pyplot as plt

from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.records.monte_carlo import load_plan
from lib.stages import convergence
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
# ## Previews

# %%
plan = load_plan(store)
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
