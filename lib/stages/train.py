"""Stage of notebook 01: train every (dataset, model, seed) of the profile at its minimum w*."""
from __future__ import annotations

import itertools

from lib.core.tensors import n_params, torch_threads
from lib.core.training import models
from lib.core.training.recipe import TRAINER, evaluate, train
from lib.infra import data
from lib.infra.config import Common, Train
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.records.runs import run_name
from lib.records.train import FOLDER
from lib.stages.base import cached, run_missing


def training_params(dataset: str, model: str, seed: int, n_train: int, data_seed: int, recipe: Train) -> dict:
    """The parameters that define a trained model (its identity in the result store)."""
    return {"dataset": dataset, "model": model, "seed": seed, "n_train": n_train, "data_seed": data_seed,
            "epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr, "threads": recipe.threads,
            "trainer": TRAINER}


def train_one(store: ResultStore, params: dict, *, device: str = "cpu", progress: bool = True,
              force: bool = False, result_folder: str = FOLDER, name: str | None = None) -> dict:
    """Train one (dataset, model, seed) on the first ``n_train`` samples of the insertion order unless an
    identical result exists; return its summary row. ``result_folder``/``name`` place extra runs (learning
    curves, validation at K) apart from the main trained models. Training and evaluation run with
    ``params["threads"]`` intra-op threads."""
    name = name or run_name(params["dataset"], params["model"], params["seed"])

    def compute():
        with torch_threads(params["threads"]):
            return _compute()

    def _compute():
        dev = resolve_device(device)
        x, y = data.training_subset(params["dataset"], params["n_train"], params["data_seed"])
        net = models.build(params["model"], params["seed"])
        hist = train(net, x, y, epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
                     seed=params["seed"], device=dev, progress=progress)
        xt, yt = data.load(params["dataset"], "test")
        on_train, on_test = evaluate(net, x, y, device=dev), evaluate(net, xt, yt, device=dev)
        summary = {
            "dataset": params["dataset"], "model": params["model"], "seed": params["seed"],
            "n_params": n_params(net), "n_train": params["n_train"],
            "train_loss": on_train["loss"], "train_accuracy": on_train["accuracy"],
            "test_loss": on_test["loss"], "test_accuracy": on_test["accuracy"],
            "epoch_loss": hist.epoch_loss, "train_seconds": hist.seconds,
        }
        payload = {"model": params["model"], "state_dict": {k: v.cpu() for k, v in net.state_dict().items()}}
        return payload, summary

    summary, skipped = cached(store, result_folder, name, params, compute, force=force)
    return {**summary, "name": name, "skipped": skipped}


def training_task(store: ResultStore, params: dict, *, device: str = "cpu", progress: bool = False,
                  result_folder: str = FOLDER, name: str | None = None) -> dict:
    """One ``train_one`` call as a ``run_missing`` task."""
    name = name or run_name(params["dataset"], params["model"], params["seed"])
    return {"folder": result_folder, "name": name, "params": params,
            "kwargs": {"store": store, "params": params, "device": device, "progress": progress,
                       "result_folder": result_folder, "name": name}}


def run(store: ResultStore, common: Common, section: Train) -> list[dict]:
    """Train every (dataset, model, seed) of the profile; one summary row each (printed as it goes)."""
    return run_missing(store, [training_task(store, training_params(ds, m, s, common.n_train, common.data_seed,
                                                                     section), device=common.device,
                                              progress=common.progress)
                                for ds, m, s in itertools.product(common.datasets, common.models, common.seeds)],
                       train_one, common.workers, report=_report, progress=common.progress, desc="trainings")


def _report(row: dict) -> None:
    row["wall_seconds"] = 0.0 if row["skipped"] else row["seconds"]
    state = "skipped (already trained with identical parameters)" if row["skipped"] else "trained"
    print(f"{row['name']}: {state}; test accuracy {row['test_accuracy']:.4f}", flush=True)
