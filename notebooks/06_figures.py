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
# # 06 - Every figure, table and number of the paper
#
# Reads saved results only (no recomputation) and writes the figures as PDF and PNG into
# `paper/figures/<profile>/`, the tables as `.tex` into `paper/generated/<profile>/` and
# `paper/generated/<profile>/numbers.tex` with one `\newcommand` per number the paper quotes (each profile has its
# own folders: building one never touches another's). A missing result stops with a message naming the notebook to run.

# %% tags=["parameters"]
# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the profile's values.
profile = 'smoke'
datasets = ['mnist']
models = ['mlp2']
seeds = [0, 1]
spectrum_max_seeds = {}
allow_placeholders = True

# %%
from lib.infra.config import from_namespace
from lib.infra.results import ResultStore
from lib.outputs import latex, registry

common, section = from_namespace("figures", globals())
store = ResultStore(common.profile)

# %%
made = registry.run(store, common, section)
figs, gen = latex.figures_dir(store.profile), latex.generated_dir(store.profile)
print(f"{len(made['figures'])} figures written to {figs} (PDF + PNG); removed {len(made['removed'])} "
      f"stale file(s) {made['removed']}")
print(f"{len(made['tables'])} tables and {len(made['numbers'])} numbers written to {gen}")
for k in sorted(made["numbers"])[:20]:
    print(f"  \\{k} = {made['numbers'][k]}")

# %% [markdown]
# ## Key numbers
# From the saved results, fixed format. `make nbval` (a step of `make test`) re-executes this notebook and compares
# this cell's output with the saved one (tag `nbval-check-output`): a changed number fails.

# %% tags=["nbval-check-output"]
from lib.outputs import key_numbers

print(key_numbers.text("figures", store, common))
