"""Records of notebook 07: the folder of the residual-CNN runs on digits, its run names and loaders."""
from __future__ import annotations

from lib.infra.results import ResultStore
from lib.records import folder
from lib.records.runs import load, run_name

FOLDER = folder("your_model", "your_model")
DATASET, MODEL = "digits", "rescnn"


def load_your_model(store: ResultStore, seed: int) -> dict:
    """The saved payload of one seed plus its ``meta`` record (params, summary)."""
    res = load(store, FOLDER, run_name(DATASET, MODEL, seed))
    return {**res.payload, "meta": res.meta}


def your_model_runs(store: ResultStore) -> list[int]:
    """Seeds of the saved runs that share the parameters of the lowest seed's run (a run left over from other
    settings is not mixed in); raises MissingResultError naming notebook 07 when there is none."""
    metas = {int(store.meta(FOLDER, n)["params"]["seed"]): store.meta(FOLDER, n)["params"]
             for n in store.names(FOLDER)}
    if not metas:
        load(store, FOLDER, run_name(DATASET, MODEL, 0))     # raises, naming the notebook and the command
    first = metas[min(metas)]
    same = {k: v for k, v in first.items() if k != "seed"}
    return sorted(seed for seed, p in metas.items() if {k: v for k, v in p.items() if k != "seed"} == same)
