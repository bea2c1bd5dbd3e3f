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
trace_estimator = 'deflated'
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

from lib.core import hessian, reference
from lib.core.tensors import torch_threads
from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.records.runs import trained_run
from lib.records.spectrum import load_spectrum, spectrum_seeds
from lib.stages import spectrum
from lib.stages.base import format_table

common, section = from_namespace("spectrum", globals())
store = ResultStore(common.profile)

# %% [markdown]
# ## One run worked through
# The first seed of the first model on the first dataset, with `lib.core.hessian` on one operator: exact
# Hessian-vector products of `L_n`, the mean loss of the first `n = min(N, 1000)` training samples in insertion order
# (all N on the smoke profile). The sweep below does the same on all N samples of every run, with `k_top`
# eigenpairs. One thread, so that the numbers repeat bit for bit.

# %%
ds, m, seed = common.datasets[0], common.models[0], common.seeds[0]
net, x, y, _ = trained_run(store, ds, m, seed)
n, k = min(len(x), 1000), min(4, section.k_top)
op = hessian.HessianOperator(net, x[:n], y[:n])
print(f"{ds} {m} seed {seed}: H is {op.n_params} x {op.n_params}, L_n over n = {n} of N = {len(x)} samples")

# %% [markdown]
# **Lanczos** (`top_eigenpairs`, ARPACK's implicitly restarted Lanczos on the products) for the top `k`, and the
# **residuals** `||H v - lambda v|| / |lambda_1|`: the solver's own, and measured again with fresh products.

# %%
with torch_threads(1):
    top = hessian.top_eigenpairs(op, k, method="lanczos", tol=section.tol, seed=seed)
    fresh = spectrum.residuals(op, top.eigenvalues, top.eigenvectors)
print(format_table([{"i": i + 1, "lambda_i": float(top.eigenvalues[i]), "residual": float(top.residuals[i]),
                     "residual_fresh": float(fresh[i])} for i in range(k)],
                   ["i", "lambda_i", "residual", "residual_fresh"]))
print(f"{top.hvp_count} Hessian-vector products, {top.seconds:.2f} s")

# %% [markdown]
# **Trace** at equal cost, three ways (`trace_probes` products each): Hutchinson's estimator (Rademacher probes z,
# the mean of z^T H z), Hutch++ (a sketched subspace taken exactly, Hutchinson on the rest) and the deflated
# estimator (the top-k eigenvalues just computed, plus Hutchinson on probes projected off their eigenvectors), each
# with its standard error. The stage reports `trace_estimator` (default: deflated, the least error per product in
# `make bench`).

# %%
with torch_threads(1):
    estimates = {name: hessian.estimate_trace(op, name, section.trace_probes, eigenpairs=top, seed=seed)
                 for name in hessian.TRACE_ESTIMATORS}
for name, tr in estimates.items():
    print(f"{name:>10}: tr(H) = {tr.estimate:.2f} +- {tr.stderr:.2f} (1 SE, {tr.hvp_count} products; exact part "
          f"{tr.exact_part:.2f} on rank {tr.rank})")
tr = estimates[section.trace_estimator]
print(f"reported ({section.trace_estimator}): {tr.estimate:.2f} +- {tr.stderr:.2f}; the top {k} eigenvalues sum to "
      f"{float(top.eigenvalues.sum()):.2f}")

# %% [markdown]
# **Density** by stochastic Lanczos quadrature (`slq_iter` Lanczos steps from one probe: Ritz values as nodes, the
# squared first components as weights, Gaussian-smoothed), with the top eigenvalues from above.

# %%
with torch_threads(1):
    dens = hessian.density(op, n_runs=section.slq_runs, n_iter=section.slq_iter, seed=seed, n_grid=2000)
print(f"{dens.nodes.size} nodes from {dens.nodes.min():.3g} to {dens.nodes.max():.3g}; sum(w * node) * n_params = "
      f"{float((dens.weights * dens.nodes).sum()) * op.n_params:.2f} (another trace estimate)")
fig, ax = plt.subplots(figsize=(4.5, 2.8))
ax.semilogy(dens.grid, np.maximum(dens.density, 1e-8), lw=0.8)
for lam in top.eigenvalues.tolist():
    ax.axvline(lam, color="C3", lw=0.6, ls=":")
ax.set_xlabel("eigenvalue")
ax.set_ylabel("smoothed density")
ax.set_title(f"{ds} {m} seed {seed}: SLQ density (dotted: top {k} by Lanczos)", fontsize=9)
plt.show()

# %% [markdown]
# ## Every run of the profile

# %%
rows = spectrum.run(store, common, section)
print(format_table(rows, ["dataset", "model", "seed", "lambda_1", f"lambda_{section.k_top}", "lambda_min", "trace",
                          "trace_stderr", "max_residual", "hvp_top", "seconds"]))

# %% [markdown]
# The worked run against the sweep's saved spectrum of the same run (all N samples, `k_top` eigenpairs, `tol`).

# %% tags=["nbval-check-output"]
saved = load_spectrum(store, ds, m, seed)
print(f"lambda_1..{k} worked (n = {n}):", [f"{v:.4f}" for v in top.eigenvalues.tolist()])
print(f"lambda_1..{k} saved  (N = {len(x)}):", [f"{v:.4f}" for v in saved["eigenvalues"][:k].tolist()])
if saved["trace"] is not None:
    print(f"trace worked {tr.estimate:.2f} +- {tr.stderr:.2f}, "
          f"saved {saved['trace']:.2f} +- {saved['trace_stderr']:.2f}")

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
