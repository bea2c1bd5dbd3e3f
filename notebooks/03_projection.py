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
# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the profile's values.
profile = 'smoke'
device = 'cpu'
datasets = ['mnist']
models = ['mlp2']
seeds = [0, 1]
progress = False
grid_points = 9
hessian_span = 1.0
random_span = 1.0
k_small = 10

# %%
import matplotlib.pyplot as plt

from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.stages import projection
from lib.stages.base import format_table

common, section = from_namespace("projection", globals())
store = ResultStore(common.profile)

# %%
rows = projection.run(store, common, section)
print(format_table(rows, ["dataset", "model", "seed", "N", "grid_points", "seconds", "skipped"]))

# %% [markdown]
# ## Preview

# %%
for ds in common.datasets:
    for m in common.models:
        fig = figures.surfaces(store, ds, m, common.seeds[0])
        plt.show()


# %% [markdown]
# ## Key numbers
# From the saved results, fixed format. `make nbval` (a step of `make test`) re-executes this notebook and compares
# this cell's output with the saved one (tag `nbval-check-output`): a changed number fails.

# %% tags=["nbval-check-output"]
from lib.outputs import key_numbers

print(key_numbers.text("projection", store, common))
