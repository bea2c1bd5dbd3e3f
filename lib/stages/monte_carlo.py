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
import torch

from lib.core.montecarlo import delta_curve
from lib.core.quadratic import PerSampleTerms, delta_quadratic, delta_theorem1, per_sample_terms, variance_quadratic
from lib.core.sample_size import simultaneous_multiplier, solve_increasing, suffix_max
from lib.core.sampling import Sampler, make_sampler
from lib.core.subspace import SubspaceLosses
from lib.core.surrogate import logit_jets, surrogate_curve
from lib.core.tensors import n_params
from lib.infra.config import Common, MonteCarlo
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.stages import folder
from lib.stages.base import cached, load, run_name, trained_run
from lib.stages.spectrum import SUBSPACES, basis_for, spectrum_seeds
from lib.stages.train import FOLDER as TRAINED

CURVES = folder("monte_carlo", "curves")
TERMS = folder("monte_carlo", "terms")
PLAN = folder("monte_carlo", "plan")
SCALES = folder("monte_carlo", "scales")
GROUPS = ("main", "gap", "sigma", "dim", "distribution", "estimator")
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
    scale: str = "sigma"    # "sigma": the profile's fixed sigma; "loss_gap": sigma matched to the run's loss gap

    @property
    def name(self) -> str:
        key = json.dumps(asdict(self), sort_keys=True)
        tag = "_gap" if self.scale == "loss_gap" else ""
        return (f"{run_name(self.dataset, self.model, self.seed)}_{self.subspace}_D{self.D}_{self.distribution}"
                f"_s{self.sigma:.4g}{tag}_{self.estimator}_T{self.n_samples}_"
                + hashlib.sha1(key.encode()).hexdigest()[:8])

    @property
    def terms_name(self) -> str:
        return f"{run_name(self.dataset, self.model, self.seed)}_{self.subspace}_D{self.D}"


def plan(common: Common, section: MonteCarlo, gap_sigma: dict | None = None) -> list[tuple[str, CurveSpec]]:
    """Every (group, curve) of a profile; a curve shared by several groups is listed once per group.

    ``main``: the Hessian subspace for every seed with a spectrum, the random subspace for the first seed, at the
    profile's sigma; ``gap``: the Hessian subspace at each run's loss-gap sigma (``gap_sigma[(ds, m, seed)]``);
    the sweeps use the first seed.
    """
    mc, first = section, common.seeds[0]

    def spec(ds, m, subspace, D=mc.D, dist="gaussian", sig=mc.sigma, est="plain", T=mc.sweep_samples, R=0,
             seed=first, scale="sigma"):
        return CurveSpec(ds, m, seed, subspace, D, dist, float(sig), est, T, R, D <= mc.theory_max_D, scale)

    out = []
    for ds in common.datasets:
        for m in common.models:
            for s in spectrum_seeds(m, common.seeds, common.spectrum_max_seeds):
                out.append(("main", spec(ds, m, "hessian", T=mc.n_samples, R=mc.n_orders, seed=s)))
            out.append(("main", spec(ds, m, "random", T=mc.n_samples, R=mc.n_orders)))
            for s in spectrum_seeds(m, common.seeds, common.spectrum_max_seeds) if gap_sigma is not None else ():
                out.append(("gap", spec(ds, m, "hessian", sig=gap_sigma[(ds, m, s)], T=mc.n_samples,
                                        R=mc.n_orders, seed=s, scale="loss_gap")))
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
        context[key] = trained_run(store, *key)     # the run's logit jets join it under context["jets"]
    net, x, y, upstream = context[key]
    basis, eigenvalues, up_basis = basis_for(store, *key, spec.subspace, spec.D, n_params(net))
    sampler = sampler_for(spec, eigenvalues)
    params = {**asdict(spec), "upstream": {**upstream, **up_basis}}

    def compute():
        dev = resolve_device(device)
        t0, timing = time.perf_counter(), {}
        curve = delta_curve(net.to(dev), x.to(dev), y.to(dev), basis.to(dev), sampler, spec.n_samples,
                            estimator=spec.estimator, seed=spec.seed, n_orders=spec.n_orders, progress=progress)
        payload = {f: getattr(curve, f) for f in CURVE_FIELDS}
        mc_seconds = time.perf_counter() - t0
        # uncertainty of K: every order's suffix maximum (K of any threshold), and a simultaneous band over k
        payload["order_suffix_max"] = (None if curve.order_curves is None else
                                       torch.from_numpy(suffix_max(curve.order_curves).copy()).float())
        B = curve.batch_means.shape[0]
        payload["band_se"] = curve.batch_means.std(axis=0, ddof=1) / np.sqrt(B) if B >= 3 else None
        payload["band_multiplier"] = simultaneous_multiplier(curve.batch_means, seed=spec.seed) if B >= 3 else None
        payload["n_batches"] = B
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
            # the logit-space surrogate: logits to second order in theta, exact cross-entropy, the same thetas
            jkey = (spec.subspace, spec.D)
            jets = context.setdefault("jets", {})
            if jkey not in jets:
                jets[jkey] = logit_jets(net.to(dev), x.to(dev), y.to(dev), basis.to(dev))
            t2 = time.perf_counter()
            sur = surrogate_curve(jets[jkey], sampler, spec.n_samples, estimator=spec.estimator, seed=spec.seed)
            payload.update({"surrogate": sur.delta, "surrogate_stderr": sur.stderr, "surrogate_vbar": sur.vbar})
            timing["surrogate_seconds"] = time.perf_counter() - t2 + jets[jkey].seconds   # kept out of the payload
        summary = {**timing, "vbar": curve.vbar, "vbar_stderr": curve.vbar_stderr, "mc_seconds": mc_seconds,
                   "seconds_per_theta": mc_seconds / curve.n_forward,
                   "theory_seconds": time.perf_counter() - t1 if spec.theory else None}
        return payload, summary

    summary, skipped = cached(store, CURVES, spec.name, params, compute)
    return {**asdict(spec), **summary, "name": spec.name, "skipped": skipped}


