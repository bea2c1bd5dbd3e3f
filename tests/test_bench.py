"""The benchmark package (``bench``, run by ``make bench``, not by the test suite): every module imports against the
current ``lib`` layout, and the public-operator rows are built from saved runs as the summary table shows them."""
import importlib
import pkgutil

import pytest

import bench
from bench.__main__ import api_rows


@pytest.mark.parametrize("name", sorted(m.name for m in pkgutil.iter_modules(bench.__path__)))
def test_every_bench_module_imports(name):
    importlib.import_module(f"bench.{name}")


def test_api_rows_judge_the_picked_engine_the_top10_time_and_memory():
    costs = {"n_params": 11_388_010, "rows": [
        {"operator": "ours (structured)", "in_gradients": 1.4}, {"operator": "ours (rebuild)", "in_gradients": 2.7},
        {"operator": "curvlinops", "in_gradients": 2.6}]}
    solve = {"k": 10, "n_params": 11_388_010, "top_seconds": 300.0, "top_growth_vectors": 30.0,
             "kept_mib": 8 * 11_388_010 * 3 / 2 ** 20}
    rows = api_rows([{"model": "mlp", "costs": costs, "rows": [solve]}])
    assert [(r["value"], r["target"], r["ok"]) for r in rows] == [
        (1.4, 2.0, True), (2.7, None, None), (2.6, None, None), (300.0, 751 / 3, False),
        (30.0, pytest.approx(27.0), False)]
    assert "11.4M MLP" in rows[0]["measure"] and "kept 3.0" in rows[4]["measure"]
    assert rows[3]["measure"].endswith("11.4M MLP, lanczos")          # a run saved before the method field
    thick = api_rows([{"model": "mlp", "costs": costs, "rows": [{**solve, "method": "thick-restart"}]}])
    assert thick[3]["measure"].endswith("thick-restart") and thick[4]["measure"].endswith("thick-restart")
    assert all(r["ok"] is None for r in api_rows([{"model": "mlp", "costs": costs, "rows": [solve]}], judged=False))


def test_hvp_over_its_arithmetic_is_a_judged_row():
    """Beside each product row: its kept-state multiply-adds in forwards (informational) and the measured ratio
    over that count against 1.25."""
    from bench.__main__ import TARGET_HVP_OVER_ARITHMETIC, summary_rows
    costs = [{"measure": "one HVP / one forward, cnn", "value": 6.0, "target": 3.0, "kind": "max", "model": "cnn",
              "arithmetic": {"kept_in_forwards": 4.0}}]
    rows = summary_rows(costs, None, [], [])
    assert [(r["value"], r["target"], r["ok"]) for r in rows] == [
        (6.0, 3.0, False), (4.0, None, None), (1.5, TARGET_HVP_OVER_ARITHMETIC, False)]
