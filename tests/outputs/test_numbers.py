"""The paper's numbers (``lib.outputs.numbers``): the specification note, and every number against the saved results."""
import numpy as np
import pytest
from scipy.stats import spearmanr

from lib.core.sample_size.decay import first_k_below, fit_slope
from lib.outputs import numbers as paper_numbers
from lib.outputs import registry
from lib.outputs.latex import fmt, pct
from lib.records import convergence as convergence_records
from lib.records import monte_carlo as mc_records
from lib.records import spectrum as spectrum_records
from tests.conftest import TINY_TIMINGS
from tests.stages.conftest import DS, MODEL, RUN, SEED, N

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_specification_note_names_each_trimmed_value_read_from_the_results(tiny_pipeline, monkeypatch):
    store, common = tiny_pipeline.store, tiny_pipeline.stage("figures")[0]
    plan = registry.Inputs.of(store, common).plan
    args = (store, common.datasets, common.models, common.seeds, plan)
    assert tiny_pipeline.out["figures"]["numbers"]["SpecificationNote"] == paper_numbers.specification_note(*args)
    # the tiny profile: T = 8, 4 probes, 8 SLQ steps, 3 x 3 surfaces against the specification's values
    assert paper_numbers.specification_note(*args, {"mlp1": 1, "cnn": 1}) == (
        "The profile trims the specification to fit a 2-core CPU: the main curves use $T=8$ draws rather than "
        "1{,}024, the trace 4 products rather than 30, the density 8 Lanczos steps rather than 80, "
        "the surfaces a $3\\times3$ grid rather than $21\\times21$ (\\texttt{make reproduce FULL=1} runs it in "
        "full)")                                                          # one seed of one: nothing capped
    three = [0, 1, 2]
    assert ", the MLP-1 spectrum 1 seed of 3 (" in paper_numbers.specification_note(
        store, common.datasets, common.models, three, plan, {"mlp1": 1})
    # a build at (or above) every value of the specification says so
    monkeypatch.setattr(paper_numbers, "FULL_SPECIFICATION", {"monte_carlo.n_samples": 8, "spectrum.trace_probes": 4,
                                                       "spectrum.slq_iter": 8, "projection.grid_points": 3,
                                                       "common.spectrum_max_seeds": {}})
    assert paper_numbers.specification_note(*args).startswith("The profile runs the specification in full ($T=8$")


def test_full_space_and_speed_numbers_equal_what_the_results_hold(inputs, tiny_pipeline):
    store = tiny_pipeline.store
    values = registry.numbers(inputs, timings=TINY_TIMINGS)
    pairs = mc_records.load_full_space_plan(store)

    def ratio(p):
        a, b = (mc_records.load_full_space_curve(store, p[k]) for k in ("subspace", "full"))
        return float(np.median(a["delta"] / b["delta"]))

    (main,) = [p for p in pairs if (p["D"], p["sigma"], p["scale"]) == (2, 0.3, "norm")]
    assert values["FullRuns"] == "MNIST, MLP-1, seed 0" and values["FullT"] == "4"
    assert (values["FullD"], values["FullSigma"]) == ("2", "0.3")
    assert values["FullRatioMain"] == fmt(ratio(main), 2)
    (hi,) = [p for p in pairs if (p["line"], p["sigma"], p["scale"]) == ("sigma", 1.0, "coordinate")]
    assert values["FullRatioCoordSigmaHigh"] == fmt(ratio(hi), 2) and values["FullSigmaHigh"] == "1"
    (lo,) = [p for p in pairs if (p["line"], p["D"], p["scale"]) == ("dim", 1, "norm")]
    assert values["FullRatioDimLow"] == fmt(ratio(lo), 2) and values["FullDimLow"] == "1"
    sub = mc_records.load_full_space_curve(store, main["subspace"])
    thr = 0.01                                                  # the middle of the sorted grid [0.001, 0.01]
    k = first_k_below(sub["k"], sub["delta"], thr)
    assert values["FullKSub"] == (fmt(k) if k else "not reached")
    kp = first_k_below(sub["k"], sub["abs_mean"], np.sqrt(thr))
    assert values["FullKPointwise"] == (fmt(kp) if kp else "not reached")
    if k is not None:                   # Jensen per k: Delta_k < thr for k >= K gives E|d_k| < sqrt(thr) there
        assert kp is not None and kp <= k
    speed = mc_records.load_speed(store)
    assert values["SpeedRatioMnistMlpOne"] == fmt(speed[0]["speedup"], 2)
    assert values["SpeedMcMnistMlpOne"] == fmt(speed[0]["mc_seconds_target"], 2)
    assert values["SpeedAccuracySigmaHigh"] == fmt(speed[-1]["median_mc_over_q"], 2)
    assert values["SpeedSigma"] == "0.3" and values["SpeedRuns"] == "1"


