"""Records of notebook 08 (the prediction benchmark): its folder, the names of its results and their loaders."""
from __future__ import annotations

from lib.infra.results import ResultStore
from lib.records import folder
from lib.records.runs import load

FOLDER = folder("prediction", "prediction")
#: the name of the scores result (every other result of the folder is one task's record, named by the task)
SCORES = "scores"


def task_names(store: ResultStore) -> list[str]:
    """Names of the saved task records."""
    return [n for n in store.names(FOLDER) if n != SCORES]


def load_task(store: ResultStore, name: str) -> dict:
    """One task's record (its payload: curves, target, pilots) plus ``meta`` (params, summary)."""
    res = load(store, FOLDER, name)
    return {**res.payload, "meta": res.meta}


def load_scores(store: ResultStore) -> dict:
    """The predictions of every task and the scores table (notebook 08)."""
    return load(store, FOLDER, SCORES).payload
