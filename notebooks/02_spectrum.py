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
# # 02 - Hessian spectrum at w*
#
# For every trained (dataset, model, seed) of the profile: the top-`k_top` eigenvalues (Lanczos on exact
# Hessian-vector products of the full-training-set loss), the smallest eigenvalue, the Hutchinson trace with its
# standard error and the stochastic-Lanczos-quadrature spectral density. The top
# `n_vectors` eigenvectors are kept for the subspace of later notebooks. Saved under `results/<profile>/spectrum/`.

# %% tags=["parameters"]
# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the profile's values.
profile = 'smoke'
device = 'cpu'
datasets = ['mnist']
models = ['mlp2']
seeds = [0, 1]
progress = False
spectrum_max_seeds = {}
k_top = 10
tol = 0.0001
n_vectors = 4
trace_probes = 10
slq_runs = 1
slq_iter = 30
full_seeds = 1
pyhessian_density = True
solver_k = 4
solver_datasets = ['mnist']
solver_models = ['mlp2']

# %%
import matplotlib.pyplot as plt
import numpy as np

from lib.core import reference
from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.records.spectrum import load_spectrum, spectrum_seeds
from lib.stages import spectrum
from lib.stages.base import format_table

common, section = from_namespace("spectrum", globals())
store = ResultStore(common.profile)

# %%
rows = spectrum.run(store, common, section)
print(format_table(rows, ["dataset", "model", "seed", "lambda_1", f"lambda_{section.k_top}", "lambda_min", "trace",
                          "trace_stderr", "max_residual", "hvp_top", "seconds"]))

# %% [markdown]
# ## Comparison with the original paper (mlp2 on MNIST)
# The original reports the mean of 50 networks trained on the full 60k set, with `k` in batches; ours are
# signed Rayleigh quotients at residual <= `tol` on the profile's `n_train` samples.

# %%
if "mnist" in common.datasets and "mlp2" in common.models:
    used = spectrum_seeds("mlp2", common.seeds, common.spectrum_max_seeds)
    ours = np.array([load_spectrum(store, "mnist", "mlp2", s)["eigenvalues"].numpy() for s in used])
    n = min(len(reference.TOP_EIGENVALUES), ours.shape[1])
    print("index  ours (mean over seeds)  original")
    for i in range(n):
        print(f"{i:5d}  {ours[:, i].mean():22.3f}  {reference.TOP_EIGENVALUES[i]:8.2f}")
    gaps = ours.mean(0)[:-1] / ours.mean(0)[1:]
    print("positive:", bool((ours > 0).all()), " decreasing:", bool((np.diff(ours, axis=1) <= 0).all()),
          " largest ratio lambda_i/lambda_{i+1} after index", int(np.argmax(gaps[5:]) + 5) + 1)

# %% [markdown]
# ## Preview

# %%
fig = figures.spectrum(store, common.datasets, common.models, common.seeds, common.spectrum_max_seeds)
plt.show()


# %% [markdown]
# ## Key numbers
# From the saved results, fixed format. `make nbval` (a step of `make test`) re-executes this notebook and compares
# this cell's output with the saved one (tag `nbval-check-output`): a changed number fails.

# %% tags=["nbval-check-output"]
from lib.outputs import key_numbers

print(key_numbers.text("spectrum", store, common))
