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
# # 03 - Loss surfaces on two-dimensional planes through w*
#
# `L_k(w* + a u + b v)` on the plane of the top-2 Hessian eigenvectors (u, v unit vectors, a, b in
# `[-hessian_span, hessian_span]`) and on two filter-normalised random directions (Li et al. 2018, a, b in
# `[-random_span, random_span]`), for a small `k` and `k = N - 1`, and `(L_{k+1} - L_k)^2` at the small `k`.
# Grids are saved under `results/<profile>/projection/`. Seed: the first of `seeds`.

# %% tags=["parameters"]
profile = "smoke"
device = "cpu"
datasets = ["mnist"]
models = ["mlp2"]
seeds = [0]
n_train = 1000
data_seed = 0
progress = True
grid_points = 9
hessian_span = 1.0
random_span = 1.0
k_small = 10

# %%
import matplotlib.pyplot as plt

from lib.outputs import figures
from lib.infra.config import check_parameters
from lib.stages.experiments import projection_one
from lib.stages.pipeline import format_table
from lib.infra.results import ResultStore

check_parameters("projection", globals())
store = ResultStore(profile)

# %%
rows = [projection_one(store, ds, m, seeds[0], grid_points=grid_points, hessian_span=hessian_span,
                       random_span=random_span, k_small=k_small, device=device, progress=progress)
        for ds in datasets for m in models]
print(format_table(rows, ["dataset", "model", "seed", "N", "grid_points", "seconds", "skipped"]))

# %% [markdown]
# ## Preview

# %%
for ds in datasets:
    for m in models:
        fig = figures.surfaces(store, ds, m, seeds[0])
        plt.show()
