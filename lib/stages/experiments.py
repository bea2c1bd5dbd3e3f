"""Stages of notebooks 03 (projection) and 04 (Monte Carlo with the quadratic prediction).

Every curve of a profile is one ``CurveSpec``; ``monte_carlo_plan`` expands a profile's ``monte_carlo`` section
into the list of specs (main comparison, sigma sweep, D sweep, distributions, estimators), ``run_curve`` computes
one (skipping it when an identical result exists) and ``load_curve`` reads it back for later notebooks.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lib.core import models as model_zoo
from lib.stages.pipeline import cached, load_spectrum, run_name, trained_run
from lib.infra.results import ResultStore

PROJECTION_STAGE = "projection"
TERMS_STAGE = "terms"
CURVE_STAGE = "curves"
SUBSPACES = ("hessian", "random")
GROUPS = ("main", "sigma", "dim", "distribution", "estimator")


# ------------------------------------------------------------------------------------------------ bases
def basis_for(store: ResultStore, dataset: str, model: str, seed: int, subspace: str, D: int,
              n_params: int) -> tuple[torch.Tensor, np.ndarray | None, dict]:
    """(D, n_params) basis, the top-D eigenvalues (Hessian subspace) and the upstream identity."""
    if subspace == "hessian":
        spec = load_spectrum(store, dataset, model, seed)
        vecs = spec["eigenvectors"]
        if D > vecs.shape[0]:
            raise ValueError(f"D={D} exceeds the {vecs.shape[0]} eigenvectors saved by 02_spectrum; "
                             f"raise spectrum.n_vectors (and k_top) to at least {D}")
        meta = store.meta("spectrum", run_name(dataset, model, seed))
        return vecs[:D].clone(), spec["eigenvalues"][:D].numpy(), {f"spectrum/{meta['name']}": meta["sha256"]}
    if subspace == "random":
        from lib.core.subspace import random_basis

        return random_basis(n_params, D, seed=seed), None, {}
    raise ValueError(f"unknown subspace {subspace!r}; allowed: {list(SUBSPACES)}")


# ------------------------------------------------------------------------------------------- projection
def projection_one(store: ResultStore, dataset: str, model: str, seed: int, *, grid_points: int,
                   hessian_span: float, random_span: float, k_small: int, device: str = "cpu",
                   progress: bool = True) -> dict:
    """L_k on the plane of the top-2 Hessian eigenvectors and of two filter-normalised random directions.

    For each grid point (a, b): L_k(w* + a u + b v) for k = k_small, k_small + 1, N - 1, N; saved as grids.
    """
    from lib.infra.device import resolve_device
    from lib.core.subspace import filter_normalized_directions, per_sample_losses

    net, x, y, upstream = trained_run(store, dataset, model, seed)
    N = len(x)
    if not 1 <= k_small < N - 1:
        raise ValueError(f"k_small={k_small} must be in [1, N-2] with N={N}")
    if grid_points < 3:
        raise ValueError(f"grid_points={grid_points} must be >= 3")
    hess, _, up_h = basis_for(store, dataset, model, seed, "hessian", 2, model_zoo.n_params(net))
    params = {"dataset": dataset, "model": model, "seed": seed, "grid_points": grid_points,
              "hessian_span": hessian_span, "random_span": random_span, "k_small": k_small,
              "upstream": {**upstream, **up_h}}

    def compute():
        dev = resolve_device(device)
        netd, xd, yd = net.to(dev), x.to(dev), y.to(dev)
        ks = [k_small, k_small + 1, N - 1, N]
        out = {"k": ks, "N": N}
        planes = {"hessian": (hess, hessian_span), "filter_normalized": (
            filter_normalized_directions(net, n=2, seed=seed), random_span)}
        for label, (directions, span) in planes.items():
            axis = torch.linspace(-span, span, grid_points, dtype=torch.float64)
            a, b = torch.meshgrid(axis, axis, indexing="ij")
            thetas = torch.stack([a.flatten(), b.flatten()], 1)
            losses = per_sample_losses(netd, xd, yd, directions.to(dev), thetas.to(dev),
                                       progress=progress).double().cpu()        # (G, N)
            prefix = torch.cumsum(losses, 1)
            grids = {f"L_{k}": (prefix[:, k - 1] / k).reshape(grid_points, grid_points).numpy() for k in ks}
            out[label] = {"axis": axis.numpy(), **grids}
        return out, {"dataset": dataset, "model": model, "seed": seed, "N": N, "grid_points": grid_points}

    summary, skipped = cached(store, PROJECTION_STAGE, run_name(dataset, model, seed), params, compute)
    return {**summary, "name": run_name(dataset, model, seed), "skipped": skipped}


def load_projection(store: ResultStore, dataset: str, model: str, seed: int) -> dict:
    return store.load(PROJECTION_STAGE, run_name(dataset, model, seed), made_by="notebooks/03_projection.py").payload


# ------------------------------------------------------------------------------------------ curve specs
@dataclass(frozen=True)
class CurveSpec:
    dataset: str
    model: str
    seed: int
    subspace: str
    D: int
    distribution: str
    sigma: float            # gaussian/ball/sphere: sigma; curvature: eps is matched to gaussian(sigma)
    estimator: str
    n_samples: int
    n_orders: int
    theory: bool

    @property
    def name(self) -> str:
        key = json.dumps(asdict(self), sort_keys=True)
        return (f"{run_name(self.dataset, self.model, self.seed)}_{self.subspace}_D{self.D}_{self.distribution}"
                f"_s{self.sigma:g}_{self.estimator}_T{self.n_samples}_"
                + hashlib.sha1(key.encode()).hexdigest()[:8])


def monte_carlo_plan(datasets, models, seeds, *, D: int, sigma: float, n_samples: int, n_orders: int,
                     sweep_datasets, sweep_models, sweep_samples: int, sigmas, dims, distributions, estimators,
                     theory_max_D: int) -> list[tuple[str, CurveSpec]]:
    """Every (group, curve) of a profile; a curve shared by several groups is listed once per group."""
    seed = seeds[0]

    def spec(ds, m, subspace, D_=D, dist="gaussian", sig=sigma, est="plain", T=sweep_samples, R=0):
        return CurveSpec(ds, m, seed, subspace, D_, dist, float(sig), est, T, R, D_ <= theory_max_D)

    plan = []
    for ds in datasets:
        for m in models:
            for sub in SUBSPACES:
                plan.append(("main", spec(ds, m, sub, T=n_samples, R=n_orders)))
    for ds in sweep_datasets:
        for m in sweep_models:
            for sub in SUBSPACES:
                plan += [("sigma", spec(ds, m, sub, sig=s, R=n_orders)) for s in sigmas]
            plan += [("dim", spec(ds, m, "hessian", D_=d)) for d in dims]
            plan += [("distribution", spec(ds, m, "hessian", dist=dist)) for dist in distributions]
            plan += [("estimator", spec(ds, m, "hessian", est=e)) for e in estimators]
    return plan


def _sampler(spec: CurveSpec, eigenvalues: np.ndarray | None):
    from lib.core.sampling import make_sampler

    if spec.distribution == "curvature":
        if eigenvalues is None:
            raise ValueError("the curvature distribution needs the Hessian subspace (its eigenvalues)")
        # equal expected quadratic loss rise as gaussian(sigma): eps = sigma^2/2 * sum(lambda_d)
        eps = 0.5 * spec.sigma ** 2 * float(np.sum(eigenvalues))
        return make_sampler("curvature", eps=eps, eigenvalues=eigenvalues)
    return make_sampler(spec.distribution, sigma=spec.sigma)


def per_sample_terms_cached(store: ResultStore, spec: CurveSpec, net, x, y, basis, upstream: dict,
                            device: str = "cpu"):
    """(a_i, b_i, C_i) of one (run, subspace, D), computed once and kept in the ``terms`` stage."""
    from lib.infra.device import resolve_device
    from lib.core.quadratic import PerSampleTerms, per_sample_terms

    name = f"{run_name(spec.dataset, spec.model, spec.seed)}_{spec.subspace}_D{spec.D}"
    params = {"dataset": spec.dataset, "model": spec.model, "seed": spec.seed, "subspace": spec.subspace,
              "D": spec.D, "upstream": upstream}

    def compute():
        dev = resolve_device(device)
        t = per_sample_terms(net.to(dev), x.to(dev), y.to(dev), basis.to(dev))
        payload = {"a": t.a.double().cpu(), "b": t.b.double().cpu(), "C": t.C.double().cpu(), "method": t.method}
        return payload, {"N": t.N, "D": t.D, "method": t.method}

    cached(store, TERMS_STAGE, name, params, compute)
    p = store.load(TERMS_STAGE, name).payload
    return PerSampleTerms(a=p["a"], b=p["b"], C=p["C"], method=p["method"])


def run_curve(store: ResultStore, spec: CurveSpec, *, device: str = "cpu", progress: bool = True,
              context: dict | None = None) -> dict:
    """Monte-Carlo Delta_k of one spec (+ Q_k, T_k and V-bar parts when ``spec.theory``)."""
    from lib.infra.device import resolve_device
    from lib.core.montecarlo import delta_curve
    from lib.core.quadratic import delta_quadratic, delta_theorem1, variance_quadratic

    context = context if context is not None else {}
    key = (spec.dataset, spec.model, spec.seed)
    if key not in context:
        context.clear()
        context[key] = trained_run(store, *key)
    net, x, y, upstream = context[key]
    basis, eigenvalues, up_basis = basis_for(store, *key, spec.subspace, spec.D, model_zoo.n_params(net))
    sampler = _sampler(spec, eigenvalues)
    params = {**asdict(spec), "upstream": {**upstream, **up_basis}}

    def compute():
        dev = resolve_device(device)
        t0 = time.perf_counter()
        curve = delta_curve(net.to(dev), x.to(dev), y.to(dev), basis.to(dev), sampler, spec.n_samples,
                            estimator=spec.estimator, seed=spec.seed, n_orders=spec.n_orders, progress=progress)
        payload = {f: getattr(curve, f) for f in (
            "k", "delta", "stderr", "centred", "centred_stderr", "d0sq", "losses0", "v0", "vbar", "vbar_stderr",
            "n_samples", "n_units", "n_forward", "N", "D", "order_mean", "order_median", "order_stderr",
            "order_formula")}
        mc_seconds = time.perf_counter() - t0
        payload["eigenvalues"] = eigenvalues
        payload["sampler_params"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                     for k, v in sampler.params().items()}
        if spec.theory:
            t1 = time.perf_counter()
            terms = per_sample_terms_cached(store, spec, net, x, y, basis, params["upstream"], device)
            q = delta_quadratic(terms, sampler)
            parts = variance_quadratic(terms, sampler)
            payload.update({"Q": q.Q, "Q_centred": q.centred, "Q_grad": q.grad_part, "Q_cross": q.cross_part,
                            "Q_curv": q.curv_part,
                            "T": delta_theorem1(terms, spec.sigma) if sampler.isotropic else None,
                            "vbar_quadratic": asdict(parts) | {"s": str(parts.s), "m": str(parts.m)}})
        summary = {"vbar": curve.vbar, "vbar_stderr": curve.vbar_stderr, "mc_seconds": mc_seconds,
                   "seconds_per_theta": mc_seconds / curve.n_forward,
                   "theory_seconds": time.perf_counter() - t1 if spec.theory else None}
        return payload, summary

    summary, skipped = cached(store, CURVE_STAGE, spec.name, params, compute)
    return {**asdict(spec), **summary, "name": spec.name, "skipped": skipped}


def load_curve(store: ResultStore, spec: CurveSpec) -> dict:
    """A saved curve; MissingResultError says to run 04_monte_carlo."""
    return store.load(CURVE_STAGE, spec.name, made_by="notebooks/04_monte_carlo.py").payload


PLAN_STAGE = "plan"


def save_plan(store: ResultStore, plan: list[tuple[str, CurveSpec]], params: dict) -> None:
    """Record the profile's curve plan so later notebooks read exactly the curves 04 computed."""
    store.save(PLAN_STAGE, "monte_carlo", {"plan": [[g, asdict(s)] for g, s in plan]}, params, ext="json")


def load_plan(store: ResultStore) -> list[tuple[str, CurveSpec]]:
    p = store.load(PLAN_STAGE, "monte_carlo", made_by="notebooks/04_monte_carlo.py").payload
    return [(g, CurveSpec(**s)) for g, s in p["plan"]]


def group(plan: list[tuple[str, CurveSpec]], name: str) -> list[CurveSpec]:
    return [s for g, s in plan if g == name]


def load_terms(store: ResultStore, spec: CurveSpec):
    """The per-sample (a_i, b_i, C_i) saved for a curve's (run, subspace, D)."""
    from lib.core.quadratic import PerSampleTerms

    name = f"{run_name(spec.dataset, spec.model, spec.seed)}_{spec.subspace}_D{spec.D}"
    p = store.load(TERMS_STAGE, name, made_by="notebooks/04_monte_carlo.py").payload
    return PerSampleTerms(a=p["a"], b=p["b"], C=p["C"], method=p["method"])
