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
# `paper/figures/`, the tables as `.tex` into `paper/generated/` and `paper/generated/numbers.tex` with one
# `\newcommand` per number the paper quotes. A missing result stops with a message naming the notebook to run.

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
from lib.outputs import report
from lib.stages import figures

common, section = from_namespace("figures", globals())
store = ResultStore(common.profile)

# %%
made = figures.run(store, common, section)
print(f"{len(made['figures'])} figures written to {report.FIGURES} (PDF + PNG); removed {len(made['removed'])} "
      f"stale file(s) {made['removed']}")
print(f"{len(made['tables'])} tables and {len(made['numbers'])} numbers written to {report.GENERATED}")
for k in sorted(made["numbers"])[:20]:
    print(f"  \\{k} = {made['numbers'][k]}")
