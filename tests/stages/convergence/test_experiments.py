"""The convergence experiments (``lib.stages.convergence.experiments``): learning-curve trainings, pilots that see only
their first n0 samples (a real pilot reads nothing beyond them), and the R0 curves with their bound, against
independent computations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.core import hessian
from lib.core.landscape.sampling import make_sampler
from lib.core.sample_size.decay import fit_slope
from lib.core.training import models
from lib.core.training.recipe import evaluate, train
from lib.infra import data
from lib.infra.config import Train
from lib.records import convergence as convergence_records
from lib.records.runs import load
from lib.stages import train as train_stage
from lib.stages.convergence.experiments import pilot_estimate
from tests.cases import explicit_losses
from tests.stages.conftest import DS, MODEL, RUN, SEED, _differences, _flat, _hvp

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_convergence_learning_curve_trainings(tiny_pipeline):
    store = tiny_pipeline.store
    rows = convergence_records.load_table(store, "learning_curve")
    assert [(r["dataset"], r["model"], r["seed"], r["n"]) for r in rows] == [(DS, MODEL, SEED, n)
                                                                             for n in (25, 50, 100, 200)]
    # n = n_train is the main trained model, reused
    assert store.names("learning_curve") == [f"{RUN}_n100", f"{RUN}_n25", f"{RUN}_n50"]
    main = store.meta("train", RUN)
    assert rows[-1]["test_accuracy"] == main["summary"]["test_accuracy"] and rows[-1]["seconds"] == main["seconds"]
    xt, yt = data.load(DS, "test")
    recipe = tiny_pipeline.stage("train")[1]
    for r in rows[:-1]:
        res = load(store, "learning_curve", f"{RUN}_n{r['n']}")
        assert res.meta["params"] == train_stage.training_params(DS, MODEL, SEED, r["n"], 0, recipe)
        net = models.build(res.payload["model"], SEED)
        net.load_state_dict(res.payload["state_dict"])
        on_test = evaluate(net.eval(), xt, yt)
        assert r["test_accuracy"] == pytest.approx(on_test["accuracy"], abs=1e-12)
        assert r["test_loss"] == pytest.approx(on_test["loss"], rel=1e-6)
        x, y = data.training_subset(DS, r["n"], 0)
        with torch.no_grad():
            assert r["train_loss"] == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-5)


@pytest.mark.parametrize("n0", [50, 100])
def test_convergence_pilot_sees_only_its_first_n0_samples(tiny_pipeline, n0):
    """The pilot is the recipe retrained on the first n0 samples (bitwise: training is deterministic), evaluated
    on them and on the test set; its lambda_1 is the top eigenvalue of its own n0-sample Hessian and its V-bar the
    across-sample loss variance at sigma = 0.3 in that Hessian subspace."""
    store = tiny_pipeline.store
    row = next(r for r in convergence_records.load_table(store, "pilots") if r["n0"] == n0)
    res = load(store, "pilots", f"{RUN}_n{n0}")
    recipe = tiny_pipeline.stage("train")[1]
    x, y = data.training_subset(DS, n0, 0)
    net = models.build(MODEL, SEED)
    train(net, x, y, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=SEED, progress=False)
    for key, value in net.state_dict().items():
        assert torch.equal(res.payload["state_dict"][key], value), key
    on_train, on_test = evaluate(net, x, y), evaluate(net, *data.load(DS, "test"))
    assert row["train_accuracy"] == pytest.approx(on_train["accuracy"], abs=1e-12)
    assert row["test_accuracy"] == pytest.approx(on_test["accuracy"], abs=1e-12)
    assert row["gap"] == pytest.approx(on_test["loss"] - on_train["loss"], rel=1e-5)
    assert (row["seed"], row["sigma"]) == (SEED, 0.3)
    assert row["cost"]["trainings"] == 1 and row["cost"]["training_samples_seen"] == n0 * recipe.epochs
    assert row["lambda_1"] == float(res.payload["eigenvalues"][0])
    net64, x64 = net.double(), x.double()
    v = torch.randn(sum(q.numel() for q in net64.parameters()), generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    for _ in range(60):                                    # power iteration: a lower bound that converges
        v = _hvp(net64, x64, y, v)
        v = v / torch.linalg.norm(v)
    rq = float(v @ _hvp(net64, x64, y, v))
    assert 0.95 * row["lambda_1"] < rq <= row["lambda_1"] * (1 + 1e-3)
    basis = hessian.top_eigenpairs(hessian.HessianOperator(net64, x64, y), 2, tol=1e-6, seed=SEED).eigenvectors
    z = make_sampler("gaussian", sigma=1.0).sample(4, 2, seed=SEED)
    w0 = _flat(net64)
    # an eigenvector's sign is arbitrary (the solver's may differ with the thread count): V-bar of the 4 thetas
    # for each choice of signs, the pilot's is one of them
    vbars = []
    for signs in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        P = torch.tensor(signs, dtype=torch.float64)[:, None] * basis
        L = np.stack([explicit_losses(net64, x64, y, w0 + 0.3 * th @ P).numpy() for th in z])
        vbars.append(L.var(axis=1).mean())
    assert min(abs(row["vbar_sigma"] / v - 1) for v in vbars) < 1e-3, (row["vbar_sigma"], vbars)


def test_convergence_r0_curve_bound_and_measured_norms(tiny_pipeline):
    store = tiny_pipeline.store
    (row,) = convergence_records.load_table(store, "r0")
    name = "mnist_mlp8_nobias_s0"
    assert row["name"] == name and row["hidden"] == [8] and row["n_params"] == 784 * 8 + 8 * 10
    p = convergence_records.load_r0_curve(store, name)
    losses = np.asarray(p["losses"])
    assert losses.shape == (100,) and np.all(losses > 0)
    np.testing.assert_array_equal(p["k"], np.arange(1, 100))
    g = torch.Generator().manual_seed(SEED)
    diffs = np.stack([np.abs(_differences(losses[torch.randperm(100, generator=g).numpy()])) for _ in range(2)])
    np.testing.assert_allclose(p["mean"], diffs.mean(0), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(p["stderr"], diffs.std(0, ddof=1) / np.sqrt(2), rtol=1e-4, atol=1e-9)
    assert row["M_l"] == pytest.approx(losses.max(), rel=1e-12)
    np.testing.assert_allclose(p["bound_curve"], 2 * losses.max() / (p["k"] + 1), rtol=1e-12)
    x, _ = data.training_subset(DS, 100, 0)
    assert row["M_x"] == pytest.approx(float(x.flatten(1).double().norm(dim=1).max()), rel=1e-12)
    L, MW, Mx = row["n_layers"], row["M_W"], row["M_x"]
    bound = L * 2 ** 0.5 * Mx ** 2 * MW ** (2 * L) + 2 ** 0.5 * MW ** 2 * (MW ** (2 * L) - 1) / (MW ** 2 - 1)
    assert L == 2 and row["hessian_bound"] == pytest.approx(bound, rel=1e-12)
    norms = np.asarray(p["hessian_norms"])
    assert norms.shape == (1,) and row["max_measured_norm"] == norms.max() > 0
    assert row["hessian_bound"] >= row["max_measured_norm"]          # the bound holds for the measured sample
    assert p["hessian_indices"] == torch.randperm(100, generator=torch.Generator().manual_seed(SEED))[:1].tolist()
    assert row["slope"] == pytest.approx(fit_slope(p["k"], p["mean"], k_min=10).slope, rel=1e-12)


def _run(x, y, xt, yt):
    payload, summary = pilot_estimate(x, y, 64, "mlp1", 0, Train(epochs=1, batch_size=32), 2, 0.3, 4, xt, yt,
                                      gap_thetas=2)
    summary = {k: v for k, v in summary.items() if k != "cost"}
    return payload, summary


def test_pilot_ignores_samples_beyond_n0():
    x, y = data.training_subset("mnist", 96, 0)
    xt, yt = data.load("mnist", "test")
    xt, yt = xt[:200], yt[:200]
    p1, s1 = _run(x, y, xt, yt)
    x2, y2 = x.clone(), y.clone()
    x2[64:] = torch.randn_like(x2[64:]) * 5          # samples n0+1..N replaced by noise and relabelled
    y2[64:] = (y2[64:] + 3) % 10
    p2, s2 = _run(x2, y2, xt, yt)
    assert s1 == s2
    assert all(torch.equal(p1["state_dict"][k], p2["state_dict"][k]) for k in p1["state_dict"])
    assert torch.equal(p1["eigenvalues"], p2["eigenvalues"])
    # and the pilot does depend on its own n0 samples
    x3 = x.clone()
    x3[:8] = torch.randn_like(x3[:8])
    _, s3 = _run(x3, y, xt, yt)
    assert s3["vbar_sigma"] != s1["vbar_sigma"]
