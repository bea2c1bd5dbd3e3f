"""The convergence analysis (``lib.stages.convergence.analysis``) on the tiny pipeline: slopes, loss correlations,
theory, sample-size, calibration, predictor and summary rows recomputed from the saved curves."""
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from lib.core.sample_size.decay import fit_slope, k_closed_form
from lib.infra.results import json_bytes
from lib.records import convergence as convergence_records
from lib.records import monte_carlo as mc_records
from lib.stages.convergence import analysis
from tests.stages.conftest import (
    DS,
    MODEL,
    RUN,
    SEED,
    N,
    _first_below,
    _hessian_curves,
    _k_closed_brute,
    _k_of_orders,
    _learning,
    _quantile,
    _spec,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_convergence_slopes_and_loss_correlation_from_the_saved_curves(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    slopes = convergence_records.load_table(store, "slopes")
    corr = convergence_records.load_table(store, "loss_correlation")
    assert [r["subspace"] for r in slopes] == [r["subspace"] for r in corr] == ["hessian", "random"]
    for row, rho in zip(slopes, corr):
        c = mc_records.load_curve(store, _spec(plan, "main", subspace=row["subspace"]))
        fit = fit_slope(c["k"], c["delta"], k_min=10)
        assert row["slope"] == pytest.approx(fit.slope, rel=1e-12) and -3 < row["slope"] < -1
        assert row["slope_se"] == pytest.approx(fit.slope_stderr, rel=1e-12)
        k2 = (c["k"] ** 2 * c["delta"])[c["k"] >= 10]
        assert row["k2_median"] == pytest.approx(np.median(k2), rel=1e-12)
        assert row["k2_q25"] == pytest.approx(np.quantile(k2, 0.25), rel=1e-12)
        assert row["vbar"] == c["vbar"] and row["vbar_se"] == c["vbar_stderr"]
        assert (row["dataset"], row["model"], row["seed"], row["D"], row["sigma"]) == (DS, MODEL, SEED, 2, 0.3)
        L = np.cumsum(c["losses0"]) / np.arange(1, N + 1)
        ref = spearmanr(c["delta"], L[:-1])
        assert rho["rho"] == pytest.approx(ref.statistic, rel=1e-12) and rho["n"] == N - 1
        assert rho["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_convergence_theory_rows_from_the_saved_curves(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    rows = convergence_records.load_table(store, "theory")
    distinct = list(dict.fromkeys(s for _, s in plan))
    assert len(rows) == len(distinct) == 14
    for row, spec in zip(rows, distinct):
        assert (row["subspace"], row["D"], row["distribution"], row["sigma"], row["estimator"]) == (
            spec.subspace, spec.D, spec.distribution, spec.sigma, spec.estimator)
        c = mc_records.load_curve(store, spec)
        assert row["median_mc_over_q"] == pytest.approx(np.median(c["delta"] / c["Q"]), rel=1e-12)
        within = np.mean(np.abs(c["delta"] - c["Q"]) <= 3 * c["stderr"])
        assert row["share_within_3se"] == pytest.approx(within, abs=1e-12)
        assert ("median_mc_over_t" in row) == (c["T"] is not None)


def test_convergence_sample_size_rows_from_the_saved_curves(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    rows = convergence_records.load_table(store, "sample_size")
    specs = _hessian_curves(plan)
    assert [(r["scale"], r["delta"]) for r in rows] == [(s.scale, d) for s in specs for d in (0.01, 0.001)]
    trained = store.meta("train", RUN)["summary"]
    sizes, acc = _learning(store)
    for r in rows:
        spec = next(s for s in specs if s.scale == r["scale"])
        c = mc_records.load_curve(store, spec)
        thr = r["delta"]
        wall = store.meta("spectrum", RUN)["seconds"] + store.meta("curves", spec.name)["seconds"]
        assert (r["dataset"], r["model"], r["seed"], r["N"], r["n_params"]) == (DS, MODEL, SEED, N,
                                                                                trained["n_params"])
        assert r["sigma"] == spec.sigma and r["vbar"] == c["vbar"]
        assert r["test_accuracy_N"] == trained["test_accuracy"]
        assert r["K_fixed"] == _first_below(c["delta"], thr)
        assert r["band_multiplier"] == c["band_multiplier"]
        assert r["K_band"] == _first_below(c["delta"] + c["band_multiplier"] * c["band_se"], thr)
        assert r["K_band"] >= r["K_fixed"]
        assert r["K_closed"] == _k_closed_brute(c["vbar"], N, thr) == k_closed_form(c["vbar"], N, thr)
        orders = _k_of_orders(c["k"], c["order_suffix_max"], thr)
        assert r["n_orders"] == 2 and r["orders_reached"] == pytest.approx(np.isfinite(orders).mean())
        assert r["K_order_median"] == _quantile(orders, 0.5)
        assert r["K_order_q05"] == _quantile(orders, 0.05) and r["K_order_q95"] == _quantile(orders, 0.95)
        assert r["K_order_upper"] is None           # 2 orders are too few for a 95 % conformal bound
        K = r["K_fixed"]
        expected = float(np.interp(np.log(K), np.log(sizes), acc)) if K and sizes[0] <= K <= sizes[-1] else None
        assert r["test_accuracy_K"] == (pytest.approx(expected, rel=1e-12) if expected is not None else None)
        assert r["wall_seconds"] == pytest.approx(wall, rel=1e-12)
    assert any(r["test_accuracy_K"] is not None for r in rows), "no K inside the learning curve: untested"


def test_convergence_calibration_and_predictors(tiny_pipeline):
    store = tiny_pipeline.store
    cal = convergence_records.load_table(store, "calibration")
    pred = convergence_records.load_table(store, "predictors")
    sizes, acc = _learning(store)
    gaps = [0.01, 0.005]
    sample = {r["scale"]: r for r in convergence_records.load_table(store, "sample_size")}
    assert sorted((r["scale"], r["gap"]) for r in cal) == sorted((s, g) for s in ("loss_gap", "sigma") for g in gaps)
    for r in cal:
        ok = np.asarray(acc) >= acc[-1] - r["gap"]
        bad = np.flatnonzero(~ok)
        n_obs = float(sizes[0] if len(bad) == 0 else sizes[bad[-1] + 1])
        assert r["n_within"] == n_obs and r["plateau"] == acc[-1] and r["n_max"] == sizes[-1]
        assert r["vbar"] == sample[r["scale"]]["vbar"] and r["N"] == N
        assert r["delta_star"] == pytest.approx(r["vbar"] * N / ((N - 1) * n_obs * (n_obs + 1)), rel=1e-12)
    pilots = {p["n0"]: p for p in convergence_records.load_table(store, "pilots")}
    lc = convergence_records.load_table(store, "learning_curve")
    assert sorted((p["gap"], p["n0"]) for p in pred) == sorted((g, n0) for g in gaps for n0 in (50, 100))
    for p in pred:
        used = [r for r in lc if r["n"] <= p["n0"]]
        assert p["cost_learning_curve"] == {"trainings": len(used),
                                            "training_samples_seen": sum(r["n"] for r in used),
                                            "seconds": pytest.approx(sum(r["seconds"] for r in used), rel=1e-12)}
        pilot = pilots[p["n0"]]
        assert p["cost_landscape"]["trainings"] == 1
        assert p["cost_landscape"]["hessian_products"] == pilot["cost"]["hessian_products"]
        assert p["n_within"] == next(c["n_within"] for c in cal if c["gap"] == p["gap"])
        # one (dataset, model) only: no other run to calibrate Delta* on (leave-one-out)
        assert p["delta_star_sigma"] is None and p["n_landscape_sigma"] is None
        if len({r["n"] for r in used}) < 3:               # a 3-parameter power law needs 3 sizes
            assert p["power_law"] is None and p["n_learning_curve"] is None
        else:
            law = p["power_law"]
            assert law["n_points"] == len(used) and law["n_max"] == p["n0"]
            assert p["n_learning_curve"] == pytest.approx((law["a"] / p["gap"]) ** (1 / law["b"]), rel=1e-12)


def test_convergence_summary_pools_orders_and_quotes_the_predictors(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    rows = convergence_records.load_table(store, "summary")
    pred = convergence_records.load_table(store, "predictors")
    cal = convergence_records.load_table(store, "calibration")
    pilot = next(p for p in convergence_records.load_table(store, "pilots") if p["n0"] == 100)
    assert sorted((r["scale"], r["delta"]) for r in rows) == sorted(
        (s, d) for s in ("loss_gap", "sigma") for d in (0.01, 0.001))
    for r in rows:
        spec = next(s for s in _hessian_curves(plan) if s.scale == r["scale"])
        c = mc_records.load_curve(store, spec)
        orders = _k_of_orders(c["k"], c["order_suffix_max"], r["delta"])
        assert r["K_n"] == 2 and r["K_median"] == _quantile(orders, 0.5)
        assert r["K_q05"] == _quantile(orders, 0.05) and r["K_q95"] == _quantile(orders, 0.95)
        assert r["sigma"] == spec.sigma and r["pilot_n0"] == 100
        vbar = pilot["vbar_sigma"] if r["scale"] == "sigma" else pilot["vbar_gap"]
        assert r["K_pilot"] == _k_closed_brute(vbar, N, r["delta"])
        p = next(p for p in pred if (p["n0"], p["gap"]) == (100, 0.01))
        assert r["n_learning_curve"] == p["n_learning_curve"]
        assert r["n_within_1pt"] == next(x["n_within"] for x in cal if (x["scale"], x["gap"]) == (r["scale"], 0.01))


def test_the_saved_curve_tables_are_what_the_analysis_makes_of_the_saved_plan(tiny_pipeline):
    """``slope_rows``, ``theory_rows`` and ``loss_correlation_rows`` called again on the saved plan and curves give the
    tables the stage saved, value for value."""
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    for table, rows in (("slopes", analysis.slope_rows), ("theory", analysis.theory_rows),
                        ("loss_correlation", analysis.loss_correlation_rows)):
        again = json.loads(json_bytes(rows(store, plan)))
        assert again and again == convergence_records.load_table(store, table), table
