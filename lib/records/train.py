"""Records of notebook 01: the folder of the trained models and the recipe a trained run was trained with."""
from __future__ import annotations

from lib.infra.config import Train
from lib.infra.results import ResultStore
from lib.records import folder
from lib.records.runs import load, run_name

FOLDER = folder("train", "train")


def recipe_of(store: ResultStore, dataset: str, model: str, seed: int) -> tuple[dict, Train]:
    """(n_train and data_seed, the training recipe) of a trained main run."""
    p = load(store, FOLDER, run_name(dataset, model, seed)).meta["params"]
    return ({"n_train": p["n_train"], "data_seed": p["data_seed"]},
            Train(epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], threads=p["threads"]))
