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
# Reads saved results only (no recomputation) and writes the figures of SCIENCE.md section 7 as PDF and PNG into
# `paper/figures/`, the tables as `.tex` into `paper/generated/` and `paper/generated/numbers.tex` with one
# `\newcommand` per number the paper quotes. A missing result stops with a message naming the notebook to run.

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

# %%
import json

from lib.outputs import figures

from lib.outputs import plotting

from lib.outputs import report
from lib.infra.config import check_parameters
from lib.stages.experiments import load_plan
from lib.infra.results import RESULTS_ROOT, ResultStore, atomic_write_json

check_parameters("figures", globals())
store = ResultStore(profile)
plan = load_plan(store)
projections = store.names("projection")

# %%
made = {}
made["spectrum"] = figures.spectrum(store, datasets, models, seeds, spectrum_max_seeds)
for name in projections:
    ds, m, s = name.rsplit("_", 2)[0], name.rsplit("_", 2)[1], int(name.rsplit("_s", 1)[1])
    made[f"surfaces_{ds}_{m}"] = figures.surfaces(store, ds, m, s)
made["delta_main"] = figures.delta_main(store, plan)
made["k2_delta_main"] = figures.delta_main(store, plan, k2=True)
for which in ("sigma", "dim", "distribution", "estimator"):
    made[f"sweep_{which}"] = figures.sweep(store, plan, which)
made["estimator_efficiency"] = figures.estimator_efficiency(store, plan)
made["theory_vs_mc"] = figures.theory_vs_mc(store, plan)
made["order_average"] = figures.order_average(store, plan)
made["vbar_parts"] = figures.vbar_parts(store, plan)
made["delta_vs_loss"] = figures.delta_vs_loss(store, plan)
made["learning_curve"] = figures.learning_curve(store)
made["r0_curves"] = figures.r0_curves(store)
for name, fig in made.items():
    plotting.save(fig, report.FIGURES / name)
stale = report.prune_figures(made)
print(f"{len(made)} figures written to {report.FIGURES} (PDF + PNG); removed {len(stale)} stale file(s) {stale}")

# %%
timings_path = RESULTS_ROOT / profile / "timings.json"
timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
values = report.numbers(store, datasets, models, seeds, plan, timings=timings,
                        spectrum_max_seeds=spectrum_max_seeds)
report.write_numbers(values)
report.write_table("sample_size", report.sample_size_table(store))
report.write_table("solvers", report.solver_table(store, datasets, models, seeds))
report.write_table("theory", report.theory_table(store))
atomic_write_json(report.GENERATED / "source.json", {"profile": profile, "figures": sorted(made),
                                                     "n_numbers": len(values)})
print(f"{len(values)} numbers written to {report.GENERATED / 'numbers.tex'}")
for k in sorted(values)[:20]:
    print(f"  \\{k} = {values[k]}")
