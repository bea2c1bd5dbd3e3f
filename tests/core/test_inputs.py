"""The checks of a user's device, model and data (``lib.core.inputs``) on their own: the devices of this machine,
non-finite weights and buffers, and one checking pass over the batches that names the first bad batch, row and
sample (``tests/test_api.py`` checks that ``analyze`` refuses these before any compute)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.core.checks import ParameterError
from lib.core.inputs import available_devices, check_device, check_weights, checked_batches

CPU, F64 = torch.device("cpu"), torch.float64


def per_sample_ce(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")


def _case():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Linear(4, 3).double()
    return model, torch.randn(10, 4, generator=g, dtype=F64), torch.arange(10) % 3


def test_the_devices_of_this_machine():
    names = available_devices()
    assert names[0] == "cpu"
    assert [n for n in names if n.startswith("cuda")] == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert check_device("cpu") == check_device(torch.device("cpu")) == CPU


def test_a_device_the_machine_lacks_is_refused_with_the_ones_it_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_devices()[0] == "cpu" and not any(n.startswith("cuda") for n in available_devices())
    with pytest.raises(ParameterError, match=r"^device='cuda:3' is not allowed: one of the devices of this machine: "
                                             r"\['cpu'") as err:
        check_device("cuda:3")
    assert "torch finds no CUDA device on this machine; pass device='cpu'" in str(err.value)
    with pytest.raises(ParameterError, match=r"^device='cuda' is not allowed"):
        check_device("cuda")
    with pytest.raises(ParameterError, match=r"^device='gpu' is not allowed: one of the devices of this machine"):
        check_device("gpu")


def test_check_weights_names_the_first_non_finite_parameter_then_buffer():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    check_weights(model)                                              # finite: nothing raised
    with torch.no_grad():
        model[1].running_var[2] = float("nan")
    with pytest.raises(ParameterError, match=r"^model buffer '1.running_var'\[2\]=nan is not allowed: finite "
                                             r"weights; 1 of its 4 values are NaN or inf"):
        check_weights(model)
    with torch.no_grad():
        model[2].weight[1, 3] = float("nan")
        model[2].weight[0, 0] = float("inf")
    with pytest.raises(ParameterError, match=r"^model parameter '2.weight'\[0, 0\]=inf is not allowed: finite "
                                             r"weights; 2 of its 8 values are NaN or inf"):
        check_weights(model)


def test_checked_batches_passes_good_data_and_keeps_its_batches():
    model, x, y = _case()
    batches = checked_batches(model, (x, y), per_sample_ce, class_targets=True, device=CPU, dtype=F64, batch_size=4)
    assert [len(b) for _, b in batches] == [4, 4, 2]
    assert all(torch.equal(a, b) for a, b in zip(batches.tensors(), (x, y)))


def test_checked_batches_names_the_batch_row_and_sample_of_the_first_bad_value():
    model, x, y = _case()
    kw = {"class_targets": True, "device": CPU, "dtype": F64, "batch_size": 4}
    bad = x.clone()
    bad[9, 1] = float("nan")
    with pytest.raises(ParameterError, match=r"^batch 2 inputs\[1, 1\]=nan is not allowed: finite inputs") as err:
        checked_batches(model, (bad, y), per_sample_ce, **kw)
    assert "sample 9 of the data (row 1 of batch 2) is the first with a NaN or inf, and batch 2 has 1" in str(err.value)
    labels = y.clone()
    labels[6] = 3
    with pytest.raises(ParameterError, match=r"^batch 1 targets\[2\]=3 is not allowed: a class index in \[0, 2\] "
                                             r"\(the model has 3 outputs\)") as err:
        checked_batches(model, (x, labels), per_sample_ce, **kw)
    assert "sample 6 of the data; this batch's targets span [1, 3], 1 out of range" in str(err.value)
    with pytest.raises(ParameterError, match=r"^loss_fn='cross_entropy' is not allowed: one loss per sample "
                                             r"\(shape \(4,\) on batch 0\), got \(\)"):
        checked_batches(model, (x, y), F.cross_entropy, **kw)
    with pytest.raises(ParameterError, match=r"^batch 0 inputs='shape \(4, 5\), dtype torch.float64' is not "
                                             r"allowed: inputs the model accepts"):
        checked_batches(model, (torch.zeros(10, 5, dtype=F64), y), per_sample_ce, **kw)


def test_checked_batches_needs_two_samples():
    model, x, y = _case()
    kw = {"class_targets": True, "device": CPU, "dtype": F64}
    with pytest.raises(ParameterError, match=r"^data=\[\] is not allowed: at least 2 samples"):
        checked_batches(model, [], per_sample_ce, **kw)
    with pytest.raises(ParameterError, match=r"^data='1 sample\(s\)' is not allowed: at least 2 samples"):
        checked_batches(model, (x[:1], y[:1]), per_sample_ce, **kw)
    assert len(checked_batches(model, [(x[:1], y[:1]), (x[1:2], y[1:2])], per_sample_ce, **kw).tensors()[1]) == 2
