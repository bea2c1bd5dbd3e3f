"""The structured engine (``lib.core.hessian.structured``): the R-op over kept activations gives the explicit
Hessian's products and drops ReLU units inactive on a chunk exactly."""
import torch
from torch import nn

from lib.core import hessian as H
from lib.core.hessian.structured import Structured, StructuredState
from lib.core.training.models import plan
from tests.cases import explicit_hessian, make, seeded_data, seeded_model
from tests.core.hessian.conftest import engine_product


def test_relu_units_inactive_on_a_chunk_are_dropped_exactly():
    """Units inactive on every sample of a chunk contribute zero rows and columns: the structured engine drops
    them (compacted state, smaller products) and still gives the explicit Hessian's products."""
    net = seeded_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(),
                                             nn.Linear(7, 3)), 1)
    with torch.no_grad():
        net[1].bias[:3] = -100.0                     # dead on every input
        net[3].bias[5:] = -100.0
    x, y = seeded_data(24, (6,), 3, seed=2)
    hess = explicit_hessian(net, x, y)
    op = H.HessianOperator(net, x, y, chunk_size=10)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-9, atol=1e-12)
    units = [u for u in op.chunk_states.states[0].units if u is not None]
    assert [(None if i is None else len(i), None if o is None else len(o)) for i, o in units] == \
        [(None, 5), (5, 5), (5, None)]                # 8 - 3 and 7 - 2 units kept; the head keeps its outputs


def test_one_chunk_state_and_product_equal_the_explicit_hessian():
    """The engine on its own, one chunk: ``build`` keeps a ``StructuredState`` (its bytes counted) and
    start / apply / finish give H v of the loss sum, N times the explicit Hessian of the mean loss, for a ReLU MLP and
    a conv-pool CNN."""
    for kind in ("relu", "pooled_cnn"):
        model, x, y = make(kind)
        hess = explicit_hessian(model, x, y)
        engine = Structured(model, plan(model), x)
        state = engine.build(x, y)
        assert isinstance(state, StructuredState) and state.nbytes > 0
        v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        torch.testing.assert_close(engine_product(engine, model, x, y, v), len(x) * (hess @ v), rtol=1e-9,
                                   atol=1e-10)
