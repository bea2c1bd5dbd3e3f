"""The paper's tables (``lib.outputs.tables``) on the tiny pipeline's saved results: one row per saved row, every cell
formatted with ``fmt``/``pct``; the benchmark table with and without a bench run."""
import pytest

from lib.infra.results import ResultStore
from lib.outputs import numbers as paper_numbers
from lib.outputs import tables
from lib.outputs.latex import fmt, pct
from lib.records import convergence as convergence_records
from lib.records import monte_carlo as mc_records
from lib.records import spectrum as spectrum_records
from tests.stages.conftest import DS, MODEL, SEED

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _rows(tex):
    """Cells of the body rows of a booktabs tabular."""
    lines = tex.splitlines()
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert all(line.endswith(r" \\") for line in body)
    return [line[:-3].split(" & ") for line in body]


def _header(tex):
    lines = tex.splitlines()
    return lines[lines.index(r"\toprule") + 1][:-3].split(" & ")


def _k(value):
    return fmt(int(round(value))) if value is not None else "--"


def test_sample_size_table_has_one_row_per_saved_row(tiny_pipeline):
    store = tiny_pipeline.store
    saved = convergence_records.load_table(store, "sample_size")
    rows = _rows(tables.sample_size_table(store))
    assert len(rows) == len(saved) == 4
    for cells, r in zip(rows, saved):
        assert len(cells) == len(_header(tables.sample_size_table(store))) == 13
        assert cells[:3] == ["MNIST", "MLP-1", "0"]
        assert cells[3] == "$\\sigma=" + fmt(r["sigma"], 2) + "$" + (" (gap)" if r["scale"] == "loss_gap" else "")
        assert cells[4] == f"${fmt(r['delta'], 2)}$" and cells[4] in ("$0.01$", "$0.001$")
        assert cells[5] == str(r["K_fixed"]) and cells[6] == str(r["K_band"])
        assert cells[7] == _k(r["K_order_median"])
        lo, hi = r["K_order_q05"], r["K_order_q95"]
        assert cells[8] == ("--" if lo is None else f"{_k(lo)}--{_k(hi) if hi is not None else '$>N$'}")
        assert cells[9] == "--" and r["K_order_upper"] is None
        assert cells[10] == str(r["K_closed"])
        acc_k = "--" if r["test_accuracy_K"] is None else pct(r["test_accuracy_K"])
        assert cells[11] == acc_k and cells[12] == f"{100 * r['test_accuracy_N']:.1f}"
    assert [c[11] for c in rows].count("--") == sum(r["test_accuracy_K"] is None for r in saved)
    assert not any("n/a" in c for row in rows for c in row)


def test_solver_table_has_one_row_per_solver_and_pyhessian_pass(tiny_pipeline):
    store = tiny_pipeline.store
    tex = tables.solver_table(store)
    rows = _rows(tex)
    solvers = spectrum_records.load_solvers(store, DS, MODEL, SEED)["rows"]
    p = spectrum_records.load_spectrum(store, DS, MODEL, SEED)
    assert [r["method"] for r in solvers] == ["lanczos (ours)", "power (ours)", "PyHessian 0.1"]
    assert len(rows) == len(solvers) + (4 if p.get("pyhessian") else 0)
    for cells, r in zip(rows, solvers):
        assert cells == ["MNIST", "MLP-1", r["method"], "2", "200", fmt(int(r["hvp_count"])), fmt(r["seconds"], 2),
                         f"${fmt(r['max_residual'], 2)}$"]
    if p.get("pyhessian"):
        extra = rows[len(solvers):]
        assert [c[2] for c in extra] == ["trace, Hutchinson (ours)", "trace, Hutchinson (PyHessian)", "density (ours)",
                                         "density (PyHessian)"]
        assert extra[0][5] == "4" and extra[2][5] == "8"             # our products: trace_probes, slq_iter
        assert extra[1][5] == fmt(int(p["pyhessian"]["trace"]["products"]))


def test_solver_table_of_a_store_without_comparison_is_empty(tmp_path):
    assert _rows(tables.solver_table(ResultStore("none", root=tmp_path))) == []


def test_theory_table_has_one_row_per_gaussian_plain_curve(tiny_pipeline):
    store = tiny_pipeline.store
    saved = [r for r in convergence_records.load_table(store, "theory")
             if r["distribution"] == "gaussian" and r["estimator"] == "plain"]
    rows = _rows(tables.theory_table(store))
    assert len(rows) == len(saved) == 9            # main x 2, gap, sigma sweep x 4, D sweep x 2
    for cells, r in zip(rows, saved):
        scale = fmt(r["sigma"], 2) + (" (gap)" if r["scale"] == "loss_gap" else "")
        assert cells == ["MNIST", "MLP-1", str(r["seed"]), "H" if r["subspace"] == "hessian" else "R", str(r["D"]),
                         scale, fmt(r["median_mc_over_q"], 2), fmt(r["median_mc_over_q_bulk"], 2),
                         fmt(r["median_mc_over_q_spikes"], 2), f"{100 * r['share_within_3se']:.1f}",
                         fmt(r["vbar_q_over_mc"], 2), fmt(r["median_mc_over_surrogate"], 2),
                         fmt(r["vbar_surrogate_over_mc"], 2), fmt(r["median_mc_over_t"], 2)]
        assert cells[-1] != "n/a" and cells[-3] != "n/a"   # Gaussian: Theorem 1 applies; the surrogate ran


