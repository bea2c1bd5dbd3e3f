"""Stage of notebook 02: top Hessian eigenpairs of every trained run, and smallest eigenvalue, trace and density."""
from __future__ import annotations

import numpy as np
import torch

from lib.core import hessian
from lib.core.subspace import random_basis
from lib.core.tensors import n_params
from lib.infra.config import Common, Spectrum
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.stages import folder
from lib.stages.base import cached, load, run_name, trained_run

FOLDER = folder("spectrum", "spectrum")
SUBSPACES = ("hessian", "random")


def spectrum_seeds(model: str, seeds: list[int], max_seeds: dict | None = None) -> list[int]:
    """The seeds whose spectrum the profile computes for ``model``: the first ``max_seeds[model]`` of ``seeds``
    (all of them for models not in ``max_seeds``)."""
    return list(seeds[:(max_seeds or {}).get(model, len(seeds))])


def spectrum_one(store: ResultStore, dataset: str, model: str, seed: int, section: Spectrum, *,
                 extras: bool = True, device: str = "cpu", force: bool = False) -> dict:
    """Top-k eigenpairs (Lanczos) of one trained run and, with ``extras``, its smallest eigenvalue, Hutchinson
    trace and SLQ density, all from one Hessian operator."""
    net, x, y, upstream = trained_run(store, dataset, model, seed)
    s = section
    params = {"dataset": dataset, "model": model, "seed": seed, "k_top": s.k_top, "tol": s.tol,
              "n_vectors": s.n_vectors, "trace_probes": s.trace_probes, "slq_runs": s.slq_runs,
              "slq_iter": s.slq_iter, "extras": extras, "upstream": upstream}
    name = run_name(dataset, model, seed)

    def compute():
        dev = resolve_device(device)
        op = hessian.HessianOperator(net.to(dev), x.to(dev), y.to(dev))
        top = hessian.top_eigenpairs(op, s.k_top, method="lanczos", tol=s.tol, seed=seed)
        payload = {
            "eigenvalues": top.eigenvalues.double().cpu(), "residuals": top.residuals.double().cpu(),
            "eigenvectors": top.eigenvectors[:s.n_vectors].float().cpu(), "hvp_counts": {"top": top.hvp_count},
            "smallest": None, "trace": None,
        }
        summary = {"dataset": dataset, "model": model, "seed": seed, "n_params": n_params(net),
                   "lambda_1": float(top.eigenvalues[0]), f"lambda_{s.k_top}": float(top.eigenvalues[-1]),
                   "max_residual": float(top.residuals.max()), "hvp_top": top.hvp_count,
                   "solver_seconds": {"top": top.seconds}}
        if extras:
            low = hessian.smallest_eigenvalue(op, tol=s.tol, seed=seed)
            tr = hessian.trace(op, n_probes=s.trace_probes, seed=seed)
            dens = hessian.density(op, n_runs=s.slq_runs, n_iter=s.slq_iter, seed=seed, n_grid=2000)
            payload.update({
                "smallest": low.value, "smallest_residual": low.residual,
                "trace": tr.estimate, "trace_stderr": tr.stderr, "trace_samples": tr.samples,
                "slq_nodes": dens.nodes, "slq_weights": dens.weights, "grid": dens.grid, "density": dens.density})
            payload["hvp_counts"].update({"smallest": low.hvp_count, "trace": tr.hvp_count, "density": dens.hvp_count})
            summary.update({"lambda_min": low.value, "trace": tr.estimate, "trace_stderr": tr.stderr})
            summary["solver_seconds"].update({"smallest": low.seconds, "density": dens.seconds})
        return payload, summary

    summary, skipped = cached(store, FOLDER, name, params, compute, force=force)
    return {**summary, "name": name, "skipped": skipped}


def run(store: ResultStore, common: Common, section: Spectrum) -> list[dict]:
    """The spectrum of every (dataset, model) for the seeds ``spectrum_max_seeds`` allows; extras for the first
    ``full_seeds`` seeds."""
    rows = []
    for ds in common.datasets:
        for m in common.models:
            for s in spectrum_seeds(m, common.seeds, common.spectrum_max_seeds):
                row = spectrum_one(store, ds, m, s, section, extras=s in common.seeds[:section.full_seeds],
                                   device=common.device)
                rows.append(row)
                print(f"{row['name']}: {'skipped' if row['skipped'] else 'computed'} in {row['seconds']:.1f} s",
                      flush=True)
    return rows


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
