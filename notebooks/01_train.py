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
import matplotlib.pyplot as plt

from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.records.runs import load_trained
from lib.stages import train
from lib.stages.base import format_table

common, section = from_namespace("train", globals())
store = ResultStore(common.profile)

# %% [markdown]
# ## One run worked through
# The first seed of the first model on the first dataset, step by step with `lib.core` and the data loader; the sweep
# below then trains every run of the profile through `lib.stages.train` (runs already saved are skipped).
#
# **The data and its insertion order.** `data_seed` draws one permutation of the training split; the first `n_train`
# images in that order are the training set, and `L_k` (later notebooks) is the mean loss of its first `k`.

# %%
import torch

from lib.core.tensors import torch_threads
from lib.core.training.models import build as build_model
from lib.core.training.recipe import evaluate
from lib.core.training.recipe import train as train_recipe
from lib.infra import data

ds, m, seed = common.datasets[0], common.models[0], common.seeds[0]
order = data.insertion_order(data.TRAIN_SIZE, common.data_seed)
x, y = data.training_subset(ds, common.n_train, common.data_seed)
print(f"{ds}: training split of {data.TRAIN_SIZE} images; insertion order (data_seed={common.data_seed}) starts "
      f"with split indices {order[:8].tolist()}")
print(f"x {tuple(x.shape)} {x.dtype} (normalised: mean {x.mean():.3f}, std {x.std():.3f}), y {tuple(y.shape)}")
print("first 20 labels in insertion order:", y[:20].tolist())
print("class counts of the first n_train:", torch.bincount(y, minlength=10).tolist())

# %%
fig, axes = plt.subplots(2, 8, figsize=(7.0, 2.2))
for i, ax in enumerate(axes.flat):
    ax.imshow(x[i, 0], cmap="gray_r")
    ax.set_title(f"k={i + 1}: {int(y[i])}", fontsize=7)
    ax.axis("off")
fig.suptitle(f"the first 16 training images of {ds} in insertion order (label after the colon)", fontsize=8)
plt.show()

# %% [markdown]
# **One training.** The recipe (Adam, seeded minibatch shuffling) on those images, from the model's seeded
# initialisation; `train` returns the mean loss of every minibatch in step order and of every epoch.

# %%
net = build_model(m, seed)
with torch_threads(section.threads):
    hist = train_recipe(net, x, y, epochs=section.epochs, batch_size=section.batch_size, lr=section.lr, seed=seed,
                        progress=False)
    on_train = evaluate(net, x, y)
steps_per_epoch = -(-common.n_train // section.batch_size)
print(f"{m} seed {seed}: {sum(p.numel() for p in net.parameters())} parameters, {len(hist.step_loss)} steps "
      f"({steps_per_epoch} per epoch) in {hist.seconds:.1f} s")
print("epoch losses:", [f"{v:.4f}" for v in hist.epoch_loss], f" at w*: loss {on_train['loss']:.4f}, "
      f"accuracy {on_train['accuracy']:.3f} on the n_train images")
fig, ax = plt.subplots(figsize=(4.5, 2.8))
ax.plot(range(1, len(hist.step_loss) + 1), hist.step_loss, lw=0.8, label="minibatch loss")
ax.plot([steps_per_epoch * (e + 1) for e in range(len(hist.epoch_loss))], hist.epoch_loss, "o", label="epoch mean")
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy")
ax.set_title(f"{ds} {m} seed {seed}: training loss", fontsize=9)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## Every run of the profile

# %%
rows = train.run(store, common, section)

# %% [markdown]
# ## Summary

# %%
print(format_table(rows, ["dataset", "model", "seed", "n_params", "n_train", "train_loss", "train_accuracy",
                          "test_accuracy", "train_seconds", "skipped"]))


# %% [markdown]
# The worked run is the sweep's first run: the same weights, bit for bit, as the saved w*.

# %% tags=["nbval-check-output"]
saved, _ = load_trained(store, ds, m, seed)
same = all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), saved.state_dict().values()))
print(f"{ds} {m} seed {seed}: worked run equals the saved w* bitwise: {same}; final epoch loss "
      f"{hist.epoch_loss[-1]:.6f}, minibatch loss at step 1 {hist.step_loss[0]:.6f}")


# %% [markdown]
# ## Key numbers
# From the saved results, fixed format. `make nbval` (a step of `make test`) re-executes this notebook and compares
# this cell's output with the saved one (tag `nbval-check-output`): a changed number fails.

# %% tags=["nbval-check-output"]
from lib.outputs import key_numbers

print(key_numbers.text("train", store, common))