def test_predictor_table_has_one_row_per_gap_of_the_largest_pilot(tiny_pipeline):
    store = tiny_pipeline.store
    saved = [p for p in convergence_records.load_table(store, "predictors") if p["n0"] == 100]
    rows = _rows(tables.predictor_table(store))
    assert len(rows) == len(saved) == 2
    for cells, p in zip(rows, saved):
        lc, ls = p["cost_learning_curve"], p["cost_landscape"]
        # the tiny profile's largest learning-curve size is 200: a measured n there is censored and says so
        measured = r"$\ge$" + _k(p["n_within"]) + " (censored)" if p["n_within"] == 200 else _k(p["n_within"])
        assert cells == ["MNIST", "MLP-1", f"{100 * p['gap']:.1f}", measured, _k(p["n_learning_curve"]),
                         "--", "--", f"{lc['trainings']} / {fmt(int(round(lc['seconds'])))}",
                         f"{ls['trainings']} / {fmt(int(round(ls['seconds'])))}"]
        assert cells[3] == r"$\ge$200 (censored)" and cells[4] != "--"


def test_speed_table_has_one_row_per_saved_speed_row(tiny_pipeline):
    saved = mc_records.load_speed(tiny_pipeline.store)
    rows = _rows(tables.speed_table(tiny_pipeline.store))
    assert len(rows) == len(saved) == 3                         # the main Hessian curve and the sigma sweep x 2
    for cells, r in zip(rows, saved):
        assert cells == ["MNIST", "MLP-1", "2", fmt(r["sigma"], 2), "8", f"{100 * r['relative_se']:.1f}",
                         fmt(int(round(r["T_target"]))), fmt(r["mc_seconds"], 2), fmt(r["mc_seconds_target"], 2),
                         fmt(r["closed_seconds"], 2), fmt(r["jet_seconds"], 2), fmt(r["speedup"], 2),
                         fmt(r["speedup_with_jet"], 2), fmt(r["median_mc_over_q"], 2)]


def _bench_row(measure, value, target, kind):
    ok = None if kind is None else (value <= target if kind == "max" else value >= target)
    return {"measure": measure, "value": value, "target": target, "kind": kind, "ok": ok}


def test_bench_table_and_numbers_without_a_bench_run(tmp_path):
    store = ResultStore("x", root=tmp_path / "results" / "x")
    assert "has not been run" in tables.bench_table(store)
    values = paper_numbers.bench_numbers(store)
    assert values["BenchStatus"].startswith("have not been measured") and values["BenchMissed"] == ""
    # from the layer shapes alone: mlp2 (2 * 200,704 + 6 * 68,096) / 268,800, cnn (2 * 28,224 + 6 * 60,368) / 88,592
    assert values["HvpMultiplyAddsKeptMlpTwo"] == "3.01" and values["HvpMultiplyAddsKeptCnn"] == "4.73"
    assert values["HvpMultiplyAddsRecomputeCnn"] == fmt((4 * 28_224 + 9 * 60_368) / 88_592)


def test_bench_table_and_numbers_read_the_last_complete_bench_run(tmp_path):
    store = ResultStore("x", root=tmp_path / "results" / "x")
    rows = [_bench_row("one HVP / one forward, cnn (N=10000)", 6.27, 3.0, "max"),
            _bench_row("delta_curve s per theta / forward, mlp2 (T=64, D=10)", 0.477, 1.0, "max"),
            _bench_row("PyHessian / ours wall time", 13.7, 10.0, "min"),
            _bench_row("trainer / textbook loop, cnn", 2.58, None, None)]
    bench = ResultStore("bench", root=tmp_path / "results" / "bench")
    payload = {"summary": rows, "load_average": [[0.9, 1, 1], [1.25, 1, 1]], "minutes": 9.04}
    bench.save("bench", "quick", {**payload, "summary": rows[:1]}, {"n": 1000, "threads": 2}, overwrite=True)
    assert "has not been run" in tables.bench_table(store)                # a quick run is not the table
    bench.save("bench", "full", payload, {"n": 10_000, "threads": 2, "mlp2": "results/paper/train/mnist_mlp2_s0"},
               overwrite=True)
    table = tables.bench_table(store)
    body = [line for line in table.splitlines() if line.endswith(r"\\") and "measure &" not in line]
    assert len(body) == 4
    assert r"delta\_curve s per theta" in table and r"\textbf{no}" in table and r"$\le$ 3" in table
    assert r"$\ge$ 10" in table and body[-1].split("&")[2].strip() == "--"
    values = paper_numbers.bench_numbers(store)
    assert values["BenchStatus"].endswith(
        r"10{,}000 MNIST images, MLP-2 from results/paper/train/mnist\_mlp2\_s0, "
        "2 threads, load average 0.9 to 1.2, 9.0 minutes): 2 of its 3 targets are met")
    assert "(CPU: " in values["BenchStatus"]
    assert values["BenchMissed"] == r"; missed: one HVP / one forward, cnn (N=10000), 6.27 against $\le$ 3"
