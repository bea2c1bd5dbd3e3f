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
# # 01 - Train the networks at their minimum w*
#
# Trains every (dataset, model, seed) of the profile with the recipe
# (Adam 1e-3, batch 64, seeded shuffling) on the first `n_train` images of the insertion order drawn from
# `data_seed`. Runs already trained with identical parameters are skipped. Weights and metrics are saved
# under `results/<profile>/train/` with parameters, seed, package versions and git commit.

# %% tags=["parameters"]
# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the profile's values.
profile = 'smoke'
device = 'cpu'
datasets = ['mnist']
models = ['mlp2']
seeds = [0, 1]
progress = False
n_train = 1000
data_seed = 0
workers = 1
epochs = 1
batch_size = 64
lr = 0.001
threads = 1

# %%
from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.stages import train
from lib.stages.base import format_table

common, section = from_namespace("train", globals())
store = ResultStore(common.profile)

# %%
rows = train.run(store, common, section)

# %% [markdown]
# ## Summary

# %%
print(format_table(rows, ["dataset", "model", "seed", "n_params", "n_train", "train_loss", "train_accuracy",
                          "test_accuracy", "train_seconds", "skipped"]))


# %% [markdown]
# ## Key numbers
# From the saved results, fixed format. `make nbval` (a step of `make test`) re-executes this notebook and compares
# this cell's output with the saved one (tag `nbval-check-output`): a changed number fails.

# %% tags=["nbval-check-output"]
from lib.outputs import key_numbers

print(key_numbers.text("train", store, common))