def loss_gap_sigma(store: ResultStore, dataset: str, model: str, seed: int, section: MonteCarlo, *,
                   device: str = "cpu") -> dict:
    """The sigma at which the mean training loss rise E_theta[L_N(w* + P^T sigma z)] - L_N(w*), z ~ N(0, I_D) in
    the top-D Hessian subspace, equals the run's generalisation gap (test loss - training loss at w*).

    ``gap_thetas`` common standard-normal draws, bisection in log sigma from the quadratic guess
    sqrt(2 gap / sum lambda_d). Cached in ``scales/``."""
    net, x, y, upstream = trained_run(store, dataset, model, seed)
    basis, eigenvalues, up_basis = basis_for(store, dataset, model, seed, "hessian", section.D, n_params(net))
    summary = load(store, TRAINED, run_name(dataset, model, seed)).meta["summary"]
    params = {"dataset": dataset, "model": model, "seed": seed, "D": section.D, "thetas": section.gap_thetas,
              "upstream": {**upstream, **up_basis}}

    def compute():
        dev = resolve_device(device)
        gap = float(summary["test_loss"] - summary["train_loss"])
        if not gap > 0:
            raise ValueError(f"{run_name(dataset, model, seed)}: test loss {summary['test_loss']:.4g} is not above "
                             f"the training loss {summary['train_loss']:.4g}; the loss-gap scale is undefined")
        z = make_sampler("gaussian", sigma=1.0).sample(section.gap_thetas, section.D, seed=seed + 7919)
        evaluate = SubspaceLosses(net.to(dev), x.to(dev), y.to(dev), basis.to(dev))
        base = float(evaluate(torch.zeros(1, section.D, dtype=torch.float64)).double().mean())
        calls = []

        def rise(sigma):
            calls.append(sigma)
            return float(evaluate(sigma * z).double().mean()) - base

        guess = float(np.sqrt(2 * gap / max(float(np.sum(eigenvalues)), 1e-12)))
        sigma = solve_increasing(rise, gap, guess / 4, guess * 4, rel_tol=0.02)
        payload = {"sigma": sigma, "gap": gap, "quadratic_guess": guess, "rise_at_sigma": rise(sigma),
                   "evaluations": len(calls), "train_loss": summary["train_loss"], "test_loss": summary["test_loss"]}
        return payload, payload

    summary_, _ = cached(store, SCALES, run_name(dataset, model, seed), params, compute, ext="json")
    return summary_


def gap_sigmas(store: ResultStore, common: Common, section: MonteCarlo) -> dict:
    """(dataset, model, seed) -> the loss-gap sigma (4 significant digits) of every run with a spectrum."""
    out = {}
    for ds in common.datasets:
        for m in common.models:
            for s in spectrum_seeds(m, common.seeds, common.spectrum_max_seeds):
                row = loss_gap_sigma(store, ds, m, s, section, device=common.device)
                out[(ds, m, s)] = float(f"{row['sigma']:.4g}")
                print(f"{run_name(ds, m, s)}: loss gap {row['gap']:.4f} nats -> sigma {row['sigma']:.4g} "
                      f"(quadratic guess {row['quadratic_guess']:.4g})", flush=True)
    return out


def run(store: ResultStore, common: Common, section: MonteCarlo) -> list[dict]:
    """The loss-gap scales, every curve of the plan (each distinct curve once), then the plan itself; one row per
    (group, curve)."""
    curves = plan(common, section, gap_sigmas(store, common, section) if section.gap_scale else None)
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


def main_curves(curves: list[tuple[str, CurveSpec]]) -> list[CurveSpec]:
    """The main curves of the first seed (the seed that has both a Hessian and a random-subspace curve)."""
    main = group(curves, "main")
    first = next((s.seed for s in main if s.subspace == "random"), main[0].seed if main else None)
    return [s for s in main if s.seed == first]
