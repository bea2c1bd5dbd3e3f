"""Stage of notebook 04: every Monte-Carlo Delta_k curve of the profile, with the quadratic prediction.

Every curve is one ``CurveSpec``; ``plan`` expands the profile into specs (main comparison, sigma sweep, D sweep,
distributions, estimators), ``run_curve`` computes one (skipping it when an identical result exists) and
``load_curve`` reads it back for later stages.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from lib.core.montecarlo import delta_curve
from lib.core.quadratic import PerSampleTerms, delta_quadratic, delta_theorem1, per_sample_terms, variance_quadratic
from lib.core.sampling import Sampler, make_sampler
from lib.core.tensors import n_params
from lib.infra.config import Common, MonteCarlo
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.stages import folder
from lib.stages.base import cached, load, run_name, trained_run
from lib.stages.spectrum import SUBSPACES, basis_for

CURVES = folder("monte_carlo", "curves")
TERMS = folder("monte_carlo", "terms")
PLAN = folder("monte_carlo", "plan")
GROUPS = ("main", "sigma", "dim", "distribution", "estimator")
CURVE_FIELDS = ("k", "delta", "stderr", "centred", "centred_stderr", "d0sq", "losses0", "v0", "vbar", "vbar_stderr",
                "n_samples", "n_units", "n_forward", "N", "D", "order_mean", "order_median", "order_stderr",
                "order_formula")


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

    @property
    def terms_name(self) -> str:
        return f"{run_name(self.dataset, self.model, self.seed)}_{self.subspace}_D{self.D}"


def plan(common: Common, section: MonteCarlo) -> list[tuple[str, CurveSpec]]:
    """Every (group, curve) of a profile; a curve shared by several groups is listed once per group."""
    mc, seed = section, common.seeds[0]

    def spec(ds, m, subspace, D=mc.D, dist="gaussian", sig=mc.sigma, est="plain", T=mc.sweep_samples, R=0):
        return CurveSpec(ds, m, seed, subspace, D, dist, float(sig), est, T, R, D <= mc.theory_max_D)

    out = []
    for ds in common.datasets:
        for m in common.models:
            for sub in SUBSPACES:
                out.append(("main", spec(ds, m, sub, T=mc.n_samples, R=mc.n_orders)))
    for ds in mc.sweep_datasets:
        for m in mc.sweep_models:
            for sub in SUBSPACES:
                out += [("sigma", spec(ds, m, sub, sig=s, R=mc.n_orders)) for s in mc.sigmas]
            out += [("dim", spec(ds, m, "hessian", D=d)) for d in mc.dims]
            out += [("distribution", spec(ds, m, "hessian", dist=dist)) for dist in mc.distributions]
            out += [("estimator", spec(ds, m, "hessian", est=e)) for e in mc.estimators]
    return out


def sampler_for(spec: CurveSpec, eigenvalues: np.ndarray | None) -> Sampler:
    """The theta distribution of a curve; the curvature distribution has the expected quadratic loss rise of
    gaussian(sigma): eps = sigma^2 / 2 * sum(lambda_d)."""
    if spec.distribution == "curvature":
        if eigenvalues is None:
            raise ValueError("the curvature distribution needs the Hessian subspace (its eigenvalues)")
        eps = 0.5 * spec.sigma ** 2 * float(np.sum(eigenvalues))
        return make_sampler("curvature", eps=eps, eigenvalues=eigenvalues)
    return make_sampler(spec.distribution, sigma=spec.sigma)


def terms_cached(store: ResultStore, spec: CurveSpec, net, x, y, basis, upstream: dict,
                 device: str = "cpu") -> PerSampleTerms:
    """(a_i, b_i, C_i) of one (run, subspace, D), computed once and kept in the ``terms`` folder."""
    params = {"dataset": spec.dataset, "model": spec.model, "seed": spec.seed, "subspace": spec.subspace,
              "D": spec.D, "upstream": upstream}

    def compute():
        dev = resolve_device(device)
        t = per_sample_terms(net.to(dev), x.to(dev), y.to(dev), basis.to(dev))
        payload = {"a": t.a.double().cpu(), "b": t.b.double().cpu(), "C": t.C.double().cpu(), "method": t.method}
        return payload, {"N": t.N, "D": t.D, "method": t.method}

    cached(store, TERMS, spec.terms_name, params, compute)
    return load_terms(store, spec)


def run_curve(store: ResultStore, spec: CurveSpec, *, device: str = "cpu", progress: bool = True,
              context: dict | None = None) -> dict:
    """Monte-Carlo Delta_k of one spec (+ Q_k, T_k and V-bar parts when ``spec.theory``). ``context`` keeps the
    last trained run loaded between calls."""
    context = context if context is not None else {}
    key = (spec.dataset, spec.model, spec.seed)
    if key not in context:
        context.clear()
        context[key] = trained_run(store, *key)
    net, x, y, upstream = context[key]
    basis, eigenvalues, up_basis = basis_for(store, *key, spec.subspace, spec.D, n_params(net))
    sampler = sampler_for(spec, eigenvalues)
    params = {**asdict(spec), "upstream": {**upstream, **up_basis}}

    def compute():
        dev = resolve_device(device)
        t0 = time.perf_counter()
        curve = delta_curve(net.to(dev), x.to(dev), y.to(dev), basis.to(dev), sampler, spec.n_samples,
                            estimator=spec.estimator, seed=spec.seed, n_orders=spec.n_orders, progress=progress)
        payload = {f: getattr(curve, f) for f in CURVE_FIELDS}
        mc_seconds = time.perf_counter() - t0
        payload["eigenvalues"] = eigenvalues
        payload["sampler_params"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                     for k, v in sampler.params().items()}
        if spec.theory:
            t1 = time.perf_counter()
            terms = terms_cached(store, spec, net, x, y, basis, params["upstream"], device)
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

    summary, skipped = cached(store, CURVES, spec.name, params, compute)
    return {**asdict(spec), **summary, "name": spec.name, "skipped": skipped}


def run(store: ResultStore, common: Common, section: MonteCarlo) -> list[dict]:
    """Every curve of the plan (each distinct curve once), then the plan itself; one row per (group, curve)."""
    curves = plan(common, section)
    print(f"{len(curves)} curves in the plan ({len({s for _, s in curves})} distinct)", flush=True)
    rows, context, done = [], {}, {}
    for grp, spec in sorted(curves, key=lambda gs: (gs[1].dataset, gs[1].model)):
        if spec not in done:
            done[spec] = run_curve(store, spec, device=common.device, progress=common.progress, context=context)
        rows.append({"group": grp, **done[spec]})
    save_plan(store, curves)
    return rows


def load_curve(store: ResultStore, spec: CurveSpec) -> dict:
    return load(store, CURVES, spec.name).payload


def load_terms(store: ResultStore, spec: CurveSpec) -> PerSampleTerms:
    """The per-sample (a_i, b_i, C_i) saved for a curve's (run, subspace, D)."""
    p = load(store, TERMS, spec.terms_name).payload
    return PerSampleTerms(a=p["a"], b=p["b"], C=p["C"], method=p["method"])


def save_plan(store: ResultStore, curves: list[tuple[str, CurveSpec]]) -> None:
    """Record the profile's curve plan so later stages read exactly the curves this stage computed."""
    store.save(PLAN, "monte_carlo", {"plan": [[g, asdict(s)] for g, s in curves]},
               {"specs": sorted(s.name for _, s in curves)}, ext="json")


def load_plan(store: ResultStore) -> list[tuple[str, CurveSpec]]:
    p = load(store, PLAN, "monte_carlo").payload
    return [(g, CurveSpec(**s)) for g, s in p["plan"]]


def group(curves: list[tuple[str, CurveSpec]], name: str) -> list[CurveSpec]:
    return [s for g, s in curves if g == name]
