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
import numpy as np
import torch

from lib.core.landscape.delta import delta_curve, prefix_means
from lib.core.landscape.sampling import make_sampler
from lib.core.landscape.subspace import per_sample_losses
from lib.core.sample_size.sufficient import simultaneous_multiplier
from lib.core.tensors import n_params, torch_threads
from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.records.monte_carlo import load_curve, load_plan, load_speed, main_curves
from lib.records.runs import trained_run
from lib.records.spectrum import basis_for
from lib.stages import monte_carlo
from lib.stages.base import format_table

common, section = from_namespace("monte_carlo", globals())
store = ResultStore(common.profile)

# %% [markdown]
# ## One run worked through
# The first seed of the first model on the first dataset, with `lib.core`. **The subspace**: the top-`D` Hessian
# eigenvectors of w* that notebook 02 saved, the rows of P; w = w* + P^T theta.

# %%
ds, m, seed = common.datasets[0], common.models[0], common.seeds[0]
net, x, y, _ = trained_run(store, ds, m, seed)
N, D = len(x), section.D
P, eigenvalues, _ = basis_for(store, ds, m, seed, "hessian", D, n_params(net))
gram = (P.double() @ P.double().T - torch.eye(D, dtype=torch.float64)).abs().max()
print(f"{ds} {m} seed {seed}: P is {tuple(P.shape)} (max |P P^T - I| = {float(gram):.1e}), N = {N}")
print("top-D eigenvalues:", [f"{v:.3f}" for v in eigenvalues.tolist()])

# %% [markdown]
# **A few thetas** from theta ~ N(0, sigma^2 I_D), and **L_k along k** for each: one forward pass per theta gives
# every per-sample loss, `L_k` is their prefix mean over the insertion order, `d_k = L_{k+1} - L_k`.

# %%
sampler = make_sampler("gaussian", sigma=section.sigma)
thetas = sampler.sample(4, D, seed=seed)                                  # (4, D) float64
points = torch.cat([torch.zeros(1, D, dtype=torch.float64), thetas])      # theta = 0 (w* itself) first
with torch_threads(1):
    L = prefix_means(per_sample_losses(net, x, y, P, points).double())    # (5, N): L_k for k = 1..N
d = L[:, 1:] - L[:, :-1]                                                  # (5, N-1): d_k for k = 1..N-1
print(format_table([{"theta": "0" if t == 0 else f"theta_{t}", "|theta|": float(points[t].norm()),
                     "L_N": float(L[t, -1]), "d_10^2": float(d[t, 9] ** 2), f"d_{N - 1}^2": float(d[t, -1] ** 2)}
                    for t in range(len(points))], ["theta", "|theta|", "L_N", "d_10^2", f"d_{N - 1}^2"]))
fig, ax = plt.subplots(figsize=(4.5, 2.8))
for t in range(len(points)):
    ax.semilogx(range(1, N + 1), L[t], lw=1.2 if t == 0 else 0.7, color="k" if t == 0 else f"C{t}",
                label="theta = 0" if t == 0 else f"theta_{t}")
ax.set_xlabel("k (samples in insertion order)")
ax.set_ylabel("L_k(w* + P^T theta)")
ax.set_title(f"{ds} {m} seed {seed}: L_k along k, D = {D}, sigma = {section.sigma:g}", fontsize=9)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# **Delta_k with its band** from a small T = 32 (`delta_curve`: the mean of d_k^2 over the thetas with its standard
# error; 8 batch means of 4 thetas give the simultaneous band mean_k +- c SE_k that covers the whole curve with
# ~95 % probability, `simultaneous_multiplier`). The sweep below computes the profile's curves with
# T = `n_samples` and `n_orders` random insertion orders.

# %%
with torch_threads(1):
    curve = delta_curve(net, x, y, P, sampler, 32, seed=seed, progress=False, n_batches=8)
B = curve.batch_means.shape[0]
band_se = curve.batch_means.std(axis=0, ddof=1) / np.sqrt(B)
c = simultaneous_multiplier(curve.batch_means, seed=seed)
print(f"T = {curve.n_samples}, {curve.n_forward} forward passes; V-bar = {curve.vbar:.5f} +- {curve.vbar_stderr:.5f}; "
      f"band multiplier c = {c:.3f} from {B} batches")
for kk in (1, 10, 100, N - 1):
    if kk <= N - 1:
        print(f"Delta_{kk} = {curve.delta[kk - 1]:.4e} +- {curve.stderr[kk - 1]:.1e} (SE), band half-width "
              f"{c * band_se[kk - 1]:.1e}")
fig, ax = plt.subplots(figsize=(4.5, 2.8))
ax.loglog(curve.k, curve.delta, lw=1.0, label="Delta_k (T = 32)")
ax.fill_between(curve.k, np.maximum(curve.delta - curve.stderr, curve.delta * 1e-3), curve.delta + curve.stderr,
                alpha=0.35, lw=0, label="+-1 SE")
ax.fill_between(curve.k, np.maximum(curve.delta - c * band_se, curve.delta * 1e-3), curve.delta + c * band_se,
                alpha=0.15, lw=0, label=f"simultaneous band (c = {c:.2f})")
ax.set_xlabel("k")
ax.set_ylabel("Delta_k")
ax.set_title(f"{ds} {m} seed {seed}: Delta_k = E (L_(k+1) - L_k)^2", fontsize=9)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## Every curve of the profile

# %%
rows = monte_carlo.run(store, common, section)
print(format_table([r for r in rows if r["group"] != "full_space"],
                   ["group", "dataset", "model", "subspace", "D", "distribution", "sigma", "estimator",
                    "n_samples", "vbar", "vbar_stderr", "seconds_per_theta", "skipped"]))

# %% [markdown]
# The worked curve against the sweep's saved main curve of the same run (T = `n_samples`; the same seed, so the
# first thetas are the same draws).

# %% tags=["nbval-check-output"]
plan = load_plan(store)
spec = next(s for s in main_curves(plan) if (s.dataset, s.model, s.seed, s.subspace) == (ds, m, seed, "hessian"))
saved = load_curve(store, spec)
ratio = curve.delta / np.asarray(saved["delta"])
print(f"worked: T = 32, V-bar {curve.vbar:.5f}, Delta_1 {curve.delta[0]:.5e}, Delta_{N - 1} {curve.delta[-1]:.5e}")
print(f"saved: T = {spec.n_samples}, V-bar {float(saved['vbar']):.5f}; worked / saved Delta_k: median "
      f"{np.median(ratio):.4f}, 5-95 % {np.quantile(ratio, 0.05):.4f}-{np.quantile(ratio, 0.95):.4f}")

# %% [markdown]
# ## Preview: Hessian vs random subspace, and the quadratic prediction

# %%
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
