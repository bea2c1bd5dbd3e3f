"""Each notebook's key numbers as fixed-format text, read from saved results only (the notebooks' last cell).

That cell is tagged ``nbval-check-output``: ``make nbval`` (a step of ``make test``) re-executes every executed
smoke notebook and compares the cell's output with the saved one, so a change of any number printed here fails.
Only numbers that are bitwise reproducible on one machine are printed (no timings, paths, dates or commits).

    from lib.outputs import key_numbers
    print(key_numbers.text("train", store, common))
"""
from __future__ import annotations

import json
import re

import numpy as np

from lib.infra.config import Common
from lib.infra.results import ResultStore
from lib.outputs import latex
from lib.records.convergence import load_table
from lib.records.monte_carlo import load_curve, load_plan
from lib.records.prediction import load_scores
from lib.records.projection import load_projection, projected_runs
from lib.records.runs import run_name
from lib.records.spectrum import load_spectrum, spectrum_seeds
from lib.records.train import FOLDER as TRAINED

#: numbers of notebook 06 that depend on the machine, the clock or the commit (left out of its key numbers)
UNSTABLE_MACROS = re.compile(r"^(Time|Wall|Version|GitCommit|Machine|Threads)")


def _g(x) -> str:
    """Seven significant digits, the same on every run that computes the same float."""
    return "None" if x is None else f"{float(x):.7g}"


def _train(store: ResultStore, common: Common) -> list[str]:
    out = []
    for ds in common.datasets:
        for m in common.models:
            for s in common.seeds:
                r = store.meta(TRAINED, run_name(ds, m, s))["summary"]
                out.append(f"{run_name(ds, m, s)}: train_loss {_g(r['train_loss'])}, train_accuracy "
                           f"{_g(r['train_accuracy'])}, test_accuracy {_g(r['test_accuracy'])}")
    return out


def _spectrum(store: ResultStore, common: Common) -> list[str]:
    out = []
    for ds in common.datasets:
        for m in common.models:
            for s in spectrum_seeds(m, common.seeds, common.spectrum_max_seeds):
                p = load_spectrum(store, ds, m, s)
                ev = p["eigenvalues"].numpy()
                out.append(f"{run_name(ds, m, s)}: lambda_1 {_g(ev[0])}, lambda_{len(ev)} {_g(ev[-1])}, "
                           f"lambda_min {_g(p['smallest'])}, trace {_g(p['trace'])}")
    return out


def _projection(store: ResultStore, common: Common) -> list[str]:
    out = []
    for ds, m, s in projected_runs(store):
        p = load_projection(store, ds, m, s)
        for plane in ("hessian", "filter_normalized"):
            z = np.asarray(p[plane][f"L_{p['N'] - 1}"], dtype=np.float64)
            out.append(f"{run_name(ds, m, s)} {plane}: L_{p['N'] - 1} min {_g(z.min())}, max {_g(z.max())}, "
                       f"mean {_g(z.mean())}")
    return out


def _monte_carlo(store: ResultStore, common: Common) -> list[str]:
    out, seen = [], set()
    for grp, spec in load_plan(store):
        if spec.name in seen:
            continue
        seen.add(spec.name)
        c = load_curve(store, spec)
        out.append(f"{grp} {run_name(spec.dataset, spec.model, spec.seed)} {spec.subspace} D={spec.D} "
                   f"{spec.distribution} sigma={spec.sigma:.4g} {spec.estimator}: vbar {_g(c['vbar'])}, "
                   f"Delta_1 {_g(c['delta'][0])}, Delta_last {_g(c['delta'][-1])}")
    return out


def _convergence(store: ResultStore, common: Common) -> list[str]:
    out = []
    for r in load_table(store, "slopes"):
        out.append(f"slope {r['dataset']} {r['model']} s{r['seed']} {r['subspace']}: {_g(r['slope'])} "
                   f"(se {_g(r['slope_se'])}), vbar {_g(r['vbar'])}")
    for r in load_table(store, "sample_size"):
        out.append(f"K {r['dataset']} {r['model']} s{r['seed']} {r['scale']} Delta={r['delta']:g}: fixed "
                   f"{r['K_fixed']}, band {r['K_band']}, closed {r['K_closed']}")
    return out


def _figures(store: ResultStore, common: Common) -> list[str]:
    numbers = json.loads((latex.generated_dir(store.profile) / "numbers.json").read_text())
    return [f"\\{k} = {v}" for k, v in sorted(numbers.items()) if not UNSTABLE_MACROS.match(k)]


def _prediction(store: ResultStore, common: Common) -> list[str]:
    scores = load_scores(store)
    out = []
    for key, table in scores["tables"].items():
        out.append(f"{key}: resolved {table['n_resolved']}, unresolved {table['n_unresolved']}, targets "
                   f"{table['targets']}")
        for p, s in table["scores"].items():
            out.append(f"  {p}: median |log2| {_g(s['median_abs_log2'])}, p90 {_g(s['p90_abs_log2'])}, within 2x "
                       f"{_g(s['within_2x'])}, coverage {_g(s['coverage'])}")
    out.append(f"decision: landscape helps {scores['decision']['landscape_helps']}, adds to learning curves "
               f"{scores['decision']['adds_to_learning_curves']}")
    return out


STAGES = {"train": _train, "spectrum": _spectrum, "projection": _projection, "monte_carlo": _monte_carlo,
          "convergence": _convergence, "figures": _figures,
          "prediction": _prediction}


def text(stage: str, store: ResultStore, common: Common) -> str:
    """The key numbers of ``stage`` (a name of ``lib.records.REGISTRY``) for the profile of ``store``."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} has no key numbers; choose one of {sorted(STAGES)}")
    lines = STAGES[stage](store, common)
    return "\n".join([f"key numbers of {stage} (profile {store.profile}, {len(lines)} lines):", *lines])
