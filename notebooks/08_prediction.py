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
# # 08 - Does the landscape predict how much data a task needs? The prediction benchmark
#
# The question the project exists for, decided on one estimand. For every task (data, classes, resolution, label
# noise, model family: `lib/infra/tasks.py`) the notebook measures the **target** `n*(eps)`: the smallest size on a
# fine grid (ratio <= 1.25) at which the mean test accuracy over seeds is within `eps` of its plateau, the accuracy
# at the pool size, measured at >= 4x the target (else the task is *unresolved* and never scored). Every predictor
# sees only a **pilot**, the first `n0` samples, and predicts that same quantity: a constant, the power law and its
# high-shot variant fitted to the pilot's own learning curve, the landscape's K(Delta*) of the pilot's V-bar, and
# a combination. The decision rule was written down before the paper-profile numbers existed
# (`lib.core.sample_size.predictors.DECISION`, docs/sample_size.md).

# %% tags=["parameters"]
# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the profile's values.
profile = 'smoke'
device = 'cpu'
progress = False
workers = 1
data_seed = 0
tasks = ['mnist2b_mlp', 'mnist2a_linear', 'fashion2a_linear', 'teacher_g8_b8_mlp', 'teacher_s8_b4_mlp', 'digits_linear']
n_seeds = 3
steps = 300
batch_size = 64
lr = 0.001
grid_ratio = 1.25
n_min = 32
max_pool = 4000
plateau_factor = 4.0
eps = [0.005, 0.01, 0.02]
primary_eps = 0.01
pilot_sizes = [250, 500]
pilot_folds = 4
pilot_ratio = 1.5
pilot_n_min = 24
D = 5
sigma = 1.0
n_thetas = 32
gap_thetas = 8
n_boot = 100
level = 0.9
threads = 1

# %%
import matplotlib.pyplot as plt

from lib.core.sample_size.predictors import DECISION
from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import prediction_figures
from lib.records.prediction import load_scores, load_task
from lib.stages import prediction
from lib.stages.base import format_table

common, section = from_namespace("prediction", globals())
store = ResultStore(common.profile)
print("Decision rule, fixed before the numbers:", DECISION)

# %% [markdown]
# ## The tasks
# One line per task as it finishes (cached tasks are read back).

# %%
rows = prediction.run(store, common, section)
print(format_table(rows, ["task", "family", "model", "n_max", "plateau", *[f"target_{e}" for e in section.eps],
                          "seconds", "skipped"]))

# %% [markdown]
# ## One task worked through
# The first task: its learning curve over the grid (mean over seeds, each seed faint), the plateau band and the
# target at every eps; its first pilot's own curve (validated inside the n0 samples) with the power law fitted to
# it; and what the landscape pilot measured.

# %%
task = load_task(store, section.tasks[0])
pilot = task["pilots"][str(section.pilot_sizes[0])]
print({k: (v["n"], v["status"], v["low"], v["high"]) for k, v in task["targets"].items()})
print("pilot n0 =", pilot["n0"], "sizes", pilot["sizes"], "power law (point, low, high) at each eps:",
      pilot["power_law"])
print({k: pilot["landscape"][k] for k in ("N", "lambda_1", "vbar_sigma", "sigma_gap", "vbar_gap", "gap")})
fig = prediction_figures.task_curve(task, section.pilot_sizes[0])
plt.show()

# %% [markdown]
# ## Scores and the decision
# Per predictor over the resolved tasks: median and 90th percentile of |log2(predicted / target)|, the share within
# 2x, the coverage of its interval (nominal `level`), fallbacks (no prediction: scored at the pool size) and the
# one-sided paired Wilcoxon p-values against the constant and the power law.

# %%
scores = load_scores(store)
key = f"n0={section.pilot_sizes[0]},eps={section.primary_eps}"
table = scores["tables"][key]
print(f"{key}: {table['n_resolved']} resolved, {table['n_unresolved']} unresolved")
print(format_table([{"predictor": p, **{k: v for k, v in s.items() if k not in ("errors", "wilcoxon_p")},
                     **{f"p_vs_{r}": v for r, v in s["wilcoxon_p"].items()}} for p, s in table["scores"].items()],
                   ["predictor", "n_tasks", "median_abs_log2", "p90_abs_log2", "within_2x", "coverage",
                    "fallbacks", "p_vs_constant", "p_vs_power_law"]))
print("decision:", {k: v for k, v in scores["decision"].items() if k != "rule"})
fig = prediction_figures.predicted_vs_target(scores, key)
plt.show()

# %% [markdown]
# ## Key numbers
# From the saved results, fixed format. `make nbval` (a step of `make test`) re-executes this notebook and compares
# this cell's output with the saved one (tag `nbval-check-output`): a changed number fails.

# %% tags=["nbval-check-output"]
from lib.outputs import key_numbers

print(key_numbers.text("prediction", store, common))
