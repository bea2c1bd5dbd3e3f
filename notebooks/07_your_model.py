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
# # 07 - The method on your own model: a residual CNN on scikit-learn's 8x8 digits
#
# A worked example of the public API (`lib.api.analyze`, docs/api.md) on a model family and a dataset that the
# paper's pipeline (notebooks 01-05) never uses:
#
# * **data**: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; the file ships inside the
#   pinned scikit-learn wheel and is checked against its sha256, `lib.infra.data.digits`). A fixed seeded
#   permutation splits them into 1,500 training images (the insertion order) and 297 test images; the run uses the
#   first `n_train` training images.
# * **model**: a small residual CNN defined in `lib/stages/your_model.py` (not in `lib/core/training/models.py`): 3x3
#   convolution 1 -> `channels`, two residual blocks `h -> tanh(h + conv(tanh(conv(h))))` with identity skips and
#   biases, global average pooling, linear `channels` -> 10.
#
# For every seed it trains the model (Adam), calls `analyze(model, (x, y), D=..., sigma=...)` with the training
# tensors in insertion order, and saves `report.to_dict()` (eigenvalues, Delta_k with standard errors, V-bar, Q_k,
# K(Delta) with its uncertainty) under `results/<profile>/your_model/`. The paper's figure and numbers of this run
# are made from those results by notebook 06, which the runner runs after this one.

# %% tags=["parameters"]
# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the profile's values.
profile = 'smoke'
device = 'cpu'
seeds = [0, 1]
progress = False
workers = 1
n_train = 500
channels = 8
epochs = 20
batch_size = 32
lr = 0.003
D = 4
sigma = 0.05
n_samples = 16
n_orders = 20
thresholds = [1e-05, 1e-06, 1e-07]
tol = 0.001
quadratic = True

# %%
import dataclasses

import matplotlib.pyplot as plt
import torch

from lib.api import analyze
from lib.core import hessian
from lib.core.tensors import n_params, torch_threads
from lib.core.training.recipe import evaluate, train
from lib.infra import data
from lib.infra.config import from_namespace
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.records.your_model import load_your_model
from lib.stages import your_model
from lib.stages.base import format_table

common, section = from_namespace("your_model", globals())
store = ResultStore(common.profile)

# %% [markdown]
# ## One run worked through
# The first seed, step by step: the data and the model, its training (`lib.core.training.recipe`), then one
# `analyze` call and
# what each part of the report it returns holds. The same settings and one thread, as the stage runs them, so the
# report is the one the sweep below saves for this seed.

# %%
seed, dev = common.seeds[0], resolve_device(common.device)
x, y = data.digits("train", section.n_train)              # the first n_train of the fixed training split
xt, yt = data.digits("test")
net = your_model.build_model(section.channels, seed)
print(f"digits: x {tuple(x.shape)}, test {tuple(xt.shape)}; class counts {torch.bincount(y, minlength=10).tolist()}")
print(f"residual CNN, channels = {section.channels}: {n_params(net)} parameters "
      f"(36 c^2 + 24 c + 10 = {your_model.parameter_count(section.channels)})")
with torch_threads(1):
    hist = train(net, x, y, epochs=section.epochs, batch_size=section.batch_size, lr=section.lr, seed=seed,
                 device=dev, progress=False)
    on_test = evaluate(net, xt, yt, device=dev)
print(f"trained {section.epochs} epochs: epoch loss {hist.epoch_loss[0]:.4f} -> {hist.epoch_loss[-1]:.4f}, "
      f"test accuracy {on_test['accuracy']:.4f}")

# %% [markdown]
# **`analyze`**: the model, its training data in insertion order, the subspace dimension and the theta scale; it
# returns a `LandscapeReport`.

# %%
with torch_threads(1):
    rep = analyze(net, (x, y), D=section.D, sigma=section.sigma, n_samples=section.n_samples,
                  n_orders=section.n_orders, thresholds=section.thresholds, seed=seed, device=dev, tol=section.tol,
                  batch_size=len(x), quadratic=section.quadratic)
