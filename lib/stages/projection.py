"""Stage of notebook 03: L_k on the plane of the top-2 Hessian eigenvectors and of two random directions."""
from __future__ import annotations

import torch

from lib.core.landscape.subspace import filter_normalized_directions, per_sample_losses
from lib.core.tensors import n_params
from lib.infra.config import Common, Projection
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.records.projection import FOLDER
from lib.records.runs import run_name, trained_run
from lib.records.spectrum import basis_for
from lib.stages.base import cached


def projection_one(store: ResultStore, dataset: str, model: str, seed: int, section: Projection, *,
                   device: str = "cpu", progress: bool = True) -> dict:
    """For each grid point (a, b): L_k(w* + a u + b v) for k = k_small, k_small + 1, N - 1, N; saved as grids."""
    net, x, y, upstream = trained_run(store, dataset, model, seed)
    N = len(x)
    s = section
    if not 1 <= s.k_small < N - 1:
        raise ValueError(f"projection.k_small={s.k_small} must be in [1, N-2] with N={N}")
    hess, _, up_h = basis_for(store, dataset, model, seed, "hessian", 2, n_params(net))
    params = {"dataset": dataset, "model": model, "seed": seed, "grid_points": s.grid_points,
              "hessian_span": s.hessian_span, "random_span": s.random_span, "k_small": s.k_small,
              "upstream": {**upstream, **up_h}}

    def compute():
        dev = resolve_device(device)
        netd, xd, yd = net.to(dev), x.to(dev), y.to(dev)
        ks = [s.k_small, s.k_small + 1, N - 1, N]
        out = {"k": ks, "N": N}
        planes = {"hessian": (hess, s.hessian_span), "filter_normalized": (
            filter_normalized_directions(net, n=2, seed=seed), s.random_span)}
        for label, (directions, span) in planes.items():
            axis = torch.linspace(-span, span, s.grid_points, dtype=torch.float64)
            a, b = torch.meshgrid(axis, axis, indexing="ij")
            thetas = torch.stack([a.flatten(), b.flatten()], 1)
            losses = per_sample_losses(netd, xd, yd, directions.to(dev), thetas.to(dev),
                                       progress=progress).double().cpu()        # (G, N)
            prefix = torch.cumsum(losses, 1)
            grids = {f"L_{k}": (prefix[:, k - 1] / k).reshape(s.grid_points, s.grid_points).numpy() for k in ks}
            out[label] = {"axis": axis.numpy(), **grids}
        return out, {"dataset": dataset, "model": model, "seed": seed, "N": N, "grid_points": s.grid_points}

    name = run_name(dataset, model, seed)
    summary, skipped = cached(store, FOLDER, name, params, compute)
    return {**summary, "name": name, "skipped": skipped}


def run(store: ResultStore, common: Common, section: Projection) -> list[dict]:
    """The surfaces of every (dataset, model) of the stage, for the first seed."""
    return [projection_one(store, ds, m, common.seeds[0], section, device=common.device, progress=common.progress)
            for ds in common.datasets for m in common.models]
