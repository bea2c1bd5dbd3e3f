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
import torch

from lib.core.landscape.delta import prefix_means
from lib.core.landscape.subspace import per_sample_losses
from lib.core.tensors import n_params, torch_threads
from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.records.projection import load_projection
from lib.records.runs import trained_run
from lib.records.spectrum import basis_for
from lib.stages import projection
from lib.stages.base import format_table

common, section = from_namespace("projection", globals())
store = ResultStore(common.profile)

# %% [markdown]
# ## One run worked through
# The first model on the first dataset (first seed), on a coarse 7 x 7 grid: the plane through w* spanned by the top-2
# Hessian eigenvectors u, v that notebook 02 saved, `L_k(w* + a u + b v)` from one forward pass per grid point
# (`lib.core.landscape.subspace.per_sample_losses`: every per-sample loss l_i, so every `L_k` is a prefix mean of them).

# %%
ds, m, seed = common.datasets[0], common.models[0], common.seeds[0]
net, x, y, _ = trained_run(store, ds, m, seed)
N = len(x)
plane, eigenvalues, _ = basis_for(store, ds, m, seed, "hessian", 2, n_params(net))
print(f"{ds} {m} seed {seed}: N = {N}; u, v = top-2 eigenvectors (lambda = {eigenvalues[0]:.3f}, "
      f"{eigenvalues[1]:.3f}), |u| = {float(plane[0].norm()):.4f}, u.v = {float(plane[0] @ plane[1]):.1e}")
axis = torch.linspace(-section.hessian_span, section.hessian_span, 7, dtype=torch.float64)
a, b = torch.meshgrid(axis, axis, indexing="ij")
thetas = torch.stack([a.flatten(), b.flatten()], 1)                     # (49, 2) grid points (a, b)
with torch_threads(1):
    losses = per_sample_losses(net, x, y, plane, thetas).double()      # (49, N) per-sample losses l_i
L = prefix_means(losses)                                               # (49, N): L_k at every k
print(f"per-sample losses {tuple(losses.shape)}; L_N(w*) = {float(L[24, -1]):.5f} at the centre (a = b = 0)")

# %% [markdown]
# The surfaces `L_N` and `L_k` at `k = k_small` on that grid (the printed table: `L_N`, rows a, columns b), and
# the lowest point of each.

# %%
surfaces = {f"L_{section.k_small}": L[:, section.k_small - 1].reshape(7, 7), f"L_{N}": L[:, -1].reshape(7, 7)}
print("a \\ b " + " ".join(f"{v:8.2f}" for v in axis.tolist()))
for i, row in enumerate(surfaces[f"L_{N}"].tolist()):
    print(f"{axis[i]:6.2f} " + " ".join(f"{v:8.4f}" for v in row))
for name, grid in surfaces.items():
    i = int(grid.argmin())
    print(f"{name}: min {float(grid.min()):.4f} at (a, b) = ({axis[i // 7]:.2f}, {axis[i % 7]:.2f}), "
          f"centre {float(grid[3, 3]):.4f}")
fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0))
for ax, (name, grid) in zip(axes, surfaces.items()):
    cs = ax.contourf(axis, axis, grid.T, levels=12, cmap="viridis")
    ax.plot([0], [0], "w+", ms=8)
    ax.set_xlabel("a (along u)")
    ax.set_ylabel("b (along v)")
    ax.set_title(f"{name}(w* + a u + b v)", fontsize=9)
    fig.colorbar(cs, ax=ax)
plt.show()

# %% [markdown]
# ## Every run of the stage

# %%
rows = projection.run(store, common, section)
print(format_table(rows, ["dataset", "model", "seed", "N", "grid_points", "seconds", "skipped"]))

# %% [markdown]
# The worked run against the sweep's saved surface of the same run (`grid_points` per axis): the grid points both
# have (the corners and the centre at least).

# %% tags=["nbval-check-output"]
saved = load_projection(store, ds, m, seed)["hessian"]
shared = [(i, j) for i, v in enumerate(axis.tolist()) for j, w in enumerate(saved["axis"].tolist())
          if abs(v - w) < 1e-12]
diff = max(abs(float(surfaces[f"L_{N}"][i, i2]) - float(saved[f"L_{N}"][j, j2]))
           for i, j in shared for i2, j2 in shared)
print(f"worked: L_N(w*) = {float(L[24, -1]):.6f}, L_N min on the grid {float(surfaces[f'L_{N}'].min()):.6f}")
print(f"{len(shared)} shared values per axis; largest |L_N worked - L_N saved| over the shared points: {diff:.2e}")

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
