"""Right-censored sample sizes read the same way in every output: README block, docs/results.md rows, paper table."""
from lib.outputs import readme


def test_censored_values_are_marked_in_the_markdown_outputs():
    assert readme._measured(60_000, 60_000) == ">= 60,000 (censored)"
    assert readme._measured(20_000, 60_000) == "20,000"
    assert readme._measured(None, 60_000) == "--"
    row = {"K_median": 9_996.0, "K_q05": 9_975.0, "K_q95": None}
    assert readme._median_k(row) == "9,996 (9,975-> N-1 (censored))"
    assert readme._median_k({"K_median": None, "K_q05": None, "K_q95": None}).startswith("> N-1 (censored)")
    assert readme._median_k({"K_median": 300.0, "K_q05": 200.0, "K_q95": 400.0}) == "300 (200-400)"


def test_summary_flags_and_tables_on_the_tiny_pipeline(tiny_pipeline):
    from lib.outputs import tables
    from lib.records.convergence import load_table

    store = tiny_pipeline.store
    _, section = tiny_pipeline.stage("convergence")
    top = max(section.learning_sizes)
    for r in load_table(store, "summary"):
        assert r["K_median_censored"] == (r["K_median"] is None)
        assert r["K_q95_censored"] == (r["K_q95"] is None)
        assert r["n_within_1pt_censored"] == (r["n_within_1pt"] is not None and r["n_within_1pt"] >= top)
    tex = tables.predictor_table(store)
    predictors = load_table(store, "predictors")
    n0 = max(p["n0"] for p in predictors)                  # the table shows the largest pilot's rows
    censored = [p for p in predictors if p["n0"] == n0 and p["n_within"] is not None and p["n_within"] >= top]
    assert tex.count("(censored)") == len(censored)
    block = readme.block(store.profile, store)
    flagged = [r for r in load_table(store, "summary") if r["n_within_1pt_censored"]]
    thr = sorted({r["delta"] for r in load_table(store, "summary")})
    shown = [r for r in flagged if r["delta"] == thr[len(thr) // 2]]
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    assert sum(line.count(f">= {top:,} (censored)") for line in rows) == len(shown)
