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
# standard error and the stochastic-Lanczos-quadrature spectral density (SCIENCE.md section 2). The top
# `n_vectors` eigenvectors are kept for the subspace of later notebooks. Saved under `results/<profile>/spectrum/`.

# %% tags=["parameters"]
profile = "smoke"
device = "cpu"
datasets = ["mnist"]
models = ["mlp2"]
seeds = [0]
n_train = 1000
data_seed = 0
progress = True
spectrum_max_seeds = {}
k_top = 10
tol = 1e-4
n_vectors = 10
trace_probes = 10
slq_runs = 1
slq_iter = 30
full_seeds = 1

# %%
import matplotlib.pyplot as plt
import numpy as np

from lib.outputs import plotting

from lib.core import reference
from lib.infra.config import check_parameters
from lib.stages.pipeline import format_table, load_spectrum, spectrum_one, spectrum_seeds
from lib.infra.results import ResultStore

check_parameters("spectrum", globals())
store = ResultStore(profile)

# %%
rows = []
for ds in datasets:
    for m in models:
        for s in spectrum_seeds(m, seeds, spectrum_max_seeds):
            row = spectrum_one(store, ds, m, s, k_top=k_top, tol=tol, n_vectors=n_vectors,
                               trace_probes=trace_probes, slq_runs=slq_runs, slq_iter=slq_iter,
                               extras=s in seeds[:full_seeds], device=device)
            rows.append(row)
            print(f"{row['name']}: {'skipped' if row['skipped'] else 'computed'} in {row['seconds']:.1f} s", flush=True)
print(format_table(rows, ["dataset", "model", "seed", "lambda_1", f"lambda_{k_top}", "lambda_min", "trace",
                          "trace_stderr", "max_residual", "hvp_top", "seconds"]))

# %% [markdown]
# ## Comparison with the original paper (mlp2 on MNIST, SCIENCE.md section 8)
# The original reports the mean of 50 networks trained on the full 60k set, with `k` in batches; ours are
# signed Rayleigh quotients at residual <= `tol` on the profile's `n_train` samples.

# %%
if "mnist" in datasets and "mlp2" in models:
    ours = np.array([load_spectrum(store, "mnist", "mlp2", s)["eigenvalues"].numpy()
                     for s in spectrum_seeds("mlp2", seeds, spectrum_max_seeds)])
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
with plotting.style():
    fig, axes = plotting.figure(2, width=plotting.FULL_WIDTH, aspect=0.7)
    for j, ds in enumerate(datasets):
        for i, m in enumerate(models):
            spec = [load_spectrum(store, ds, m, s) for s in spectrum_seeds(m, seeds, spectrum_max_seeds)]
            ev = np.array([p["eigenvalues"].numpy() for p in spec])
            axes[0, 0].semilogy(np.arange(1, ev.shape[1] + 1), ev.mean(0), marker=".",
                                linestyle=plotting.LINESTYLES[j % 4], label=f"{ds} {m}")
            axes[0, 1].semilogy(spec[0]["grid"], spec[0]["density"] + 1e-12,
                                linestyle=plotting.LINESTYLES[j % 4], label=f"{ds} {m}")
    axes[0, 0].set(xlabel="index i", ylabel=r"eigenvalue $\lambda_i$", title="top eigenvalues (mean over seeds)")
    axes[0, 1].set(xlabel=r"eigenvalue $\lambda$", ylabel="density", title="SLQ spectral density (seed 0)")
    axes[0, 1].set_ylim(bottom=1e-8)
    axes[0, 0].legend()
    plt.show()
