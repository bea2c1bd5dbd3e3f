"""Records of notebook 03: the folder of the loss surfaces, their loader and the runs that have one."""
from __future__ import annotations

from lib.infra.results import ResultStore
from lib.records import folder
from lib.records.runs import load, run_name

FOLDER = folder("projection", "projection")


def load_projection(store: ResultStore, dataset: str, model: str, seed: int) -> dict:
    return load(store, FOLDER, run_name(dataset, model, seed)).payload


def projected_runs(store: ResultStore) -> list[tuple[str, str, int]]:
    """(dataset, model, seed) of every saved projection."""
    out = []
    for name in store.names(FOLDER):
        meta = store.meta(FOLDER, name)["params"]
        out.append((meta["dataset"], meta["model"], int(meta["seed"])))
    return out
