"""Notebook 05's CNN bound: the Gauss-Newton part of the per-sample Hessian bounded as Meshkov, Kiselev & Grabovoy
do, against the measured norms of that part and of the full per-sample Hessian."""
from __future__ import annotations

from lib.core.landscape import bounds
from lib.infra.config import Common, Convergence
from lib.infra.results import ResultStore
from lib.records.convergence import CNN_BOUND
from lib.records.runs import run_name, trained_run
from lib.stages.base import cached


def cnn_bound_rows(store: ResultStore, common: Common, section: Convergence) -> list[dict]:
    """The CNN bound of Meshkov, Kiselev & Grabovoy (their Lemma 5: the Gauss-Newton part of the per-sample Hessian)
    against the measured norms of that part and of the full per-sample Hessian, for the first seed of every CNN
    run, on ``cnn_bound_samples`` samples."""
    rows, seed = [], common.seeds[0]
    for ds in common.datasets:
        for m in [m for m in common.models if m == "cnn"]:
            net, x, y, upstream = trained_run(store, ds, m, seed)
            params = {"dataset": ds, "model": m, "seed": seed, "n_samples": section.cnn_bound_samples,
                      "upstream": upstream}

            def compute(net=net, x=x, y=y):
                out = bounds.cnn_bound_comparison(net, x, y, section.cnn_bound_samples, seed)
                summary = {k: out[k] for k in ("bound", "bound_printed", "bound_exact_norms", "bias_free")}
                summary.update({"outer_norms_max": out["outer_max"], "outer_norms_median": out["outer_median"],
                                "full_norms_max": out["full_max"], "full_norms_median": out["full_median"]})
                return out, summary

            summary, _ = cached(store, CNN_BOUND, run_name(ds, m, seed), params, compute)
            rows.append({"dataset": ds, "model": m, "seed": seed, **summary})
    return rows