print(f"N = {rep.N}, D = {rep.D}, n_params = {rep.n_params}, {rep.hvp_count} Hessian-vector products; seconds:",
      {k: round(v, 2) for k, v in rep.seconds.items()})
print("notes:", rep.notes)

# %% [markdown]
# **1. The subspace**: the top-D eigenvalues (Lanczos), their residuals and the basis P (rows).

# %%
print("eigenvalues:", [f"{v:.4f}" for v in rep.eigenvalues], "\nresiduals:", [f"{v:.1e}" for v in rep.residuals])
print(f"basis {tuple(rep.basis.shape)}; the operator stays on the report: tr(H) by 10 Hutchinson probes = ", end="")
with torch_threads(1):
    tr = hessian.trace(rep.operator, n_probes=10, seed=seed)
print(f"{tr.estimate:.3f} +- {tr.stderr:.3f}")

# %% [markdown]
# **2. The curve** `Delta_k` with its standard error, V-bar, the simultaneous band's multiplier, and the random
# orders (`rep.curve`, a `lib.core.landscape.delta.DeltaCurve`); **3. the quadratic model's** `Q_k` beside it.

# %%
print(f"V-bar = {rep.vbar:.6f} +- {rep.vbar_stderr:.6f}; band multiplier c = {rep.band_multiplier:.3f}; "
      f"{rep.curve.n_orders} random orders, their curves {rep.curve.order_curves.shape}")
print(format_table([{"k": kk, "Delta_k": rep.delta[kk - 1], "SE": rep.stderr[kk - 1],
                     "Q_k": None if rep.Q is None else rep.Q[kk - 1],
                     "order_formula": rep.curve.order_formula[kk - 1]}
                    for kk in (1, 10, 100, rep.N - 1) if kk <= rep.N - 1],
                   ["k", "Delta_k", "SE", "Q_k", "order_formula"]))

# %% [markdown]
# **4. K(Delta)** per threshold with its uncertainty (`rep.sample_sizes`), and the report's own figure
# (`rep.plot()`).

# %%
print(format_table([dataclasses.asdict(z) for z in rep.sample_sizes],
                   ["threshold", "K", "K_band", "K_order_median", "K_order_q05", "K_order_q95", "K_order_upper",
                    "orders_reached", "K_closed"]))
fig = rep.plot()
plt.show()

# %% [markdown]
# ## Every seed

# %%
rows = your_model.run(store, common, section)
print(format_table(rows, ["name", "n_params", "n_train", "test_accuracy", "lambda_1", "vbar", "slope",
                          "loss_star", "loss_theta", "analyze_seconds", "skipped"]))

# %% [markdown]
# The worked run is the sweep's first seed: its report equals the saved one.

# %% tags=["nbval-check-output"]
saved = load_your_model(store, seed)["report"]
mine = rep.to_dict()
same = {key: mine[key] == saved[key] for key in ("eigenvalues", "delta", "stderr", "vbar", "sample_sizes")}
print(f"seed {seed}: lambda_1 {rep.eigenvalues[0]:.6f}, V-bar {rep.vbar:.6e}, K {[z.K for z in rep.sample_sizes]}")
print("equal to the saved report:", same)

# %% [markdown]
# ## K(Delta) with its uncertainty
# Per seed and threshold: K on the given insertion order, on the upper edge of the simultaneous 95 % band, the
# median and 5-95 % range over random insertion orders, the conformal 95 % upper bound, and the closed form
# `min{k : V-bar N / ((N-1) k (k+1)) < Delta}` (None: not reached within the N samples).

# %%
sizes = [{"seed": r["seed"], **z} for r in rows for z in r["sample_sizes"]]
print(format_table(sizes, ["seed", "threshold", "K", "K_band", "K_order_median", "K_order_q05", "K_order_q95",
                           "K_order_upper", "K_closed"]))

# %% [markdown]
# ## Delta_k of every seed
# The first seed with its pointwise +-1 SE band, the 5-95 % range over random orders and the closed form; the other
# seeds as thin lines; the thresholds and K markers (the same figure as the paper's).

# %%
fig = figures.your_model(store)
plt.show()
