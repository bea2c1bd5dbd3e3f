"""Training recipe: bitwise determinism, learning, evaluation, devices, recipe checks; the train stage's saved
results."""
import pytest
import torch

from lib.core import models
from lib.core.checks import ParameterError
from lib.core.train import check_recipe, evaluate, train
from lib.infra import data
from lib.infra.config import Train
from lib.stages import train as train_stage
from lib.stages.base import load_trained
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
