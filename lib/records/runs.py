"""What every record shares: run names, reading a saved result (naming the command that makes a missing one) and
the trained model of a run with its training data."""
from __future__ import annotations

import shlex

import torch

from lib.core.training import models
from lib.infra import data
from lib.infra.results import Result, ResultStore, runner_context
from lib.records import writer_of


def run_name(dataset: str, model: str, seed: int) -> str:
    return f"{dataset}_{model}_s{seed}"


def rerun_command(notebook: str, profile: str) -> str:
    """The command that runs ``notebook`` with the parameters of the current run: inside the runner the same
    ``python -m lib`` command (its ``--set`` overrides included) restricted to that notebook, else ``make stage``."""
    ctx = runner_context()
    if ctx and ctx.get("set"):
        sets = " ".join(f"--set {shlex.quote(item)}" for item in ctx["set"])
        return f".venv/bin/python -m lib --profile {ctx.get('profile', profile)} --only {notebook} {sets}"
    return f"make stage STAGE={notebook} PROFILE={(ctx or {}).get('profile', profile)}"


def load(store: ResultStore, folder: str, name: str) -> Result:
    """A saved result; a missing one raises MissingResultError naming the notebook and the command that make it."""
    info = writer_of(folder)
    return store.load(folder, name, made_by=f"notebooks/{info.notebook}.py",
                      command=rerun_command(info.notebook, store.profile))


def load_trained(store: ResultStore, dataset: str, model: str, seed: int,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, dict]:
    """The trained model (eval mode) and its meta record."""
    res = load(store, "train", run_name(dataset, model, seed))
    net = models.build(res.payload["model"], seed)
    net.load_state_dict(res.payload["state_dict"])
    return net.to(dtype).eval(), res.meta


def trained_run(store: ResultStore, dataset: str, model: str, seed: int, dtype: torch.dtype = torch.float32):
    """Trained model, its training data in insertion order, and the upstream identity for downstream params."""
    net, meta = load_trained(store, dataset, model, seed, dtype=dtype)
    x, y = data.training_subset(dataset, meta["params"]["n_train"], meta["params"]["data_seed"])
    upstream = {f"train/{meta['name']}": meta["sha256"]}
    return net, x.to(dtype), y, upstream
