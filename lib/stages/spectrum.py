"""Stage of notebook 02: top Hessian eigenpairs of every trained run, and smallest eigenvalue, trace and density."""
from __future__ import annotations

import numpy as np

from lib.core import hessian
from lib.core.hessian import pyhessian as pyhessian_fixed
from lib.core.tensors import n_params
from lib.infra.config import Common, Spectrum
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.records.runs import run_name, trained_run
from lib.records.spectrum import FOLDER, SOLVERS, spectrum_seeds
from lib.stages.base import cached


def spectrum_one(store: ResultStore, dataset: str, model: str, seed: int, section: Spectrum, *,
                 extras: bool = True, device: str = "cpu", force: bool = False) -> dict:
    """Top-k eigenpairs (Lanczos) of one trained run and, with ``extras``, its smallest eigenvalue, trace (by
    ``section.trace_estimator``; where PyHessian's trace is compared, also our Hutchinson on its probes) and SLQ
    density, all from one Hessian operator."""
    net, x, y, upstream = trained_run(store, dataset, model, seed)
    s = section
    params = {"dataset": dataset, "model": model, "seed": seed, "k_top": s.k_top, "tol": s.tol,
              "n_vectors": s.n_vectors, "trace_probes": s.trace_probes,
              "trace_estimator": s.trace_estimator, "slq_runs": s.slq_runs,
              "slq_iter": s.slq_iter, "extras": extras,
              "pyhessian_density": s.pyhessian_density and extras and dataset in s.solver_datasets,
              "upstream": upstream}
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
            tr = hessian.estimate_trace(op, s.trace_estimator, s.trace_probes, eigenpairs=top, seed=seed)
            dens = hessian.density(op, n_runs=s.slq_runs, n_iter=s.slq_iter, seed=seed, n_grid=2000)
            payload.update({
                "smallest": low.value, "smallest_residual": low.residual,
                "trace": tr.estimate, "trace_stderr": tr.stderr, "trace_samples": tr.samples,
                "trace_estimator": tr.method, "trace_exact_part": tr.exact_part, "trace_rank": tr.rank,
                "slq_nodes": dens.nodes, "slq_weights": dens.weights, "grid": dens.grid, "density": dens.density})
            payload["hvp_counts"].update({"smallest": low.hvp_count, "trace": tr.hvp_count, "density": dens.hvp_count})
            summary.update({"lambda_min": low.value, "trace": tr.estimate, "trace_stderr": tr.stderr})
            summary["solver_seconds"].update({"smallest": low.seconds, "density": dens.seconds,
                                              "trace": tr.seconds})
            if params["pyhessian_density"]:   # PyHessian's own SLQ and Hutchinson loop on the same probes
                cmp = pyhessian_fixed.compare_density(net.to(dev), x.to(dev), y.to(dev), n_iter=s.slq_iter,
                                                      n_runs=s.slq_runs, seed=seed, ours=dens)
                hutch = tr if tr.method == "hutchinson" else hessian.trace(op, n_probes=s.trace_probes, seed=seed)
                ctr = pyhessian_fixed.compare_trace(net.to(dev), x.to(dev), y.to(dev), n_probes=s.trace_probes,
                                                    seed=seed, ours=hutch)
                payload.update({"trace_hutchinson": hutch.estimate, "trace_hutchinson_stderr": hutch.stderr,
                                "trace_hutchinson_samples": hutch.samples})
                payload["hvp_counts"]["trace_hutchinson"] = hutch.hvp_count
                summary["solver_seconds"]["trace_hutchinson"] = hutch.seconds
                untimed = {k: {f: v for f, v in cmp_side.items() if f != "seconds"}   # timings go to the meta
                           for k, cmp_side in (("density", cmp["pyhessian"]), ("trace", ctr["pyhessian"]))}
                payload["pyhessian"] = {**untimed, "l1_difference": cmp["l1_difference"],
                                        "max_difference": cmp["max_difference"]}
                summary.update({"pyhessian_trace": ctr["pyhessian"]["estimate"],
                                "pyhessian_density_l1": cmp["l1_difference"]})
                summary["solver_seconds"].update({"pyhessian_density": cmp["pyhessian"]["seconds"],
                                                  "pyhessian_trace": ctr["pyhessian"]["seconds"]})
        return payload, summary

    summary, skipped = cached(store, FOLDER, name, params, compute, force=force)
    return {**summary, "name": name, "skipped": skipped}


