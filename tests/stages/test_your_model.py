"""Notebook 07's stage (``lib.stages.your_model``: a residual CNN on scikit-learn's digits through
``lib.api.analyze``): the model family, the stage on tiny settings against independent computations, its paper
macros and figure, and the runner's order (06_figures after 07); the digits loader: tests/infra/test_data.py."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lib.api import analyze
from lib.core.landscape.sampling import make_sampler
from lib.core.sample_size.decay import fit_slope
from lib.core.tensors import n_params, torch_threads
from lib.core.training.recipe import TRAINER, train
from lib.infra import config, data, runner
from lib.infra.config import Common, YourModel
from lib.infra.results import MissingResultError, ResultStore
from lib.outputs import figures, latex
from lib.outputs import numbers as paper_numbers
from lib.records import REGISTRY
from lib.records.your_model import load_your_model, your_model_runs
from lib.stages import your_model as ym

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("channels", [1, 3, 8, 16])
def test_parameter_count_is_the_closed_form(channels):
    net = ym.build_model(channels, 0)
    assert n_params(net) == ym.parameter_count(channels) == 36 * channels ** 2 + 24 * channels + 10
    assert net(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_residual_blocks_have_identity_skips_and_the_seed_fixes_the_weights():
    a, b = ym.build_model(4, 3), ym.build_model(4, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    state = torch.random.get_rng_state()
    ym.build_model(4, 7)
    assert torch.equal(state, torch.random.get_rng_state())           # global RNG untouched
    block = a.block1
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    h = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(block(h), torch.tanh(h))              # zero residual branch: tanh(h + 0)


# ------------------------------------------------------------------------------------------------ stage
TINY = YourModel(n_train=60, channels=2, epochs=2, batch_size=16, lr=0.01, D=2, sigma=0.1, n_samples=8,
                 n_orders=4, thresholds=[0.01, 0.001, 0.0001], tol=0.01, quadratic=True)
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("your_model")
    store = ResultStore("ym_test", root=root / "ym_test")
    with torch_threads(1):
        rows = ym.run(store, Common(profile="ym_test", seeds=SEEDS), TINY)
        again = ym.run(store, Common(profile="ym_test", seeds=SEEDS), TINY)
    return store, rows, again


def _retrained(seed):
    x, y = data.digits("train", TINY.n_train)
    net = ym.build_model(TINY.channels, seed)
    train(net, x, y, epochs=TINY.epochs, batch_size=TINY.batch_size, lr=TINY.lr, seed=seed, progress=False)
    return net, x, y


def test_stage_saves_one_result_per_seed_and_skips_identical_work(tiny):
    store, rows, again = tiny
    assert [r["name"] for r in rows] == ["digits_rescnn_s0", "digits_rescnn_s1"] and store.names("your_model") == [
        "digits_rescnn_s0", "digits_rescnn_s1"]
    assert not any(r["skipped"] for r in rows) and all(r["skipped"] for r in again)
    meta = load_your_model(store, 0)["meta"]
    assert meta["params"] == {"dataset": "digits", "model": "rescnn", "seed": 0, "data_sha256": data.DIGITS_SHA256,
                              "split_seed": 0, "trainer": TRAINER, "band": "bootstrap_t",
                              **json.loads(json.dumps(dataclasses.asdict(TINY)))}
    assert rows[0]["n_params"] == ym.parameter_count(2) and rows[0]["n_train"] == 60 and rows[0]["n_test"] == 297


def test_stage_report_is_analyze_on_the_retrained_model_and_its_summaries_follow(tiny):
    store, rows, _ = tiny
    for seed, row in zip(SEEDS, rows):
        saved = load_your_model(store, seed)
        net, x, y = _retrained(seed)
        xt, yt = data.digits("test")
        with torch.no_grad():
            acc = (net(xt).argmax(1) == yt).double().mean().item()
        assert row["test_accuracy"] == pytest.approx(acc, abs=1e-12)
        rep = analyze(net, (x, y), D=TINY.D, sigma=TINY.sigma, n_samples=TINY.n_samples, n_orders=TINY.n_orders,
                      thresholds=TINY.thresholds, seed=seed, tol=TINY.tol, batch_size=len(x))
        mine, theirs = rep.to_dict(), saved["report"]
        for key in ("eigenvalues", "delta", "stderr", "vbar", "order_median", "order_formula", "Q", "sample_sizes",
                    "N", "D", "n_params"):
            assert mine[key] == theirs[key], key
        # the slope, K and V-bar summaries recomputed from the saved curve
        k, delta = np.asarray(theirs["k"]), np.asarray(theirs["delta"])
        assert row["slope"] == pytest.approx(fit_slope(k, delta, k_min=10).slope, rel=1e-12)
        assert row["vbar"] == theirs["vbar"] and row["lambda_1"] == theirs["eigenvalues"][0]
        np.testing.assert_allclose(theirs["order_formula"], theirs["vbar"] * 60 / (59 * k * (k + 1)), rtol=1e-12)
        for z in row["sample_sizes"]:
            below = delta < z["threshold"]
            bad = np.flatnonzero(~below)
            expect = None if not below[-1] else (1 if len(bad) == 0 else int(bad[-1] + 2))
            assert z["K"] == expect
            kk = np.arange(1, 10 ** 6)
            assert z["K_closed"] == int(kk[np.argmax(theirs["vbar"] * 60 / (59 * kk * (kk + 1)) < z["threshold"])])
        # the mean loss over the thetas by plain forward passes at w* + P^T theta
        thetas = make_sampler("gaussian", sigma=TINY.sigma).sample(TINY.n_samples, TINY.D, seed=seed).float()
        w = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        names = [n for n, _ in net.named_parameters()]
        shapes = [p.shape for p in net.parameters()]
        losses = []
        for t in thetas:
            flat = w + rep.basis.T @ t
            parts = torch.split(flat, [int(np.prod(s)) for s in shapes])
            weights = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}
            with torch.no_grad():
                losses.append(F.cross_entropy(functional_call(net, weights, (x,)), y).item())
        np.testing.assert_allclose(saved["loss_theta"], losses, rtol=1e-4)
        assert row["loss_theta"] == pytest.approx(np.mean(saved["loss_theta"]), rel=1e-12)
        assert len(saved["order_q05"]) == len(k) and np.all(np.asarray(saved["order_q05"]) <= saved["order_q95"])


def test_runs_of_other_settings_are_not_mixed_in(tiny, tmp_path):
    store, _, _ = tiny
    assert your_model_runs(store) == SEEDS
    other = ResultStore("ym_other", root=tmp_path / "ym_other")
    with pytest.raises(MissingResultError, match=r"run notebook notebooks/07_your_model.py first"):
        your_model_runs(other)
    ym.your_model_one(other, 0, TINY)
    ym.your_model_one(other, 4, dataclasses.replace(TINY, sigma=0.2))
    assert your_model_runs(other) == [0]


def test_a_too_large_subspace_fails_fast_naming_the_parameter(tmp_store):
    with pytest.raises(ValueError, match=r"your_model.D=300 must be smaller than the parameter count of the "
                                         r"residual CNN with channels=2 \(202\)"):
        ym.your_model_one(tmp_store, 0, dataclasses.replace(TINY, D=300))


def test_paper_macros_are_the_saved_values(tiny):
    store, rows, _ = tiny
    v = paper_numbers.your_model_numbers(store)
    first = rows[0]
    z = first["sample_sizes"][1]                                      # the middle threshold, 1e-3
    assert v["YourModelDelta"] == latex.fmt(0.001) == "0.001"
    assert v["YourModelK"] == (latex.fmt(z["K"]) if z["K"] is not None else "not reached")
    assert v["YourModelKClosed"] == latex.fmt(z["K_closed"])
    assert v["YourModelKUpper"] == (latex.fmt(int(round(z["K_order_upper"]))) if z["K_order_upper"] is not None
                                    else "not reached")
    assert v["YourModelAcc"] == f"{100 * np.mean([r['test_accuracy'] for r in rows]):.1f}"
    assert v["YourModelParams"] == "202" and v["YourModelNTrain"] == "60" and v["YourModelSeeds"] == "2"
    assert v["YourModelSlope"] == latex.fmt(first["slope"]) and v["YourModelVbar"] == latex.fmt(first["vbar"])
    assert v["YourModelSigma"] == "0.1" and v["YourModelD"] == "2" and v["YourModelSeedList"] == "0, 1"
    assert v["YourModelSeconds"] == latex.fmt(np.mean([r["analyze_seconds"] for r in rows]), 2)
    assert all(name.isalpha() for name in v)
    needed = {m for m in latex.required_macros() if m.startswith("YourModel")}
    assert len(needed) > 20 and needed <= set(v)          # the paper's "Beyond MNIST" macros, none a placeholder
    assert latex.placeholders(v) == sorted(m for m in latex.required_macros() if m not in v)
    assert paper_numbers.your_model_numbers(ResultStore("none", root=store.root.parent / "none")) == {}


def test_figure_draws_every_seed(tiny):
    store, _, _ = tiny
    fig = figures.your_model(store)
    left, right = fig.axes[:2]
    assert left.get_xscale() == right.get_xscale() == "log"
    assert "residual CNN (202 parameters), N = 60" in left.get_title() and left.get_ylabel() and right.get_ylabel()
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert "seed 1" in labels and any("random orders" in t for t in labels)
    assert sum("median over orders" in t.get_text() for t in right.get_legend().get_texts()) == len(SEEDS)


# ------------------------------------------------------------------------------------------------ order
def test_the_runner_runs_the_figures_notebook_last():
    stems = [p.stem for p in runner.notebooks()]
    assert stems[-1] == "06_figures" and stems.index("07_your_model") < stems.index("06_figures")
    assert stems[:-1] == sorted(stems[:-1])                           # the others by number
    assert [p.stem for p in runner.select(["06_figures", "07"])] == ["07_your_model", "06_figures"]
    assert [REGISTRY[s].notebook for s in config.STAGES] == stems    # stages, registry and runner agree
    assert list(REGISTRY) == list(config.STAGES)
