"""Stage functions the notebooks call: loop over a profile's runs, skip what is done, save with provenance.

Each stage reads its inputs from the ``ResultStore`` of the profile and writes results there; the
notebooks only choose parameters, call these functions and plot.
"""
from __future__ import annotations

import itertools
import time

import torch

from lib.infra import data

from lib.core import models
from lib.infra.results import ResultStore
from lib.core.train import check_recipe, evaluate, train

TRAIN_STAGE = "train"
SPECTRUM_STAGE = "spectrum"


def cached(store: ResultStore, stage: str, name: str, params: dict, compute, *, ext: str = "pt",
           force: bool = False) -> tuple[dict, bool]:
    """Return ``(summary, skipped)``: reuse an intact result with identical params, else run ``compute()``.

    ``compute`` returns ``(payload, summary)``; it is saved with its wall time and provenance.
    """
    if not force and store.is_done(stage, name, params):
        return store.meta(stage, name)["summary"], True
    t0 = time.perf_counter()
    payload, summary = compute()
    seconds = time.perf_counter() - t0
    store.save(stage, name, payload, params, ext=ext, seconds=seconds, summary={**summary, "seconds": seconds})
    return {**summary, "seconds": seconds}, False


def run_name(dataset: str, model: str, seed: int) -> str:
    return f"{dataset}_{model}_s{seed}"


def training_params(dataset: str, model: str, seed: int, n_train: int, data_seed: int, epochs: int,
                    batch_size: int, lr: float) -> dict:
    """The parameters that define a trained model (its identity in the result store)."""
    return {"dataset": dataset, "model": model, "seed": seed, "n_train": n_train, "data_seed": data_seed,
            "epochs": epochs, "batch_size": batch_size, "lr": lr}


def train_one(store: ResultStore, params: dict, *, device: str = "cpu", progress: bool = True,
              force: bool = False, stage: str = TRAIN_STAGE, name: str | None = None) -> dict:
    """Train one (dataset, model, seed) on the first ``n_train`` samples of the insertion order unless an
    identical result exists; return its summary row. ``stage``/``name`` place extra runs (learning curves,
    validation at K) apart from the main trained models."""
    name = name or run_name(params["dataset"], params["model"], params["seed"])

    def compute():
        x, y = data.training_subset(params["dataset"], params["n_train"], params["data_seed"])
        net = models.build(params["model"], params["seed"])
        hist = train(net, x, y, epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
                     seed=params["seed"], device=device, progress=progress)
        xt, yt = data.load(params["dataset"], "test")
        on_train, on_test = evaluate(net, x, y, device=device), evaluate(net, xt, yt, device=device)
        summary = {
            "dataset": params["dataset"], "model": params["model"], "seed": params["seed"],
            "n_params": models.n_params(net), "n_train": params["n_train"],
            "train_loss": on_train["loss"], "train_accuracy": on_train["accuracy"],
            "test_loss": on_test["loss"], "test_accuracy": on_test["accuracy"],
            "epoch_loss": hist.epoch_loss, "train_seconds": hist.seconds,
        }
        payload = {"model": params["model"], "state_dict": {k: v.cpu() for k, v in net.state_dict().items()}}
        return payload, summary

    summary, skipped = cached(store, stage, name, params, compute, force=force)
    return {**summary, "name": name, "skipped": skipped}


def run_training(store: ResultStore, *, datasets, models_, seeds, n_train, data_seed, epochs, batch_size, lr,
                 device="cpu", progress=True) -> list[dict]:
    """Train every (dataset, model, seed) combination of a profile; returns one summary row each."""
    check_recipe(epochs, batch_size, lr)
    for ds in datasets:
        data.spec(ds)
    unknown = [m for m in models_ if m not in models.MODELS]
    if unknown:  # fail before any training
        raise ValueError(f"unknown model(s) {unknown}; allowed: {list(models.MODELS)}")
    rows = []
    combos = list(itertools.product(datasets, models_, seeds))
    for ds, m, s in combos:
        t0 = time.perf_counter()
        row = train_one(store, training_params(ds, m, s, n_train, data_seed, epochs, batch_size, lr),
                        device=device, progress=progress)
        row["wall_seconds"] = time.perf_counter() - t0
        rows.append(row)
        state = "skipped (already trained with identical parameters)" if row["skipped"] else "trained"
        print(f"{row['name']}: {state}; test accuracy {row['test_accuracy']:.4f}", flush=True)
    return rows


