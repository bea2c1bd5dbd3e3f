"""The seed study's paper numbers (``lib.outputs.seed_numbers``) against the tiny pipeline's ``seed_study`` table,
and present in the numbers notebook 06 wrote."""
import pytest

from lib.outputs.latex import fmt, fmt_k, pct
from lib.outputs.seed_numbers import SCALE_TAGS, seed_numbers
from lib.records.convergence import load_table


def test_seed_numbers_quote_the_table(tiny_pipeline):
    store = tiny_pipeline.store
    rows = {r["scale"]: r for r in load_table(store, "seed_study")}
    out = seed_numbers(store)
    assert out["SeedStudySeeds"] == fmt(rows["gap"]["n_seeds"]) == "3"
    assert out["SeedStudyN"] == "100" and out["SeedStudyOrders"] == "4"
    for scale, tag in SCALE_TAGS.items():
        r = rows[scale]
        assert out[f"SeedShareSeed{tag}"] == pct(r["share_seed"])
        assert out[f"SeedShareOrder{tag}"] == pct(r["share_order"])
        assert out[f"SeedShareMc{tag}"] == pct(r["share_monte_carlo"])
        shares = sum(float(out[f"SeedShare{p}{tag}"]) for p in ("Seed", "Order", "Mc"))
        assert shares == pytest.approx(100.0, abs=0.16)            # three values rounded to 0.1
        assert out[f"SeedIntervalLow{tag}"] == fmt_k(r["interval_low"])
        assert out[f"SeedLosoNew{tag}"] == pct(r["loso_new_seed"])
    gap = rows["gap_sigma"]
    assert out["GapSigmaRelSeMedian"] == pct(gap["rel_se_median"])
    assert out["GapSigmaDraws"] == fmt(gap["gap_thetas"]) == "4"        # the tiny profile's monte_carlo.gap_thetas
    # notebook 06 wrote every one of them
    written = tiny_pipeline.out["figures"]["numbers"]
    assert {k: written[k] for k in out} == out


def test_no_table_no_numbers(tmp_store):
    assert seed_numbers(tmp_store) == {}
