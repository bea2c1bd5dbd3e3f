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
# Trains every (dataset, model, seed) of the profile with the recipe of SCIENCE.md section 1
# (Adam 1e-3, batch 64, seeded shuffling) on the first `n_train` images of the insertion order drawn from
# `data_seed`. Runs already trained with identical parameters are skipped. Weights and metrics are saved
# under `results/<profile>/train/` with parameters, seed, package versions and git commit.

# %% tags=["parameters"]
profile = "smoke"
device = "cpu"
datasets = ["mnist"]
models = ["mlp2"]
seeds = [0]
n_train = 1000
data_seed = 0
progress = True
epochs = 1
batch_size = 64
lr = 1e-3

# %%
from lib.infra.config import check_parameters
from lib.stages.pipeline import format_table, run_training
from lib.infra.results import ResultStore

check_parameters("train", globals())
store = ResultStore(profile)

# %%
rows = run_training(store, datasets=datasets, models_=models, seeds=seeds, n_train=n_train,
                    data_seed=data_seed, epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                    progress=progress)

# %% [markdown]
# ## Summary

# %%
print(format_table(rows, ["dataset", "model", "seed", "n_params", "n_train", "train_loss", "train_accuracy",
                          "test_accuracy", "train_seconds", "skipped"]))
