"""The jet interpreter (``lib.core.landscape.jet``): per-sample terms (a_i, b_i, C_i) against explicit gradients
and Hessians by both methods, the interpreter's re-entrancy, its rule table as the allow-list, and the fall-back to
the generic path."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.core.landscape import jet
from lib.core.landscape.jet import JetInterpreter, PerSampleTerms, cross_entropy_terms, per_sample_terms
from lib.core.landscape.subspace import random_basis
from lib.core.tensors import eval_mode, flat_params, n_params, unflatten
from tests.cases import NETS, explicit_hessian, explicit_losses, seeded_data, seeded_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# ----------------------------------------------------------------------------------------------- per-sample terms
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1, dilation=1)
        self.conv2 = nn.Conv2d(2, 3, 2, stride=1, padding=1, dilation=2)
        self.pool = nn.AvgPool2d(2)
        self.lin = nn.Linear(12, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        h = F.relu(self.conv(x))
        h = torch.sigmoid(self.conv2(h))
        h = self.pool(h)
        h = h.view(h.size(0), -1)
        h = h + torch.tanh(self.lin(h))
        return self.head(h)


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
                         nn.Sigmoid(), nn.Flatten(), nn.Linear(4, 3))


def same_padding():
    """String padding: the jet's convolution adjoint falls back from the transposed convolution."""
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding="same"), nn.Tanh(), nn.Conv2d(3, 2, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 2 * 2, 3))


def unsupported():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.GELU(), nn.LayerNorm(6), nn.Linear(6, 4),
                         nn.BatchNorm1d(4), nn.Linear(4, 3))


#: name -> (builder, input shape of one sample); the shared cases add max-pooling, Dropout and bias-free layers
TERM_NETS = {"mlp": (mlp, (1, 3, 4)), "cnn": (cnn, (1, 6, 6)), "residual": (Residual, (1, 8, 8)),
             "same_padding": (same_padding, (1, 6, 6)),
             "unsupported": (unsupported, (1, 3, 4)),
             **{k: NETS[k][:2] for k in ("pooled_cnn", "dropout", "nobias")}}


def term_case(name, N=7, D=4):
    """(model, x, y, P) of a per-sample-terms case: seeded net, 3-class data, random D-dim basis."""
    builder, shape = TERM_NETS[name]
    model = seeded_model(builder, seed=0)
    x, y = seeded_data(N, shape, 3, seed=1)
    return model, x, y, random_basis(n_params(model), D, seed=2, dtype=torch.float64)


def subspace_reference(model, x, y, P):
    """b_i, C_i of every sample by autograd in theta (one sample at a time), eval mode."""
    w0 = flat_params(model)
    zero = torch.zeros(P.shape[0], dtype=torch.float64)

    def loss_i(th, i):
        out = torch.func.functional_call(model, unflatten(model, w0 + th @ P), (x[i:i + 1],))
        return F.cross_entropy(out, y[i:i + 1])

    with eval_mode(model):
        C = torch.stack([torch.autograd.functional.hessian(lambda t: loss_i(t, i), zero) for i in range(len(x))])
        b = torch.stack([torch.autograd.functional.jacobian(lambda t: loss_i(t, i), zero) for i in range(len(x))])
    return b, C


def assert_same_terms(t, u, exact=False):
    for f in "abC":
        if exact:
            assert torch.equal(getattr(t, f), getattr(u, f)), f
        else:
            torch.testing.assert_close(getattr(t, f), getattr(u, f), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(TERM_NETS))
