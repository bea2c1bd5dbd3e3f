"""The paper's outputs, registered once (output file -> the function that makes it), and the stage of notebook 06.

``run`` (notebook 06's entry point) makes every registered figure (PDF + PNG), table and ``numbers.tex`` of a
profile from its results into ``paper/figures/<profile>/`` and ``paper/generated/<profile>/``; the paper build
checks with ``missing(profile)`` that every registered output of that profile exists before LaTeX runs. Adding a
figure or table is one line in ``FIGURES`` or ``TABLES``.

    python -m lib.outputs.registry --check --profile smoke   # exit 1 listing the outputs that are missing
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

from lib.infra.config import Common, Figures
from lib.infra.results import ResultStore, atomic_write_json
from lib.outputs import figures, latex, plotting, prediction_figures, prediction_tables, tables
from lib.outputs import numbers as paper_numbers
from lib.records.convergence import load_table
from lib.records.monte_carlo import CurveSpec, load_plan
from lib.records.prediction import load_scores, load_task
from lib.records.projection import projected_runs


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


#: figure groups: each returns {file stem under paper/figures/<profile>/: matplotlib figure}
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
    "full_space_ratio": _one("full_space_ratio", lambda i: figures.full_space_ratio(i.store)),
    # notebook 07's runs (residual CNN on digits through lib.api): the runner runs 06 after 07
    "your_model": _one("your_model", lambda i: figures.your_model(i.store)),
    # notebook 08 (the prediction benchmark): every predictor against the targets; the first task worked through
    "prediction_scatter": _one("prediction_scatter", lambda i: prediction_figures.predicted_vs_target(
        load_scores(i.store), _primary_key(i))),
    "prediction_task": _one("prediction_task", lambda i: prediction_figures.task_curve(
        load_task(i.store, load_scores(i.store)["tasks"][0]), load_scores(i.store)["primary"]["n0"])),
}

#: tables: file stem under paper/generated/<profile>/ -> LaTeX tabular
TABLES: dict[str, Callable[[Inputs], str]] = {
    "sample_size": lambda i: tables.sample_size_table(i.store),
    "solvers": lambda i: tables.solver_table(i.store),
    "theory": lambda i: tables.theory_table(i.store),
    "predictors": lambda i: tables.predictor_table(i.store),
    "speed": lambda i: tables.speed_table(i.store),
    "bench": lambda i: tables.bench_table(i.store),
    "prediction_scores": lambda i: prediction_tables.scores_table(i.store),
    "prediction_tasks": lambda i: prediction_tables.tasks_table(i.store),
}


def _primary_key(i: Inputs) -> str:
    primary = load_scores(i.store)["primary"]
    return f"n0={primary['n0']},eps={primary['eps']}"


def numbers(i: Inputs, timings: dict | None = None) -> dict:
    """Every number the paper quotes, keyed by macro name (``paper/generated/<profile>/numbers.tex``)."""
    c = i.common
    return {**paper_numbers.numbers(i.store, c.datasets, c.models, c.seeds, i.plan, timings=timings,
                                    spectrum_max_seeds=c.spectrum_max_seeds),
            **prediction_tables.prediction_numbers(i.store)}


def run(store: ResultStore, common: Common, section: Figures | None = None) -> dict:
    """Make every registered output of the profile of ``store``; remove figure files this run did not write.
    Returns ``{"figures": [...], "tables": [...], "numbers": {...}, "removed": [...], "placeholders": [...]}``."""
    inputs = Inputs.of(store, common)
    figs, gen = latex.figures_dir(store.profile), latex.generated_dir(store.profile)
    made = []
    for make in FIGURES.values():
        for name, fig in make(inputs).items():
            plotting.save(fig, figs / name)
            made.append(name)
    removed = latex.prune_figures(made, figs)
    for name, make in TABLES.items():
        latex.write_table(name, make(inputs), gen)
    timings_path = store.root / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    values = numbers(inputs, timings=timings)
    missing_ = latex.write_numbers(values, gen / "numbers.tex",
                                   allow_placeholders=section.allow_placeholders if section else True)
    if missing_:
        print(f"{len(missing_)} placeholder(s) 'n/a' in numbers.tex ({gen / 'placeholders.txt'}): {missing_}")
    atomic_write_json(gen / "source.json", {"profile": store.profile, "figures": sorted(made),
                                            "n_numbers": len(values)})
    return {"figures": made, "tables": list(TABLES), "numbers": values, "removed": removed,
            "placeholders": missing_}


def missing(profile: str, figure_names: list[str] | None = None) -> list[str]:
    """Registered outputs of ``profile`` without their file: every table, ``numbers.tex``, and the figures recorded
    by its last 06 run in ``paper/generated/<profile>/source.json`` (PDF and PNG)."""
    gen, figs = latex.generated_dir(profile), latex.figures_dir(profile)
    out = [f"paper/generated/{profile}/{t}.tex" for t in TABLES if not (gen / f"{t}.tex").is_file()]
    if not (gen / "numbers.tex").is_file():
        out.append(f"paper/generated/{profile}/numbers.tex")
    source = gen / "source.json"
    if figure_names is None:
        figure_names = json.loads(source.read_text())["figures"] if source.is_file() else []
        if not source.is_file():
            out.append(f"paper/generated/{profile}/source.json")
    for name in figure_names:
        for ext in ("pdf", "png"):
            if not (figs / f"{name}.{ext}").is_file():
                out.append(f"paper/figures/{profile}/{name}.{ext}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="list missing outputs; exit 1 if any")
    parser.add_argument("--profile", default="paper", help="whose outputs (paper/generated/<profile>/)")
    args = parser.parse_args(argv)
    gone = missing(args.profile)
    for path in gone:
        print(f"missing output: {path}", file=sys.stderr)
    if gone:
        print(f"error: run 'make reproduce PROFILE={args.profile}' (or 'make paper PROFILE={args.profile}' when its "
              "results exist) to make them", file=sys.stderr)
        return 1
    if args.check:
        print(f"all {len(TABLES)} tables, numbers.tex and the recorded figures of profile {args.profile} are "
              "present")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
