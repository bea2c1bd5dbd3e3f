"""lib.core.tensors: flat weight vectors and their views, device/dtype, eval mode, data chunks."""
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from lib.core.tensors import chunks, device_dtype, eval_mode, flat_params, n_params, param_layout, unflatten
from tests.cases import NETS, make, seeded_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.mark.parametrize("kind", ["relu", "cnn", "nobias"])
def test_flat_params_n_params_and_layout(kind):
    model, _, _ = make(kind)
    w = flat_params(model)
    torch.testing.assert_close(w, parameters_to_vector(model.parameters()).detach(), rtol=0, atol=0)
    assert not w.requires_grad and len(w) == n_params(model) == sum(p.numel() for p in model.parameters())
    w += 1.0                                                      # a copy: the model is untouched
    torch.testing.assert_close(parameters_to_vector(model.parameters()).detach(), w - 1.0, rtol=0, atol=0)
    names, shapes, numels = param_layout(model)
    assert names == [n for n, _ in model.named_parameters()]
    assert shapes == [p.shape for p in model.parameters()] and numels == [p.numel() for p in model.parameters()]
    assert n_params(NETS["relu"][0]()) == 6 * 5 + 5 + 5 * 3 + 3


@pytest.mark.parametrize("kind", ["relu", "cnn"])
def test_unflatten_views_round_trip_with_parameters_to_vector(kind):
    model, x, _ = make(kind, n=7)
    n = n_params(model)
    w = torch.arange(n, dtype=torch.float64) / n
    params = unflatten(model, w)
    assert list(params) == [name for name, _ in model.named_parameters()]
    for p, v in zip(model.parameters(), params.values()):
        assert v.shape == p.shape
    torch.testing.assert_close(parameters_to_vector(params.values()), w, rtol=0, atol=0)
    w[0] = -5.0                                                    # views, not copies
    assert next(iter(params.values())).flatten()[0].item() == -5.0
    # the model's own weights, unflattened, reproduce its forward pass
    with torch.no_grad():
        torch.testing.assert_close(functional_call(model, unflatten(model, flat_params(model)), (x,)), model(x),
                                   rtol=0, atol=0)
    # leading batch dimensions are kept
    W = torch.stack([w, 2 * w, 3 * w])
    batched = unflatten(model, W)
    for p, v in zip(model.parameters(), batched.values()):
        assert v.shape == (3, *p.shape)
    torch.testing.assert_close(parameters_to_vector([v[2] for v in batched.values()]), 3 * w, rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"length {n + 1}, the model has {n} parameters"):
        unflatten(model, torch.zeros(n + 1, dtype=torch.float64))


def test_device_dtype():
    assert device_dtype(seeded_model(NETS["relu"][0])) == (torch.device("cpu"), torch.float64)
    assert device_dtype(seeded_model(NETS["relu"][0], dtype=torch.float32)) == (torch.device("cpu"), torch.float32)
    mixed = seeded_model(NETS["relu"][0])
    mixed[2].float()
    with pytest.raises(ValueError, match="share one dtype and device"):
        device_dtype(mixed)
    with pytest.raises(ValueError, match="no parameters"):
        device_dtype(nn.ReLU())


def _flags(model):
    return [m.training for m in model.modules()]


def test_eval_mode_restores_nested_flags_even_on_exception():
    model = seeded_model(NETS["dropout"][0])
    model.train()
    model[2].eval()                                   # mixed flags: only the dropout in eval mode
    before = _flags(model)
    assert before == [True, True, True, False, True]
    with eval_mode(model) as m:
        assert m is model and _flags(model) == [False] * 5
    assert _flags(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            assert not any(_flags(model))
            raise RuntimeError("boom")
    assert _flags(model) == before
    model.eval()
    with eval_mode(model):
        pass
    assert _flags(model) == [False] * 5


def test_chunks_cover_all_samples_in_order_with_dtype_cast():
    x = torch.arange(23 * 2, dtype=torch.float64).reshape(23, 2)
    y = torch.arange(23)
    parts = list(chunks(x, y, 5, dtype=torch.float32))
    assert [len(a) for a, _ in parts] == [5, 5, 5, 5, 3]
    assert all(a.dtype == torch.float32 and b.dtype == torch.int64 for a, b in parts)
    torch.testing.assert_close(torch.cat([a for a, _ in parts]), x.float(), rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([b for _, b in parts]), y, rtol=0, atol=0)
    # no dtype: inputs keep theirs; integer inputs are never cast; device given
    same = list(chunks(x, y, 23, device="cpu"))
    assert len(same) == 1 and same[0][0].dtype == torch.float64 and torch.equal(same[0][0], x)
    ints = list(chunks(y, y, 10, dtype=torch.float32))
    assert [a.dtype for a, _ in ints] == [torch.int64] * 3 and torch.equal(torch.cat([a for a, _ in ints]), y)
    assert [len(a) for a, _ in chunks(x, y, 100)] == [23]
