"""The seed study (``lib.stages.convergence.seeds``) on the tiny pipeline: its table recomputed from the per-seed
records by explicit loops (threshold, K per order, K's median, the variance of the seed means), its loss-gap sigma
rows against the records, and a rerun that reuses every record."""
import numpy as np
import pytest

from lib.core.sample_size.seed_interval import leave_one_seed_out, variance_parts
from lib.records import convergence as convergence_records
from lib.records.monte_carlo import load_plan
from lib.records.runs import load
from lib.stages.convergence import seeds

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _records(store, n_seeds):
    names = sorted(store.names(convergence_records.SEEDS))
    assert len(names) == n_seeds
    return [load(store, convergence_records.SEEDS, n) for n in names]


def _first_below(suffix_row: np.ndarray, k: np.ndarray, threshold: float):
    for j in range(len(k)):
        if all(suffix_row[j:] < threshold):
            return float(k[j])
    return None


def test_seed_study_table_recomputed_from_the_records(tiny_pipeline):
    store = tiny_pipeline.store
    section = tiny_pipeline.stage("convergence")[1]
    rows = {r["scale"]: r for r in convergence_records.load_table(store, "seed_study")}
    assert set(rows) == {"sigma", "gap", "gap_sigma"}
    records = _records(store, section.seed_study_seeds)
    k = np.asarray(records[0].payload["k"])
    N = int(records[0].meta["summary"]["N"])
    assert N == section.seed_study_n and len(k) == N - 1
    for scale in seeds.SCALES:
        r = rows[scale]
        k_ref = round(section.seed_study_k_ref * N)
        threshold = float(np.median([rec.payload[f"{scale}_0_order_mean"][k_ref - 1] for rec in records]))
        assert r["threshold"] == pytest.approx(threshold, rel=1e-12) and r["k_ref"] == k_ref
        log_k = []
        for rep in (0, 1):
            K = [[_first_below(row, k, threshold) for row in rec.payload[f"{scale}_{rep}_suffix_max"]]
                 for rec in records]
            assert all(len(row) == section.seed_study_orders for row in K)
            log_k.append(np.log([[N if v is None else v for v in row] for row in K]))
        censored = sum(v is None for rep in (0, 1) for row in [[_first_below(s, k, threshold)
                                                               for s in rec.payload[f"{scale}_{rep}_suffix_max"]]
                                                              for rec in records] for v in row)
        assert r["censored"] == censored
        assert r["K_median"] == pytest.approx(float(np.exp(np.median(log_k[0]))), rel=1e-12)
        parts = variance_parts(log_k[0], log_k[1])
        assert r["var_seed"] == pytest.approx(parts.seed, abs=1e-12)
        assert r["var_total"] == pytest.approx(parts.seed + parts.order + parts.monte_carlo, abs=1e-12)
        # the seed means' variance by hand: what the seed part starts from
        assert parts.between_seed_means == pytest.approx(np.var(log_k[0].mean(axis=1), ddof=1), rel=1e-12)
        assert r["loso_new_seed"] == pytest.approx(leave_one_seed_out(log_k[0], r["level"])["new_seed"])
        assert r["interval_low"] <= r["K_median"] <= r["interval_high"]
        # suffix maxima never increase with k
        for rec in records:
            s = rec.payload[f"{scale}_0_suffix_max"]
            assert (np.diff(s, axis=1) <= 0).all()


def test_loss_gap_sigma_rows_match_the_records(tiny_pipeline):
    store = tiny_pipeline.store
    section = tiny_pipeline.stage("convergence")[1]
    row = next(r for r in convergence_records.load_table(store, "seed_study") if r["scale"] == "gap_sigma")
    summaries = [rec.meta["summary"] for rec in _records(store, section.seed_study_seeds)]
    for s in summaries:
        assert len(s["sigma_gap_repeats"]) == section.seed_study_gap_repeats
        rel = np.std(s["sigma_gap_repeats"], ddof=1) / np.mean(s["sigma_gap_repeats"])
        assert s["sigma_gap_rel_se"] == pytest.approx(rel, rel=1e-12)
        assert s["vbar_gap_minus"] < s["vbar_gap_centre"] < s["vbar_gap_plus"]   # V-bar grows with sigma (same thetas)
    assert row["rel_se_median"] == pytest.approx(np.median([s["sigma_gap_rel_se"] for s in summaries]))
    assert row["pipeline_vs_reference_max"] == pytest.approx(
        max(abs(s["sigma_gap"] / s["sigma_gap_reference"] - 1) for s in summaries))
    assert row["repeats"] == section.seed_study_gap_repeats


def test_rerun_reuses_every_seed_record(tiny_pipeline):
    store = tiny_pipeline.store
    common, section = tiny_pipeline.stage("convergence")
    before = {n: store.meta(convergence_records.SEEDS, n)["seconds"] for n in store.names(convergence_records.SEEDS)}
    first = next(s for g, s in load_plan(store) if g == "main" and s.subspace == "hessian")
    again = seeds.seed_study_rows(store, common, section,
                                  seeds.pipeline_scale(store, first.D, first.sigma, first.dataset, first.model,
                                                       first.seed))
    after = {n: store.meta(convergence_records.SEEDS, n)["seconds"] for n in store.names(convergence_records.SEEDS)}
    assert before == after
    assert again == convergence_records.load_table(store, "seed_study")