def test_numbers_equal_what_the_results_hold(inputs, tiny_pipeline):
    store = tiny_pipeline.store
    values = registry.numbers(inputs, timings=TINY_TIMINGS)
    trained = store.meta("train", RUN)["summary"]
    p = spectrum_records.load_spectrum(store, DS, MODEL, SEED)
    ev = p["eigenvalues"].numpy()
    assert values["Profile"] == "pipeline_test"
    assert (values["NTrain"], values["Epochs"], values["NSeeds"], values["KTop"]) == ("200", "1", "1", "4")
    assert values["AccMnistMlpOne"] == f"{100 * trained['test_accuracy']:.1f}" and values["AccSdMnistMlpOne"] == "0.0"
    assert values["TrainLossMnistMlpOne"] == fmt(trained["train_loss"])
    assert values["LambdaOneMnistMlpOne"] == fmt(ev[0]) and values["LambdaLastMnistMlpOne"] == fmt(ev[3])
    assert values["LambdaMinMnistMlpOne"] == fmt(p["smallest"]) and values["TraceMnistMlpOne"] == fmt(p["trace"])
    assert values["ParamsMlpOne"] == "203{,}530" and values["ParamsMlpTwo"] == "269{,}322"
    cpu = store.meta("train", RUN)["provenance"]["cpu"]["model"]
    assert cpu and values["CpuModel"] == cpu.replace("_", r"\_")
    assert (values["McD"], values["McSigma"], values["McT"], values["McOrders"]) == ("2", "0.3", "8", "2")
    plan = mc_records.load_plan(store)
    for sub, tag in (("hessian", "Hess"), ("random", "Rand")):
        c = mc_records.load_curve(store, next(s for s in mc_records.main_curves(plan) if s.subspace == sub))
        assert values[f"SlopeMnistMlpOne{tag}"] == fmt(fit_slope(c["k"], c["delta"], k_min=10).slope)
        assert values[f"VbarMnistMlpOne{tag}"] == fmt(c["vbar"])
        assert values[f"KTwoMnistMlpOne{tag}"] == fmt(np.median((c["k"] ** 2 * c["delta"])[c["k"] >= 10]))
        L = (np.cumsum(c["losses0"]) / np.arange(1, N + 1))[:-1]
        assert values[f"RhoMnistMlpOne{tag}"] == fmt(spearmanr(c["delta"], L).statistic, 2)
    sample = next(r for r in convergence_records.load_table(store, "sample_size")
                  if r["scale"] == "sigma" and r["delta"] == 0.01)
    assert values["DeltaTable"] == "0.01"              # the middle of the sorted grid [0.001, 0.01]
    assert values["KMcMnistMlpOne"] == str(sample["K_fixed"])
    c = mc_records.load_curve(store, next(s for s in mc_records.main_curves(plan) if s.subspace == "hessian"))
    k = np.arange(1, 100 * N)
    assert values["KClosedMnistMlpOne"] == fmt(int(k[np.argmax(c["vbar"] * N / ((N - 1) * k * (k + 1)) < 0.01)]))
    assert values["AccKMnistMlpOne"] == pct(sample["test_accuracy_K"])
    assert (values["TheorySigmaLow"], values["TheorySigmaHigh"]) == ("0.1", "1")
    (r0,) = convergence_records.load_table(store, "r0")
    assert values["RZeroSlopeMin"] == values["RZeroSlopeMax"] == fmt(r0["slope"])
    assert values["BoundOverMeasuredMin"] == fmt(r0["hessian_bound"] / r0["max_measured_norm"])
    assert (values["TimeTrain"], values["TimeMonteCarlo"], values["TimeTotal"]) == ("1", "1.5", "2.5")
    for other in ("AccMnistMlpTwo", "KMcFashionCnn", "SlopeFashionMlpOneHess", "LambdaOneMnistCnn"):
        assert values.get(other, "n/a") == "n/a"          # runs the profile does not have: no number
    assert all(name.isalpha() for name in values) and all(isinstance(v, str) for v in values.values())


def test_api_sentence_states_the_public_operators_rows():
    """The bench's public-operator sentence reads the MLP run: the picked engine's and the rebuilt product in
    gradients, curvlinops where it ran, the top-k time; nothing without an MLP run."""
    costs = {"n_params": 11_388_010, "N": 2000, "rows": [
        {"operator": "ours (structured)", "engine": "structured", "in_gradients": 1.16},
        {"operator": "ours (rebuild)", "engine": "rebuild", "in_gradients": 2.52},
        {"operator": "curvlinops", "engine": None, "in_gradients": 2.58}]}
    run = {"model": "mlp", "costs": costs, "rows": [{"k": 10, "top_seconds": 121.0, "top_hvps": 43}]}
    text = paper_numbers.api_sentence([run])
    assert "11.4M-parameter MLP" in text and "1.16 gradients with its structured state" in text
    assert "against 2.52 when" in text and "2.58 for curvlinops" in text
    assert "top-10 eigenpairs take 121 s in 43 products by ARPACK's Lanczos." in text   # saved before "method"
    thick = {"k": 10, "top_seconds": 73.3, "top_hvps": 41, "method": "thick-restart", "top_growth_vectors": 16.1}
    text_thick = paper_numbers.api_sentence([{**run, "rows": [thick]}])
    assert ("top-10 eigenpairs take 73.3 s in 41 products by the thick-restart Lanczos, which grew the peak memory "
            "by 16.1 float64 vectors") in text_thick
    legacy = {**costs, "rows": [{k: v for k, v in r.items() if k != "engine"} for r in costs["rows"]]}
    assert paper_numbers.api_sentence([{**run, "costs": legacy}]) == text      # runs saved before "engine"
    assert paper_numbers.api_sentence([{**run, "model": "vit"}]) == ""
