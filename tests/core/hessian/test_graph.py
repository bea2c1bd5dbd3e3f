"""The graph engine (``lib.core.hessian.graph``): the summed loss at flat weights, each chunk's gradient kept with its
autograd graph and differentiated again per product, and the bytes autograd saves for it."""
import pytest
import torch
import torch.nn.functional as F

from lib.core.hessian.graph import GraphEngine, GraphState, loss_sum
from lib.core.tensors import flat_params
from tests.cases import explicit_hessian, make
from tests.core.hessian.conftest import engine_product


def test_loss_sum_is_the_summed_cross_entropy_at_the_given_weights():
    model, x, y = make("tanh")
    w0 = flat_params(model)
    with torch.no_grad():
        plain = float(F.cross_entropy(model(x), y, reduction="sum"))
        assert float(loss_sum(model, w0, x, y)) == pytest.approx(plain, rel=1e-12)
        moved = float(loss_sum(model, w0 + 0.05, x, y))
    assert moved != pytest.approx(plain, rel=1e-6)                   # the weights given, not the model's own
    assert torch.equal(flat_params(model), w0)                         # which are left untouched


def test_a_kept_gradient_graph_serves_every_product_of_the_loss_sum():
    """One chunk's state: the gradient with its graph (its bytes, and with ``count`` those autograd saved for it);
    several products from the one kept graph equal N times the explicit Hessian of the mean loss."""
    model, x, y = make("tanh")
    hess = explicit_hessian(model, x, y)
    engine = GraphEngine(model, x)
    state = engine.build(x, y, flat_params(model))
    assert isinstance(state, GraphState) and state.g.requires_grad
    gradient_bytes = state.g.numel() * state.g.element_size()
    assert state.nbytes > gradient_bytes
    assert engine.build(x, y, flat_params(model), count=False).nbytes == gradient_bytes
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(hess.shape[0], generator=g, dtype=torch.float64)
        out = torch.zeros_like(v)
        engine.apply(state, v, out)
        torch.testing.assert_close(out, len(x) * (hess @ v), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(engine_product(engine, model, x, y, v), len(x) * (hess @ v), rtol=1e-9, atol=1e-10)
