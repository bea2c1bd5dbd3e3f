"""Stage of notebook 05: slopes, theory vs Monte Carlo, Delta_k vs L_k, the sufficient sample size with its
uncertainty, real pilots, the learning-curve competitor and the calibration Delta*, and the R = 0 curves with the
Hessian-norm bound.

``run`` makes every table in order and saves it in ``analysis/<table>.json``; the tables come from four modules:
``analysis`` (notebook 04's curves), ``experiments`` (learning curves, pilots, R = 0 curves: new trainings),
``bounds`` (the CNN bound) and ``seeds`` (the seed study: K over seeds x orders x theta sets). Their folders,
table names and loaders are in ``lib.records.convergence``.
"""
from __future__ import annotations

import dataclasses

from lib.infra.config import Common, Convergence, MonteCarlo
from lib.infra.results import ResultStore, atomic_write_json
from lib.records.convergence import ANALYSIS
from lib.records.monte_carlo import load_plan
from lib.stages.convergence.analysis import (
    loss_correlation_rows,
    predictor_rows,
    sample_size_rows,
    slope_rows,
    summary_rows,
    theory_rows,
)
from lib.stages.convergence.bounds import cnn_bound_rows
from lib.stages.convergence.experiments import learning_curve_rows, pilot_rows, r0_rows
from lib.stages.convergence.seeds import pipeline_scale, seed_study_rows


def run(store: ResultStore, common: Common, section: Convergence, monte_carlo: MonteCarlo | None = None
        ) -> dict[str, list[dict]]:
    """Every table of the stage, each saved in ``analysis/<table>.json``; the headline also as
    ``results/<profile>/summary.json``. ``monte_carlo`` (D and sigma of the pilots) defaults to the plan's main
    Hessian curve."""
    curves = load_plan(store)
    first = next(s for g, s in curves if g == "main" and s.subspace == "hessian")
    D, sigma = (monte_carlo.D, monte_carlo.sigma) if monte_carlo else (first.D, first.sigma)
    params = {**dataclasses.asdict(common), **dataclasses.asdict(section)}
    tables: dict[str, list[dict]] = {}

    def make(name, rows):
        tables[name] = rows
        save_table(store, name, rows, params)

    make("slopes", slope_rows(store, curves))
    make("theory", theory_rows(store, curves))
    make("loss_correlation", loss_correlation_rows(store, curves))
    make("learning_curve", learning_curve_rows(store, common, section))
    make("sample_size", sample_size_rows(store, curves, section, tables["learning_curve"]))
    make("pilots", pilot_rows(store, common, section, D, sigma))
    calibration, predictors = predictor_rows(store, curves, common, section, tables["learning_curve"],
                                             tables["pilots"], tables["sample_size"])
    make("calibration", calibration)
    make("predictors", predictors)
    make("summary", summary_rows(store, curves, common, section, calibration, predictors, tables["pilots"]))
    atomic_write_json(store.root / "summary.json", tables["summary"])
    make("r0", r0_rows(store, common, section))
    make("cnn_bound", cnn_bound_rows(store, common, section))
    make("seed_study", seed_study_rows(store, common, section,
                                       pipeline_scale(store, D, sigma, first.dataset, first.model, first.seed)))
    return tables


def save_table(store: ResultStore, name: str, rows, params: dict) -> None:
    store.save(ANALYSIS, name, {"rows": rows}, params, ext="json")
