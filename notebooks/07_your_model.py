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
# * **model**: a small residual CNN defined in `lib/stages/your_model.py` (not in `lib/core/models.py`): 3x3
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
import matplotlib.pyplot as plt

from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import figures
from lib.stages import your_model
from lib.stages.base import format_table

common, section = from_namespace("your_model", globals())
store = ResultStore(common.profile)

# %%
rows = your_model.run(store, common, section)
print(format_table(rows, ["name", "n_params", "n_train", "test_accuracy", "lambda_1", "vbar", "slope",
                          "loss_star", "loss_theta", "analyze_seconds", "skipped"]))

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