def test_per_sample_terms_equal_explicit_gradients_and_hessians(name):
    model, x, y, P = term_case(name)
    w0 = flat_params(model)
    b_ref, C_ref = subspace_reference(model, x, y, P)
    a_ref = explicit_losses(model, x, y, w0)
    assert C_ref.abs().max() > 1e-3                      # non-trivial curvature
    # the mean of the per-sample subspace Hessians is the projected full Hessian of the mean loss
    torch.testing.assert_close(C_ref.mean(0), P @ explicit_hessian(model, x, y) @ P.T, rtol=1e-9, atol=1e-12)
    methods = ["jvp"] if name == "unsupported" else ["jet", "jvp"]
    for method in methods + ["auto"]:
        t = per_sample_terms(model, x, y, P, method=method, chunk_size=3)
        assert t.method == ("jvp" if name == "unsupported" else ("jet" if method == "auto" else method))
        torch.testing.assert_close(t.a, a_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(t.b, b_ref, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(t.C, C_ref, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(t.C, t.C.transpose(1, 2), rtol=0, atol=1e-14)
    assert flat_params(model).equal(w0)
    if name == "unsupported":
        with pytest.raises(ValueError, match="method='jet' is not available"):
            per_sample_terms(model, x, y, P, method="jet")


# ----------------------------------------------------------------------------------------------- jet interpreter
@pytest.mark.parametrize("name", ["residual", "pooled_cnn"])
def test_jet_interpreter_is_reentrant(name):
    """One interpreter run twice on the same graph, and on other inputs, gives exactly what fresh ones give."""
    model, x, y, P = term_case(name, N=9)
    x2, y2 = seeded_data(5, TERM_NETS[name][1], 3, seed=7)
    with eval_mode(model):
        interp = JetInterpreter(model, P)
        runs = [interp.terms(x, y), interp.terms(x, y), interp.terms(x2, y2), interp.terms(x, y)]
        fresh = JetInterpreter(model, P).terms(x, y), JetInterpreter(model, P).terms(x2, y2)
        # the cross-entropy assembly is pure: twice on one traced jet, same terms
        logits = interp.run(jet.Jet(x.detach().requires_grad_(True)))
        assert logits.sources                            # second-order sources present in this net
        twice = cross_entropy_terms(logits, y, 4), cross_entropy_terms(logits, y, 4)
    for got, want in zip(runs + list(twice), [fresh[0], fresh[0], fresh[1], fresh[0], fresh[0], fresh[0]]):
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    assert_same_terms(PerSampleTerms(*runs[0]), per_sample_terms(model, x, y, P, progress=False), exact=True)


def _silu_rule(mod, dirs):
    s = torch.sigmoid
    return partial(jet.pointwise, F.silu, lambda z, y: s(z) * (1 + z * (1 - s(z))),
                   lambda z, y: s(z) * (1 - s(z)) * (2 + z * (1 - 2 * s(z))))


@pytest.mark.parametrize("name,target,message", [
    ("mlp", nn.Tanh, "module Tanh"), ("pooled_cnn", nn.MaxPool2d, "module MaxPool2d"),
    ("residual", torch.tanh, "function <built-in method tanh"), ("residual", "view", "method view"),
    ("residual", nn.Conv2d, "module Conv2d")])
def test_rule_table_is_the_allow_list(monkeypatch, name, target, message):
    """Without its rule, a supported op sends the model to the generic path, with the same terms."""
    model, x, y, P = term_case(name)
    traced = per_sample_terms(model, x, y, P, progress=False)
    assert traced.method == "jet"
    monkeypatch.delitem(jet.RULES, target)
    generic = per_sample_terms(model, x, y, P, progress=False)
    assert generic.method == "jvp"
    assert_same_terms(generic, traced)
    with pytest.raises(ValueError, match=rf"method='jet' is not available for this model/loss \({message}"):
        per_sample_terms(model, x, y, P, method="jet")


def test_one_new_rule_puts_an_op_on_the_traced_path(monkeypatch):
    silu = seeded_model(lambda: nn.Sequential(nn.Linear(6, 5), nn.SiLU(), nn.Linear(5, 3)))
    xs, ys = seeded_data(7, (6,), 3)
    Ps = random_basis(n_params(silu), 3, seed=2, dtype=torch.float64)
    assert per_sample_terms(silu, xs, ys, Ps, progress=False).method == "jvp"
    monkeypatch.setitem(jet.RULES, nn.SiLU, _silu_rule)
    t = per_sample_terms(silu, xs, ys, Ps, method="jet", progress=False)
    assert_same_terms(t, per_sample_terms(silu, xs, ys, Ps, method="jvp", progress=False))


class FlatView(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 3)

    def forward(self, x):
        return self.lin(torch.tanh(x).view(-1, 12))      # -1: the batch size is not kept explicitly


def test_rules_refusing_at_run_time_fall_back_to_the_generic_path():
    model = seeded_model(FlatView)
    x, y = seeded_data(6, (3, 4), 3)
    P = random_basis(n_params(model), 3, seed=2, dtype=torch.float64)
    t = per_sample_terms(model, x, y, P, progress=False)
    assert t.method == "jvp"
    b_ref, C_ref = subspace_reference(model, x, y, P)
    torch.testing.assert_close(t.C, C_ref, rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="not available.*view/reshape that does not keep the batch dimension"):
        per_sample_terms(model, x, y, P, method="jet")