def residuals(op: hessian.HessianOperator, values, vectors) -> np.ndarray:
    """||H v_i - lambda_i v_i|| / |lambda_1| for unit rows v_i, measured with fresh products of ``op``."""
    values = np.asarray(values, dtype=np.float64)
    out = []
    for lam, v in zip(values, vectors):
        v = op.as_vector(v)
        v = v / v.norm()
        out.append(float((op.hvp(v) - float(lam) * v).norm()))
    return np.asarray(out) / max(abs(float(values[0])), 1e-300)


def solver_comparison_one(store: ResultStore, dataset: str, model: str, seed: int, section: Spectrum, *,
                          device: str = "cpu") -> dict:
    """Top-``solver_k`` eigenpairs of one trained run by our Lanczos solver, by PyHessian 0.1 called as its users
    call it (``hessian(model, criterion, data=(x, y)).eigenvalues(top_n=k)``, its default tol 1e-3 and 100
    iterations) and by our fixed-up power iteration, with products, wall time and residuals measured on one
    operator (the residual products are not counted)."""
    net, x, y, upstream = trained_run(store, dataset, model, seed)
    k = section.solver_k
    params = {"dataset": dataset, "model": model, "seed": seed, "k": k, "tol": section.tol, "upstream": upstream}

    def compute():
        dev = resolve_device(device)
        netd, xd, yd = net.to(dev), x.to(dev), y.to(dev)
        op = hessian.HessianOperator(netd, xd, yd)
        rows = []
        for method in ("lanczos", "power"):
            top = hessian.top_eigenpairs(op, k, method=method, tol=section.tol, seed=seed)
            rows.append({"method": f"{method} (ours)", "eigenvalues": top.eigenvalues.double().cpu().numpy(),
                         "hvp_count": top.hvp_count, "seconds": top.seconds,
                         "residuals": residuals(op, top.eigenvalues, top.eigenvectors)})
        theirs = pyhessian_fixed.eigenvalues(netd, xd, yd, top_n=k, seed=seed)
        order = np.argsort(-theirs.eigenvalues)
        rows.append({"method": "PyHessian 0.1", "eigenvalues": theirs.eigenvalues[order],
                     "hvp_count": theirs.hvp_count, "seconds": theirs.seconds,
                     "residuals": residuals(op, theirs.eigenvalues[order], theirs.eigenvectors[order])})
        for r in rows:
            r.update({"k": k, "n": len(x), "max_residual": float(np.max(r["residuals"]))})
        summary = {"dataset": dataset, "model": model, "seed": seed, "rows": [
            {key: r[key] for key in ("method", "k", "n", "hvp_count", "seconds", "max_residual")} for r in rows]}
        untimed = [{key: v for key, v in r.items() if key != "seconds"} for r in rows]   # timings: the meta only
        return {"rows": untimed}, summary

    summary, skipped = cached(store, SOLVERS, run_name(dataset, model, seed), params, compute)
    return {**summary, "skipped": skipped}


def run(store: ResultStore, common: Common, section: Spectrum) -> list[dict]:
    """The spectrum of every (dataset, model) for the seeds ``spectrum_max_seeds`` allows; extras for the first
    ``full_seeds`` seeds; the solver comparison for the first seed of ``solver_datasets`` x ``solver_models``."""
    rows = []
    for ds in common.datasets:
        for m in common.models:
            for s in spectrum_seeds(m, common.seeds, common.spectrum_max_seeds):
                row = spectrum_one(store, ds, m, s, section, extras=s in common.seeds[:section.full_seeds],
                                   device=common.device)
                rows.append(row)
                print(f"{row['name']}: {'skipped' if row['skipped'] else 'computed'} in {row['seconds']:.1f} s",
                      flush=True)
    for ds in [d for d in common.datasets if d in section.solver_datasets]:
        for m in [m for m in common.models if m in section.solver_models]:
            cmp = solver_comparison_one(store, ds, m, common.seeds[0], section, device=common.device)
            for r in cmp["rows"]:
                print(f"{ds} {m} {r['method']:>16}: {r['hvp_count']:5d} products, {r['seconds']:7.1f} s, "
                      f"max residual {r['max_residual']:.2e}", flush=True)
    return rows