def load_trained(store: ResultStore, dataset: str, model: str, seed: int,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, dict]:
    """The trained model (eval mode) and its meta record; MissingResultError says to run 01_train."""
    name = run_name(dataset, model, seed)
    res = store.load(TRAIN_STAGE, name, made_by="notebooks/01_train.py")
    net = models.build(res.payload["model"], seed)
    net.load_state_dict(res.payload["state_dict"])
    return net.to(dtype).eval(), res.meta


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (floats with 4 significant digits)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def trained_run(store: ResultStore, dataset: str, model: str, seed: int, dtype: torch.dtype = torch.float32):
    """Trained model, its training data in insertion order, and the upstream identity for downstream params."""
    net, meta = load_trained(store, dataset, model, seed, dtype=dtype)
    x, y = data.training_subset(dataset, meta["params"]["n_train"], meta["params"]["data_seed"])
    upstream = {f"{TRAIN_STAGE}/{meta['name']}": meta["sha256"]}
    return net, x.to(dtype), y, upstream


def spectrum_one(store: ResultStore, dataset: str, model: str, seed: int, *, k_top: int, tol: float,
                 n_vectors: int, trace_probes: int, slq_runs: int, slq_iter: int, extras: bool = True,
                 device: str = "cpu", force: bool = False) -> dict:
    """Top-k eigenpairs (Lanczos) of one trained run and, with ``extras``, its smallest eigenvalue, Hutchinson
    trace and SLQ density (the notebook computes extras for the first ``full_seeds`` seeds only)."""
    from lib.core import hessian
    from lib.infra.device import resolve_device

    net, x, y, upstream = trained_run(store, dataset, model, seed)
    if not 1 <= n_vectors <= k_top:
        raise ValueError(f"n_vectors={n_vectors} must be in [1, k_top={k_top}]")
    params = {"dataset": dataset, "model": model, "seed": seed, "k_top": k_top, "tol": tol,
              "n_vectors": n_vectors, "trace_probes": trace_probes, "slq_runs": slq_runs, "slq_iter": slq_iter,
              "extras": extras, "upstream": upstream}
    name = run_name(dataset, model, seed)

    def compute():
        dev = resolve_device(device)
        netd, xd, yd = net.to(dev), x.to(dev), y.to(dev)
        top = hessian.top_eigenpairs(netd, xd, yd, k_top, method="lanczos", tol=tol, seed=seed)
        payload = {
            "eigenvalues": top.eigenvalues.double().cpu(), "residuals": top.residuals.double().cpu(),
            "eigenvectors": top.eigenvectors[:n_vectors].float().cpu(), "hvp_counts": {"top": top.hvp_count},
            "smallest": None, "trace": None,
        }
        summary = {"dataset": dataset, "model": model, "seed": seed, "n_params": models.n_params(net),
                   "lambda_1": float(top.eigenvalues[0]), f"lambda_{k_top}": float(top.eigenvalues[-1]),
                   "max_residual": float(top.residuals.max()), "hvp_top": top.hvp_count,
                   "solver_seconds": {"top": top.seconds}}
        if extras:
            low = hessian.smallest_eigenvalue(netd, xd, yd, tol=tol, seed=seed)
            tr = hessian.trace(netd, xd, yd, n_probes=trace_probes, seed=seed)
            dens = hessian.density(netd, xd, yd, n_runs=slq_runs, n_iter=slq_iter, seed=seed, n_grid=2000)
            payload.update({
                "smallest": low.value, "smallest_residual": low.residual,
                "trace": tr.estimate, "trace_stderr": tr.stderr, "trace_samples": tr.samples,
                "slq_nodes": dens.nodes, "slq_weights": dens.weights, "grid": dens.grid, "density": dens.density})
            payload["hvp_counts"].update({"smallest": low.hvp_count, "trace": tr.hvp_count, "density": dens.hvp_count})
            summary.update({"lambda_min": low.value, "trace": tr.estimate, "trace_stderr": tr.stderr})
            summary["solver_seconds"].update({"smallest": low.seconds, "density": dens.seconds})
        return payload, summary

    summary, skipped = cached(store, SPECTRUM_STAGE, name, params, compute, force=force)
    return {**summary, "name": name, "skipped": skipped}


def spectrum_seeds(model: str, seeds: list[int], max_seeds: dict | None = None) -> list[int]:
    """The seeds whose spectrum the profile computes for ``model``: the first ``max_seeds[model]`` of ``seeds``
    (all of them for models not in ``max_seeds``)."""
    return list(seeds[:(max_seeds or {}).get(model, len(seeds))])


def load_spectrum(store: ResultStore, dataset: str, model: str, seed: int) -> dict:
    """The saved spectrum of one run; MissingResultError says to run 02_spectrum."""
    return store.load(SPECTRUM_STAGE, run_name(dataset, model, seed), made_by="notebooks/02_spectrum.py").payload
