"""Training recipe (``lib.core.training.recipe``): bitwise determinism, learning, evaluation, devices, recipe checks,
the fused channels-last path against the textbook loop."""
import pytest
import torch

from lib.core.checks import ParameterError
from lib.core.tensors import torch_threads
from lib.core.training import models
from lib.core.training.recipe import check_recipe, evaluate, textbook_train, train
from lib.infra import data
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
