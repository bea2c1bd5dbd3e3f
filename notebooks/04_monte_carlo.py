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
# # 04 - Monte-Carlo Delta_k for every k, with the quadratic prediction
#
# `Delta_k = E_theta[(L_{k+1} - L_k)^2(w* + P^T theta)]` for k = 1..N-1 from one forward pass per theta
# (common random numbers, fixed insertion order), with standard errors, the centred curve, the theta = 0 term,
# `R = n_orders` random insertion orders and the Monte-Carlo V-bar. Next to each
# curve with `D <= theory_max_D`: the exact second moment of the quadratic model `Q_k` and the original
# paper's Theorem 1 `T_k`. Groups: `main` (Hessian vs random subspace for every dataset and model),
# and, on `sweep_datasets` x `sweep_models`: `sigma`, `dim` (D), `distribution`, `estimator`.

# %% tags=["parameters"]
# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the profile's values.
profile = 'smoke'
device = 'cpu'
datasets = ['mnist']
models = ['mlp2']
seeds = [0, 1]
progress = False
spectrum_max_seeds = {}
D = 4
sigma = 0.3
n_samples = 32
n_orders = 20
sweep_datasets = ['mnist']
sweep_models = ['mlp2']
sweep_samples = 16
sigmas = [0.1, 1.0]
dims = [1, 4]
distributions = ['gaussian', 'ball', 'sphere', 'curvature']
estimators = ['plain', 'antithetic', 'sobol']
theory_max_D = 4
gap_scale = True
gap_thetas = 8
full_space_models = ['mlp2']
full_space_samples = 8
full_space_scales = ['norm', 'coordinate']

# %%
import matplotlib.pyplot as plt

from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.records.monte_carlo import load_plan, load_speed
from lib.stages import monte_carlo
from lib.stages.base import format_table

common, section = from_namespace("monte_carlo", globals())
store = ResultStore(common.profile)

# %%
rows = monte_carlo.run(store, common, section)
print(format_table([r for r in rows if r["group"] != "full_space"],
                   ["group", "dataset", "model", "subspace", "D", "distribution", "sigma", "estimator",
                    "n_samples", "vbar", "vbar_stderr", "seconds_per_theta", "skipped"]))

# %% [markdown]
# ## Preview: Hessian vs random subspace, and the quadratic prediction

# %%
plan = load_plan(store)
fig = figures.delta_main(store, plan)
plt.show()
fig = figures.theory_vs_mc(store, plan)
plt.show()

# %% [markdown]
# ## Full-space criterion, pointwise criterion, closed form against Monte Carlo
# Group `full_space` (Kiselev & Grabovoy 2026): on every dataset x `full_space_models` (first seed), the top-D
# Hessian curve against the full-space isotropic one, eps ~ N(0, s^2 I_n) in all n parameters, with
# s = sigma sqrt(D/n) (`norm`: the same expected squared perturbation norm) or s = sigma (`coordinate`), along the
# sigma sweep at D and the D sweep at sigma; each curve also has the pointwise criterion E|L_{k+1} - L_k| from the
# same passes. Then the closed form Q_k against Monte Carlo at 1 % relative standard error (SE ~ T^-1/2).

# %%
print(format_table([r for r in rows if r["group"] == "full_space"],
                   ["dataset", "model", "line", "D", "sigma", "scale", "s", "n_samples", "median_ratio",
                    "vbar_ratio", "seconds_per_theta", "subspace_seconds_per_theta", "skipped"]))
print(format_table(load_speed(store),
                   ["group", "dataset", "model", "sigma", "n_samples", "relative_se", "T_target",
                    "mc_seconds_target", "closed_seconds", "jet_seconds", "speedup", "speedup_with_jet",
                    "median_mc_over_q"]))
fig = figures.full_space_ratio(store)
plt.show()


# %% [markdown]
# ## Key numbers
# From the saved results, fixed format. `make nbval` (a step of `make test`) re-executes this notebook and compares
# this cell's output with the saved one (tag `nbval-check-output`): a changed number fails.

# %% tags=["nbval-check-output"]
from lib.outputs import key_numbers

print(key_numbers.text("monte_carlo", store, common))
