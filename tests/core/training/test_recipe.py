"""Training recipe: bitwise determinism, learning, evaluation, devices, recipe checks; the train stage's saved
results."""
import pytest
import torch

from lib.core.checks import ParameterError
from lib.core.tensors import torch_threads
from lib.core.training import models
from lib.core.training.recipe import check_recipe, evaluate, textbook_train, train
from lib.infra import data
from lib.infra.config import Train
from lib.records.runs import load_trained
from lib.stages import train as train_stage
from tests.cases import make


def _small():
    return data.training_subset("mnist", 512, seed=0)


def test_same_seed_gives_bitwise_identical_weights():
    x, y = _small()
    nets = []
    for device in ("cpu", torch.device("cpu")):             # a device string or a torch.device: the same run
        net = models.build("mlp1", seed=5)
        hist = train(net, x, y, epochs=2, seed=7, device=device, progress=False)
        nets.append(net)
        assert hist.epochs == 2 and hist.seed == 7 and len(hist.epoch_loss) == 2
    for pa, pb in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(pa, pb)
    other = models.build("mlp1", seed=5)
    train(other, x, y, epochs=2, seed=8, progress=False)
    assert not torch.equal(next(other.parameters()), next(nets[0].parameters()))


def test_training_reduces_loss_and_evaluate_matches_manual():
    x, y = _small()
    net = models.build("mlp1", seed=0)
    before = evaluate(net, x, y)
    hist = train(net, x, y, epochs=3, seed=0, progress=False)
    after = evaluate(net, x, y, batch_size=100)
    assert after["loss"] < 0.5 * before["loss"]
    assert len(hist.epoch_loss) == 3 and hist.epoch_loss[-1] < hist.epoch_loss[0]
    with torch.no_grad():
        logits = net(x)
    assert after["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert after["accuracy"] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    assert after["n"] == 512
    assert not net.training


@pytest.mark.parametrize("name", ["mlp1", "cnn"])       # the plain loop and (where built) the fused CNN gradient
def test_step_losses_are_the_minibatch_losses_of_the_textbook_loop(name):
    x, y = data.training_subset("mnist", 200, seed=0)
    net = models.build(name, seed=3)
    with torch_threads(1):
        hist = train(net, x, y, epochs=2, batch_size=64, seed=4, progress=False)
    assert len(hist.step_loss) == 2 * 4                          # ceil(200 / 64) minibatches per epoch
    sizes = torch.tensor([64, 64, 64, 8] * 2, dtype=torch.float64)
    per_epoch = (torch.tensor(hist.step_loss, dtype=torch.float64) * sizes).reshape(2, 4).sum(1) / 200
    assert per_epoch.tolist() == pytest.approx(hist.epoch_loss, rel=1e-12)
    # an independent loop: the same minibatches (the seeded permutation of each epoch), the loss before each step
    ref = models.build(name, seed=3)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, foreach=False)
    gen, expected = torch.Generator().manual_seed(4), []
    ref.train()
    for _ in range(2):
        order = torch.randperm(200, generator=gen)
        for start in range(0, 200, 64):
            idx = order[start:start + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(ref(x[idx]), y[idx])
            loss.backward()
            expected.append(loss.item())
            opt.step()
    assert hist.step_loss == pytest.approx(expected, rel=1e-4)


def test_evaluate_in_eval_mode_restores_every_flag():
    net, x, y = make("dropout", n=30)
    net.train()
    net[2].eval()                                            # mixed flags: only the dropout in eval mode
    flags = [m.training for m in net.modules()]
    out = evaluate(net, x, y, batch_size=7, device=torch.device("cpu"))
    assert [m.training for m in net.modules()] == flags
    net.eval()
    with torch.no_grad():
        logits = net(x)
    assert out["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-12)
    assert out["accuracy"] == pytest.approx((logits.argmax(1) == y).double().mean().item(), rel=1e-12)


@pytest.mark.parametrize("kw, match", [
    ({"epochs": 0}, r"epochs=0 is not allowed: an integer in \[1, inf\]"),
    ({"epochs": True}, r"epochs=True is not allowed"),
    ({"batch_size": 0}, r"batch_size=0 is not allowed: an integer in \[1, inf\]"),
    ({"lr": -1.0}, r"lr=-1.0 is not allowed: a finite number in \(0.0, inf\]"),
    ({"lr": float("inf")}, r"lr=inf is not allowed"),
    ({"lr": "1e-3"}, r"lr='1e-3' is not allowed.*read as the text '1e-3'"),
    ({"device": "tpu"}, r"device='tpu' is not allowed: a torch.device"),
    ({"device": "auto"}, r"device='auto' is not allowed.*resolved by the caller"),
])
def test_bad_recipe(kw, match):
    x, y = _small()
    with pytest.raises(ParameterError, match=match):
        train(models.build("mlp1", 0), x, y, progress=False, **kw)


def test_check_recipe_and_bad_data():
    check_recipe(1, 1, 5e-324)                               # boundary values pass
    with pytest.raises(ParameterError, match=r"batch_size=2.0 is not allowed"):
        check_recipe(1, 2.0, 1e-3)
    x, y = _small()
    with pytest.raises(ValueError, match="same length, got 512 and 511"):
        train(models.build("mlp1", 0), x, y[:-1], progress=False)
    with pytest.raises(ValueError, match="empty data"):
        evaluate(models.build("mlp1", 0), x[:0], y[:0])
    with pytest.raises(ParameterError, match="device='auto'"):
        evaluate(models.build("mlp1", 0), x, y, device="auto")


def test_train_one_saves_and_skips(tmp_store):
    params = train_stage.training_params("mnist", "mlp1", 0, n_train=256, data_seed=0,
                                         recipe=Train(epochs=1, batch_size=64, lr=1e-3))
    row = train_stage.train_one(tmp_store, params, progress=False)
    assert not row["skipped"] and 0 <= row["test_accuracy"] <= 1
    meta = tmp_store.meta("train", "mnist_mlp1_s0")
    assert meta["params"] == params and meta["seed"] == 0
    assert meta["provenance"]["versions"]["torch"].startswith("2.14.1")
    assert len(meta["provenance"]["git"]["commit"]) >= 7
    again = train_stage.train_one(tmp_store, params, progress=False)
    assert again["skipped"] and again["test_accuracy"] == row["test_accuracy"]
    net, _ = load_trained(tmp_store, "mnist", "mlp1", 0)
    x, y = data.training_subset("mnist", 256, 0)
    assert evaluate(net, x, y)["accuracy"] == pytest.approx(row["train_accuracy"])
    changed = train_stage.train_one(tmp_store, {**params, "epochs": 2}, progress=False)
    assert not changed["skipped"]


def test_missing_trained_model_names_the_notebook(tmp_store):
    from lib.infra.results import MissingResultError

    with pytest.raises(MissingResultError, match="run notebook notebooks/01_train.py"):
        load_trained(tmp_store, "mnist", "mlp2", 0)


@pytest.mark.parametrize("name", ["cnn", "mlp1"])
def test_fused_channels_last_training_equals_the_textbook_loop(name):
    """``train`` (fused Adam; channels-last convolutions) gives the weights of the plain loop to float rounding,
    and hands them back in the default memory format."""
    x, y = _small()
    fast, plain = models.build(name, 3), models.build(name, 3)
    train(fast, x, y, epochs=2, batch_size=32, lr=1e-3, seed=5, progress=False)
    textbook_train(plain, x, y, epochs=2, batch_size=32, lr=1e-3, seed=5)
    for (k, a), b in zip(fast.state_dict().items(), plain.state_dict().values()):
        assert a.is_contiguous(), k
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (k, (a - b).abs().max().item())
    assert not torch.equal(fast.state_dict()["0.weight"] if name == "cnn" else fast.state_dict()["1.weight"],
                           models.build(name, 3).state_dict()["0.weight" if name == "cnn" else "1.weight"])


def test_trainings_in_worker_processes_equal_those_in_this_process(tmp_path):
    """``run_missing`` with two worker processes writes the same weights, bit for bit, as one process: each
    training fixes its own thread count (``Train.threads``), so the results do not depend on ``workers``."""
    from lib.infra.results import ResultStore
    from lib.stages.base import run_missing
    recipe = Train(epochs=1, batch_size=64, lr=1e-3, threads=1)
    params = [train_stage.training_params("mnist", m, s, 256, 0, recipe) for m in ("mlp1", "cnn") for s in (0, 1)]
    one, two = ResultStore("w1", root=tmp_path / "w1"), ResultStore("w2", root=tmp_path / "w2")

    def rows(store, workers):
        tasks = [train_stage.training_task(store, p) for p in params]
        return run_missing(store, tasks, train_stage.train_one, workers, cost=lambda p: p["n_train"])

    with torch_threads(2):                                      # the parent's own count must not leak in
        rows1 = rows(one, 1)
    rows2 = rows(two, 2)
    names = ["mnist_mlp1_s0", "mnist_mlp1_s1", "mnist_cnn_s0", "mnist_cnn_s1"]
    assert [r["name"] for r in rows1] == [r["name"] for r in rows2] == names
    assert not any(r["skipped"] for r in rows1 + rows2)
    for r1, r2 in zip(rows1, rows2):
        a, b = one.load("train", r1["name"]).payload, two.load("train", r2["name"]).payload
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), r1["name"]
        assert r1["test_accuracy"] == r2["test_accuracy"]
    again = rows(two, 2)                                        # all cached now: nothing recomputed
    assert all(r["skipped"] for r in again) and [r["test_accuracy"] for r in again] == [
        r["test_accuracy"] for r in rows2]


def _fails(value):
    if value == 2:
        raise ValueError(f"task value={value} is bad")
    return value * 10


def test_run_tasks_returns_in_order_and_raises_a_worker_error():
    from lib.infra.parallel import run_tasks
    assert run_tasks(_fails, [{"value": v} for v in (0, 1, 3)], workers=2) == [0, 10, 30]
    assert run_tasks(_fails, [{"value": 4}], workers=2) == [40]
    with pytest.raises(ValueError, match="task value=2 is bad"):
        run_tasks(_fails, [{"value": v} for v in (0, 2, 3)], workers=2)
