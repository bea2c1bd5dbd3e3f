"""The paper's outputs, registered once: output file -> the function that makes it.

Notebook 06 (``lib.stages.figures``) iterates ``FIGURES``, ``TABLES`` and writes ``numbers.tex``; the paper build
checks with ``missing()`` that every registered output exists before LaTeX runs.

    python -m lib.outputs.registry --check     # exit 1 listing the outputs that are missing
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

from lib.infra.config import Common
from lib.infra.results import ResultStore
from lib.outputs import figures, report
from lib.stages.convergence import load_table
from lib.stages.monte_carlo import CurveSpec, load_plan
from lib.stages.projection import projected_runs


@dataclass
class Inputs:
    """What every output function may read: the store, the profile's ``common`` section and the curve plan."""
    store: ResultStore
    common: Common
    plan: list[tuple[str, CurveSpec]]

    @classmethod
    def of(cls, store: ResultStore, common: Common) -> "Inputs":
        return cls(store, common, load_plan(store))


def _surfaces(i: Inputs) -> dict:
    return {f"surfaces_{ds}_{m}": figures.surfaces(i.store, ds, m, s) for ds, m, s in projected_runs(i.store)}


def _thresholds(i: Inputs) -> list[float]:
    return sorted({r["delta"] for r in load_table(i.store, "sample_size")}, reverse=True)


def _one(name: str, make: Callable[[Inputs], object]) -> Callable[[Inputs], dict]:
    return lambda i: {name: make(i)}


#: figure groups: each returns {file stem under paper/figures/: matplotlib figure}
FIGURES: dict[str, Callable[[Inputs], dict]] = {
    "spectrum": _one("spectrum", lambda i: figures.spectrum(i.store, i.common.datasets, i.common.models,
                                                           i.common.seeds, i.common.spectrum_max_seeds)),
    "surfaces": _surfaces,
    "delta_main": _one("delta_main", lambda i: figures.delta_main(i.store, i.plan)),
    "k2_delta_main": _one("k2_delta_main", lambda i: figures.delta_main(i.store, i.plan, k2=True)),
    **{f"sweep_{w}": _one(f"sweep_{w}", lambda i, w=w: figures.sweep(i.store, i.plan, w))
       for w in ("sigma", "dim", "distribution", "estimator")},
    "estimator_efficiency": _one("estimator_efficiency", lambda i: figures.estimator_efficiency(i.store, i.plan)),
    "theory_vs_mc": _one("theory_vs_mc", lambda i: figures.theory_vs_mc(i.store, i.plan)),
    "order_average": _one("order_average", lambda i: figures.order_average(i.store, i.plan)),
    "vbar_parts": _one("vbar_parts", lambda i: figures.vbar_parts(i.store, i.plan)),
    "delta_vs_loss": _one("delta_vs_loss", lambda i: figures.delta_vs_loss(i.store, i.plan)),
    "learning_curve": _one("learning_curve", lambda i: figures.learning_curve(i.store)),
    "k_vs_scale": _one("k_vs_scale", lambda i: figures.k_vs_scale(i.store, i.plan, _thresholds(i))),
    "r0_curves": _one("r0_curves", lambda i: figures.r0_curves(i.store)),
}

#: tables: file stem under paper/generated/ -> LaTeX tabular
TABLES: dict[str, Callable[[Inputs], str]] = {
    "sample_size": lambda i: report.sample_size_table(i.store),
    "solvers": lambda i: report.solver_table(i.store),
    "theory": lambda i: report.theory_table(i.store),
    "predictors": lambda i: report.predictor_table(i.store),
}


def numbers(i: Inputs, timings: dict | None = None) -> dict:
    """Every number the paper quotes, keyed by macro name (``paper/generated/numbers.tex``)."""
    c = i.common
    return report.numbers(i.store, c.datasets, c.models, c.seeds, i.plan, timings=timings,
                          spectrum_max_seeds=c.spectrum_max_seeds)


def missing(figure_names: list[str] | None = None) -> list[str]:
    """Registered outputs without their file: every table, ``numbers.tex``, and the figures recorded by the last
    06 run in ``paper/generated/source.json`` (PDF and PNG)."""
    out = [f"paper/generated/{t}.tex" for t in TABLES if not (report.GENERATED / f"{t}.tex").is_file()]
    if not (report.GENERATED / "numbers.tex").is_file():
        out.append("paper/generated/numbers.tex")
    source = report.GENERATED / "source.json"
    if figure_names is None:
        figure_names = json.loads(source.read_text())["figures"] if source.is_file() else []
        if not source.is_file():
            out.append("paper/generated/source.json")
    for name in figure_names:
        for ext in ("pdf", "png"):
            if not (report.FIGURES / f"{name}.{ext}").is_file():
                out.append(f"paper/figures/{name}.{ext}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="list missing outputs; exit 1 if any")
    args = parser.parse_args(argv)
    gone = missing()
    for path in gone:
        print(f"missing output: {path}", file=sys.stderr)
    if gone:
        print("error: run 'make reproduce PROFILE=smoke' (or paper) to make them", file=sys.stderr)
        return 1
    if args.check:
        print(f"all {len(TABLES)} tables, numbers.tex and the recorded figures are present")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
