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
# `R = n_orders` random insertion orders and the Monte-Carlo V-bar (SCIENCE.md sections 3-5). Next to each
# curve with `D <= theory_max_D`: the exact second moment of the quadratic model `Q_k` and the original
# paper's Theorem 1 `T_k`. Groups: `main` (Hessian vs random subspace for every dataset and model),
# and, on `sweep_datasets` x `sweep_models`: `sigma`, `dim` (D), `distribution`, `estimator`.

# %% tags=["parameters"]
profile = "smoke"
device = "cpu"
datasets = ["mnist"]
models = ["mlp2"]
seeds = [0]
n_train = 1000
data_seed = 0
progress = True
D = 4
sigma = 0.3
n_samples = 32
n_orders = 4
sweep_datasets = ["mnist"]
sweep_models = ["mlp2"]
sweep_samples = 16
sigmas = [0.1, 1.0]
dims = [1, 4]
distributions = ["gaussian", "ball", "sphere", "curvature"]
estimators = ["plain", "antithetic", "sobol"]
theory_max_D = 4

# %%
import matplotlib.pyplot as plt

from lib.outputs import figures
from lib.infra.config import check_parameters
from lib.stages.experiments import monte_carlo_plan, run_curve, save_plan
from lib.stages.pipeline import format_table
from lib.infra.results import ResultStore

check_parameters("monte_carlo", globals())
store = ResultStore(profile)
plan = monte_carlo_plan(datasets, models, seeds, D=D, sigma=sigma, n_samples=n_samples, n_orders=n_orders,
                        sweep_datasets=sweep_datasets, sweep_models=sweep_models, sweep_samples=sweep_samples,
                        sigmas=sigmas, dims=dims, distributions=distributions, estimators=estimators,
                        theory_max_D=theory_max_D)
print(f"{len(plan)} curves in the plan ({len({s for _, s in plan})} distinct)")

# %%
rows, context, done = [], {}, {}
for group, spec in sorted(plan, key=lambda gs: (gs[1].dataset, gs[1].model)):
    if spec not in done:
        done[spec] = run_curve(store, spec, device=device, progress=progress, context=context)
    rows.append({"group": group, **done[spec]})
save_plan(store, plan, {"specs": sorted(s.name for _, s in plan)})
print(format_table(rows, ["group", "dataset", "model", "subspace", "D", "distribution", "sigma", "estimator",
                          "n_samples", "vbar", "vbar_stderr", "seconds_per_theta", "skipped"]))

# %% [markdown]
# ## Preview: Hessian vs random subspace, and the quadratic prediction

# %%
fig = figures.delta_main(store, plan)
plt.show()
fig = figures.theory_vs_mc(store, plan)
plt.show()
