"""Training recipe: bitwise determinism, learning, evaluation, saved results."""
import pytest
import torch

from lib.infra import data

from lib.core import models

from lib.stages import pipeline
from lib.core.train import evaluate, train


def _small():
    return data.training_subset("mnist", 512, seed=0)


def test_same_seed_gives_bitwise_identical_weights():
    x, y = _small()
    nets = []
    for _ in range(2):
        net = models.build("mlp1", seed=5)
        train(net, x, y, epochs=2, seed=7, progress=False)
        nets.append(net)
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
    assert not net.training


@pytest.mark.parametrize("kw, match", [({"epochs": 0}, "epochs=0"), ({"batch_size": 0}, "batch_size=0"),
                                      ({"lr": -1.0}, "lr=-1.0"), ({"device": "tpu"}, "device='tpu'")])
def test_bad_recipe(kw, match):
    x, y = _small()
    with pytest.raises(ValueError, match=match):
        train(models.build("mlp1", 0), x, y, progress=False, **kw)


def test_train_one_saves_and_skips(tmp_store):
    params = pipeline.training_params("mnist", "mlp1", 0, n_train=256, data_seed=0, epochs=1, batch_size=64,
                                      lr=1e-3)
    row = pipeline.train_one(tmp_store, params, progress=False)
    assert not row["skipped"] and 0 <= row["test_accuracy"] <= 1
    meta = tmp_store.meta("train", "mnist_mlp1_s0")
    assert meta["params"] == params and meta["seed"] == 0
    assert meta["provenance"]["versions"]["torch"].startswith("2.14.1")
    assert len(meta["provenance"]["git"]["commit"]) >= 7
    again = pipeline.train_one(tmp_store, params, progress=False)
    assert again["skipped"] and again["test_accuracy"] == row["test_accuracy"]
    net, _ = pipeline.load_trained(tmp_store, "mnist", "mlp1", 0)
    x, y = data.training_subset("mnist", 256, 0)
    assert evaluate(net, x, y)["accuracy"] == pytest.approx(row["train_accuracy"])
    changed = pipeline.train_one(tmp_store, {**params, "epochs": 2}, progress=False)
    assert not changed["skipped"]


def test_missing_trained_model_names_the_notebook(tmp_store):
    from lib.infra.results import MissingResultError

    with pytest.raises(MissingResultError, match="run notebook notebooks/01_train.py"):
        pipeline.load_trained(tmp_store, "mnist", "mlp2", 0)


def test_run_training_rejects_unknown_names_before_training(tmp_store):
    from lib.stages.pipeline import run_training

    kw = dict(seeds=[0], n_train=100, data_seed=0, epochs=1, batch_size=8, lr=1e-3, progress=False)
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['vgg'\]; allowed: \['mlp1', 'mlp2', 'cnn'\]"):
        run_training(tmp_store, datasets=["mnist"], models_=["mlp2", "vgg"], **kw)
    with pytest.raises(ValueError, match="cifar"):
        run_training(tmp_store, datasets=["cifar"], models_=["mlp2"], **kw)
    assert tmp_store.names("train") == []
