"""Records of notebook 02: the spectrum and solver-comparison folders, the seeds with a spectrum, their loaders and
the subspace basis (Hessian or random) that later stages project onto."""
from __future__ import annotations

import numpy as np
import torch

from lib.core.landscape.subspace import random_basis
from lib.infra.results import ResultStore
from lib.records import folder
from lib.records.runs import load, run_name

FOLDER = folder("spectrum", "spectrum")
SOLVERS = folder("spectrum", "solvers")
SUBSPACES = ("hessian", "random")


def spectrum_seeds(model: str, seeds: list[int], max_seeds: dict | None = None) -> list[int]:
    """The seeds whose spectrum the profile computes for ``model``: the first ``max_seeds[model]`` of ``seeds``
    (all of them for models not in ``max_seeds``)."""
    return list(seeds[:(max_seeds or {}).get(model, len(seeds))])


def load_solvers(store: ResultStore, dataset: str, model: str, seed: int) -> dict:
    """The solver comparison of one run; each row's wall time (kept in the meta) joined back in."""
    res = load(store, SOLVERS, run_name(dataset, model, seed))
    seconds = {r["method"]: r["seconds"] for r in res.meta["summary"]["rows"]}
    return {"rows": [{**r, "seconds": seconds[r["method"]]} for r in res.payload["rows"]]}


def solver_runs(store: ResultStore) -> list[tuple[str, str, int]]:
    """(dataset, model, seed) of every saved solver comparison."""
    return [(m["params"]["dataset"], m["params"]["model"], int(m["params"]["seed"]))
            for m in (store.meta(SOLVERS, n) for n in store.names(SOLVERS))]


def load_spectrum(store: ResultStore, dataset: str, model: str, seed: int) -> dict:
    """The saved spectrum of one run."""
    return load(store, FOLDER, run_name(dataset, model, seed)).payload


def basis_for(store: ResultStore, dataset: str, model: str, seed: int, subspace: str, D: int,
              n_parameters: int) -> tuple[torch.Tensor, np.ndarray | None, dict]:
    """(D, n_params) basis of a subspace, its top-D eigenvalues (Hessian subspace) and the upstream identity."""
    if subspace == "hessian":
        res = load(store, FOLDER, run_name(dataset, model, seed))
        vecs = res.payload["eigenvectors"]
        if D > vecs.shape[0]:
            raise ValueError(f"D={D} exceeds the {vecs.shape[0]} eigenvectors saved by 02_spectrum; "
                             f"raise spectrum.n_vectors (and k_top) to at least {D}")
        return (vecs[:D].clone(), res.payload["eigenvalues"][:D].numpy(),
                {f"spectrum/{res.meta['name']}": res.meta["sha256"]})
    if subspace == "random":
        return random_basis(n_parameters, D, seed=seed), None, {}
    raise ValueError(f"unknown subspace {subspace!r}; allowed: {list(SUBSPACES)}")
