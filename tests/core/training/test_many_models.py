"""Many trainings at once (``lib.core.training.many_models``) equal one-at-a-time trainings, see only their subsets
and evaluate as a loop does; minibatches are seeded and inside the subset."""
import pytest
import torch
import torch.nn.functional as F

from lib.core.training.many_models import evaluate_many, minibatch_indices, train_many, train_one
from lib.core.training.task_models import build_task_model

#: float tolerance of stacked against separate training (batched products round differently): max |w - w_ref|
TOL = 2e-5


@pytest.mark.parametrize("family,shape,widths", [
    ("linear", (1, 8, 8), {}), ("mlp", (12,), {"width": 16}), ("cnn", (1, 8, 8), {"channels": (2, 4)}),
    ("vit", (1, 8, 8), {"patch": 4, "dim": 8, "heads": 2})])
def test_stacked_training_equals_one_at_a_time(family, shape, widths):
    torch.manual_seed(0)
    x, y = torch.randn(200, *shape), torch.randint(0, 3, (200,))
    models = [build_task_model(family, shape, 3, seed, **widths) for seed in (0, 1, 2)]
    subsets = [torch.arange(40), torch.arange(10, 200), torch.arange(0, 200, 3)]
    stack = train_many(models, x, y, subsets, [5, 6, 7], steps=25, batch_size=16, lr=1e-2, chunk=2)
    for i, m in enumerate(models):
        ref = train_one(m, x, y, subsets[i], [5, 6, 7][i], steps=25, batch_size=16, lr=1e-2)
        got = stack.model(i)
        for (name, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
            assert (a - b).abs().max() < TOL, (family, name)
        assert not torch.equal(m.state_dict()[next(iter(m.state_dict()))], got.state_dict()[next(iter(m.state_dict()))])


def test_models_see_only_their_subset():
    # the pool past a model's subset is NaN: a model that read it would end with NaN weights
    torch.manual_seed(1)
    x, y = torch.randn(100, 5), torch.randint(0, 2, (100,))
    x[50:] = float("nan")
    stack = train_many([build_task_model("mlp", (5,), 2, 0, width=4)] * 2, x, y, [torch.arange(50), torch.arange(7)],
                       [0, 1], steps=20, batch_size=8)
    assert all(torch.isfinite(v).all() for v in stack.params.values())


def test_evaluate_many_equals_a_loop():
    torch.manual_seed(2)
    x, y = torch.randn(300, 1, 8, 8), torch.randint(0, 4, (300,))
    models = [build_task_model("cnn", (1, 8, 8), 4, s, channels=(2, 4)) for s in range(3)]
    stack = train_many(models, x, y, [torch.arange(300)] * 3, [0, 1, 2], steps=5, batch_size=16)
    ev = evaluate_many(stack, x, y, rows=128, models_per_call=2)
    for i in range(3):
        with torch.no_grad():
            logits = stack.model(i)(x)
        assert ev["accuracy"][i] == pytest.approx(float((logits.argmax(1) == y).double().mean()), abs=1e-12)
        assert ev["loss"][i] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


def test_minibatches_are_seeded_and_inside_the_subset():
    s = torch.tensor([3, 9, 11])
    a, b = minibatch_indices(s, 50, 4, 0), minibatch_indices(s, 50, 4, 0)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {3, 9, 11}
