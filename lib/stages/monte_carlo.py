"""Stage of notebook 04: every Monte-Carlo Delta_k curve of the profile, with the quadratic prediction.

Every curve is one ``CurveSpec`` (``lib.records.monte_carlo``, with ``load_curve`` that reads it back for later
stages); ``plan`` expands the profile into specs (main comparison, sigma sweep, D sweep, distributions,
estimators) and ``run_curve`` computes one (skipping it when an identical result exists). The ``full_space`` group
(``FullSpaceSpec``, ``full_space``) sets the full-space isotropic criterion against the top-D subspace one, with the
pointwise criterion E|L_{k+1} - L_k| from the same passes; ``closed_form_speed`` times the closed form Q_k against
Monte Carlo at equal standard error.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch

from lib.core.landscape.delta import delta_curve, full_space_curves, full_space_scale
from lib.core.landscape.quadratic import (
    PerSampleTerms,
    delta_quadratic,
    delta_theorem1,
    per_sample_terms,
    variance_quadratic,
)
from lib.core.landscape.sampling import Sampler, make_sampler
from lib.core.landscape.subspace import SubspaceLosses
from lib.core.landscape.surrogate import logit_jets, surrogate_curve
from lib.core.sample_size.sufficient import (
    BAND_METHODS,
    loss_gap_scale,
    quadratic_scale_guess,
    simultaneous_multiplier,
    suffix_max,
)
from lib.core.tensors import n_params
from lib.core.training import models
from lib.infra.config import Common, MonteCarlo
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.records.monte_carlo import (
    CURVES,
    FULL_SPACE,
    PLAN,
    SCALES,
    SPEED,
    TERMS,
    CurveSpec,
    FullSpaceSpec,
    group,
    load_curve,
    load_speed,
    load_terms,
    main_curves,
)
from lib.records.runs import load, run_name, trained_run
from lib.records.spectrum import SUBSPACES, basis_for, spectrum_seeds
from lib.records.train import FOLDER as TRAINED
from lib.stages.base import cached

CURVE_FIELDS = ("k", "delta", "stderr", "centred", "centred_stderr", "d0sq", "losses0", "v0", "vbar", "vbar_stderr",
                "n_samples", "n_units", "n_forward", "N", "D", "order_mean", "order_median", "order_stderr",
                "order_formula")


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
    params = {**asdict(spec), "band": BAND_METHODS[0], "upstream": {**upstream, **up_basis}}

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
        payload["band_multiplier"] = (simultaneous_multiplier(curve.batch_means, seed=spec.seed, method=params["band"])
                                      if B >= 3 else None)
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
                   "engine": curve.meta.get("engine"),
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

        sigma = loss_gap_scale(rise, gap, float(np.sum(eigenvalues)))
        payload = {"sigma": sigma, "gap": gap, "quadratic_guess": quadratic_scale_guess(gap, np.sum(eigenvalues)),
                   "rise_at_sigma": rise(sigma),
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
    # a run's curves one after another: its data, weights and logit jets are loaded or computed once
    for grp, spec in sorted(curves, key=lambda gs: (gs[1].dataset, gs[1].model, gs[1].seed)):
        if spec not in done:
            done[spec] = run_curve(store, spec, device=common.device, progress=common.progress, context=context)
        rows.append({"group": grp, **done[spec]})
    save_plan(store, curves)
    rows += full_space(store, common, section)
    closed_form_speed(store, curves)
    return rows


# ------------------------------------------------------------------------------------------ full space
FULL_FIELDS = ("k", "delta", "stderr", "centred", "centred_stderr", "abs_mean", "abs_stderr", "abs0", "d0sq", "vbar",
               "vbar_stderr", "n_samples", "n_units", "n_forward", "N", "D")


def full_space_plan(common: Common, section: MonteCarlo, n_of: dict) -> list[dict]:
    """The comparisons of the ``full_space`` group: for every dataset x ``full_space_models`` (first seed), the
    sigma sweep at D (``line`` "sigma") and the D sweep at sigma (``line`` "dim"), once per ``full_space_scales``
    entry; each names its subspace curve and its full-space curve (``n_of[model]`` = n parameters)."""
    mc, seed, T = section, common.seeds[0], section.full_space_samples
    pairs = [("sigma", mc.D, float(s)) for s in mc.sigmas] + [("dim", int(d), float(mc.sigma)) for d in mc.dims]
    out = []
    for ds in common.datasets:
        for m in mc.full_space_models:
            if m not in common.models:
                raise ValueError(f"monte_carlo.full_space_models={mc.full_space_models} names {m!r}, which "
                                 f"common.models={common.models} does not train; add it there or remove it here")
            for line, D, sigma in pairs:
                sub = FullSpaceSpec(ds, m, seed, "subspace", D, sigma, T)
                for scale in mc.full_space_scales:
                    s = float(f"{full_space_scale(sigma, D, n_of[m], scale):.6g}")
                    out.append({"dataset": ds, "model": m, "seed": seed, "line": line, "D": D, "sigma": sigma,
                                "scale": scale, "s": s, "subspace": asdict(sub),
                                "full": asdict(FullSpaceSpec(ds, m, seed, "full", 0, s, T))})
    return out


def run_full_space_curve(store: ResultStore, spec: FullSpaceSpec, *, device: str = "cpu", progress: bool = False,
                         context: dict | None = None, together: list[FullSpaceSpec] = ()) -> dict:
    """One curve of the ``full_space`` group (subspace or full), cached in ``full_space/``. A full-space curve that
    has to be computed is computed with every curve of ``together`` (full-space curves of the same run and T) whose
    result is missing, from the same unit draws (``full_space_curves``); their results wait in ``context`` for
    their own call."""
    context = context if context is not None else {}
    key = (spec.dataset, spec.model, spec.seed)
    if key not in context:
        context.clear()
        context[key] = trained_run(store, *key)
    net, x, y, upstream = context[key]
    if spec.kind == "subspace":
        basis, _, up_basis = basis_for(store, *key, "hessian", spec.D, n_params(net))
        upstream = {**upstream, **up_basis}
    params = {**asdict(spec), "upstream": upstream}

    def result(c, share: int = 1, total: float | None = None):
        payload = {f: getattr(c, f) for f in FULL_FIELDS}
        return payload, {"vbar": c.vbar, "mc_seconds": c.seconds, "seconds_per_theta": c.seconds / c.n_forward,
                         "scales_together": share, "together_seconds": total,
                         "median_abs_over_root_delta": float(np.median(c.abs_mean / np.sqrt(c.delta)))}

    def compute():
        dev = resolve_device(device)
        if spec.kind == "subspace":
            sampler = make_sampler("gaussian", sigma=spec.sigma)
            return result(delta_curve(net.to(dev), x.to(dev), y.to(dev), basis.to(dev), sampler, spec.n_samples,
                                      seed=spec.seed, progress=progress))
        waiting = context.setdefault("full_space_done", {})
        if spec not in waiting:
            group = [spec] + [o for o in dict.fromkeys(together) if o != spec and o.kind == "full"
                              and (o.dataset, o.model, o.seed, o.n_samples) == (*key, spec.n_samples)
                              and not store.is_done(FULL_SPACE, o.name, {**asdict(o), "upstream": upstream})]
            curves = full_space_curves(net.to(dev), x.to(dev), y.to(dev), [o.sigma for o in group],
                                       spec.n_samples, seed=spec.seed, progress=progress)
            total = sum(c.seconds for c in curves)
            waiting.update({o: result(c, len(group), total) for o, c in zip(group, curves)})
        return waiting.pop(spec)

    summary, skipped = cached(store, FULL_SPACE, spec.name, params, compute)
    return {**asdict(spec), **summary, "name": spec.name, "skipped": skipped}


def full_space(store: ResultStore, common: Common, section: MonteCarlo) -> list[dict]:
    """Every curve of the ``full_space`` group (each distinct one once; the full-space curves of a run together),
    then its plan (``plan/full_space.json``); one row per comparison: the median over k of
    Delta^(D)_k / Delta^(full)_k and the cost per theta of both."""
    n_of = {m: n_params(models.build(m, 0)) for m in section.full_space_models}
    pairs = full_space_plan(common, section, n_of)
    full_specs = [FullSpaceSpec(**p["full"]) for p in pairs]
    done, context = {}, {}
    for p in pairs:
        for kind in ("subspace", "full"):
            spec = FullSpaceSpec(**p[kind])
            if spec not in done:
                done[spec] = run_full_space_curve(store, spec, device=common.device, progress=common.progress,
                                                  context=context, together=full_specs)
    rows = []
    for p in pairs:
        sub, full = (done[FullSpaceSpec(**p[kind])] for kind in ("subspace", "full"))
        a = load(store, FULL_SPACE, sub["name"]).payload
        b = load(store, FULL_SPACE, full["name"]).payload
        ratio = a["delta"] / b["delta"]
        rows.append({"group": "full_space", **{k: p[k] for k in ("dataset", "model", "seed", "line", "D", "sigma",
                                                                    "scale", "s")},
                     "n_samples": section.full_space_samples, "median_ratio": float(np.median(ratio)),
                     "vbar_ratio": sub["vbar"] / full["vbar"] if full["vbar"] > 0 else None,
                     "seconds_per_theta": full["seconds_per_theta"],
                     "subspace_seconds_per_theta": sub["seconds_per_theta"],
                     "skipped": sub["skipped"] and full["skipped"]})
    store.save(PLAN, "full_space", {"pairs": pairs}, {"pairs": [[p["subspace"], p["full"]] for p in pairs]},
               ext="json")
    return rows


# ------------------------------------------------------------------------------------- closed form vs MC
#: the relative standard error at which Monte Carlo is compared with the closed form
TARGET_RELATIVE_SE = 0.01


def speed_row(store: ResultStore, spec: CurveSpec, group_name: str, repeats: int = 5) -> dict:
    """Closed form against Monte Carlo for one curve with a quadratic prediction: the wall time of Q_k for every k
    from the saved per-sample terms (best of ``repeats``), the one-off time of those terms (jet), the Monte-Carlo
    time of the saved curve and its relative standard error median_k SE_k / Delta_k, extrapolated as SE ~ T^-1/2 to
    the T (and time) that give ``TARGET_RELATIVE_SE``; and the median MC/Q_k (where the closed form is accurate)."""
    c = load_curve(store, spec)
    curve_meta = load(store, CURVES, spec.name).meta
    terms = load_terms(store, spec)
    sampler = sampler_for(spec, c.get("eigenvalues"))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        delta_quadratic(terms, sampler)
        times.append(time.perf_counter() - t0)
    summary = curve_meta["summary"]
    rel = float(np.median(c["stderr"] / c["delta"]))
    rel_vbar = float(c["vbar_stderr"] / c["vbar"])
    per_theta = summary["mc_seconds"] / int(c["n_forward"])
    T = int(c["n_samples"])
    T_target = T * (rel / TARGET_RELATIVE_SE) ** 2
    closed, jet = min(times), load(store, TERMS, spec.terms_name).meta["summary"]["seconds"]
    mc_target = per_theta * (T_target + 1)
    return {"group": group_name, "dataset": spec.dataset, "model": spec.model, "seed": spec.seed, "D": spec.D,
            "sigma": spec.sigma, "name": spec.name, "n_samples": T, "mc_seconds": summary["mc_seconds"],
            "seconds_per_theta": per_theta,
            "relative_se": rel, "relative_se_vbar": rel_vbar, "T_target": T_target,
            "T_target_vbar": T * (rel_vbar / TARGET_RELATIVE_SE) ** 2, "mc_seconds_target": mc_target,
            "closed_seconds": closed, "jet_seconds": jet, "speedup": mc_target / closed,
            "speedup_with_jet": mc_target / (closed + jet),
            "median_mc_over_q": float(np.median(c["delta"] / c["Q"]))}


def speed_specs(curves: list[tuple[str, CurveSpec]]) -> list[tuple[str, CurveSpec]]:
    """(group, curve) of the speed comparison: the main Hessian curves with a quadratic prediction (first seed, the
    profile's sigma) and the Hessian curves of the sigma sweep (the accuracy of Q_k across sigma)."""
    main = [("main", s) for s in main_curves(curves) if s.subspace == "hessian" and s.theory and s.scale == "sigma"]
    sweep = [("sigma", s) for s in group(curves, "sigma") if s.subspace == "hessian" and s.theory]
    return main + sweep


def closed_form_speed(store: ResultStore, curves: list[tuple[str, CurveSpec]]) -> list[dict]:
    """``speed_row`` of every ``speed_specs`` curve, cached in ``speed/closed_form.json`` (remeasured only when a
    curve or its terms change)."""
    specs = speed_specs(curves)
    params = {"curves": [[g, s.name, store.meta(CURVES, s.name)["sha256"]] for g, s in specs],
              "terms": {s.terms_name: store.meta(TERMS, s.terms_name)["sha256"] for _, s in specs}}

    def compute():
        rows = [speed_row(store, s, g) for g, s in specs]
        return {"rows": rows}, {"n": len(rows)}

    cached(store, SPEED, "closed_form", params, compute, ext="json")
    return load_speed(store)


def save_plan(store: ResultStore, curves: list[tuple[str, CurveSpec]]) -> None:
    """Record the profile's curve plan so later stages read exactly the curves this stage computed."""
    store.save(PLAN, "monte_carlo", {"plan": [[g, asdict(s)] for g, s in curves]},
               {"specs": sorted(s.name for _, s in curves)}, ext="json")
