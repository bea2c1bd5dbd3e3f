"""The fused engine (``lib.core.hessian.fused``): Hessian-vector products of conv-pool CNNs by the native kernel
against the explicit Hessian, where it applies, and as the auto choice."""
import copy

import pytest
import torch
from torch import nn

from lib.core.checks import ParameterError
from lib.core.hessian.fused import FusedEngine, applies
from lib.core.hessian.structured import Structured
from lib.core.native import fused_cnn
from lib.core.tensors import n_params
from lib.core.training.models import build, plan
from tests.cases import explicit_hessian, seeded_data, seeded_model
from tests.core.hessian.conftest import engine_product
from tests.core.native.conftest import SHAPES, needs_kernel


@needs_kernel
@pytest.mark.parametrize("case", list(SHAPES))
def test_fused_hessian_vector_products_equal_the_explicit_hessian(case):
    """H v of the float32 kernel against the float64 Hessian of torch's layers (autograd.functional.hessian), for
    images that do not fill the last lane group, split over threads."""
    from lib.core.hessian import HessianOperator
    builder, shape, K, n = SHAPES[case]
    net = seeded_model(builder, 2, torch.float32).eval()
    x, y = seeded_data(n, shape, K, dtype=torch.float32)
    op = HessianOperator(net, x, y)
    assert op.engine == "fused"
    exact = explicit_hessian(nn.Sequential(*copy.deepcopy(list(net))).double(), x.double(), y)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(n_params(net), generator=g)
        want = exact @ v.double()
        got = op.hvp(v).double()
        assert float((got - want).norm() / want.norm()) < 2e-5
    assert op.hvp_count == 3
    structured = HessianOperator(net, x, y, engine="structured")
    torch.testing.assert_close(op.hvp(v), structured.hvp(v), rtol=1e-4, atol=1e-6)


def test_engine_choice_of_the_hessian_operator():
    from lib.core.hessian import HessianOperator
    net = build("cnn", 0).eval()
    x, y = seeded_data(4, (1, 28, 28), 10, dtype=torch.float32)
    assert HessianOperator(net, x, y).engine == ("fused" if fused_cnn.available() else "structured")
    assert HessianOperator(net, x, y, engine="structured").engine == "structured"
    assert HessianOperator(net.double(), x.double(), y).engine == "structured"
    with pytest.raises(ParameterError, match="engine"):
        HessianOperator(net.double(), x.double(), y, engine="fused")
    with pytest.raises(ParameterError, match="engine='fused' is not allowed"):
        HessianOperator(build("mlp2", 0), x, y, engine="fused")


@needs_kernel
def test_the_fused_engine_by_name_is_the_auto_choice():
    """engine="fused" (named, not only chosen by "auto") runs the kernel: the same products, bit for bit."""
    from lib.core.hessian import HessianOperator
    net = build("cnn", 0).eval()
    x, y = seeded_data(37, (1, 28, 28), 10, dtype=torch.float32)
    named, auto = HessianOperator(net, x, y, engine="fused"), HessianOperator(net, x, y)
    assert named.engine == auto.engine == "fused"
    v = torch.randn(n_params(net), generator=torch.Generator().manual_seed(0))
    assert torch.equal(named.hvp(v), auto.hvp(v))


def test_applies_to_float32_conv_pool_cnns_with_class_targets_only():
    y = torch.zeros(4, dtype=torch.long)
    cnn32, cnn64, mlp = build("cnn", 0).eval(), build("cnn", 0).double().eval(), build("mlp2", 0).eval()
    assert applies(plan(cnn32), cnn32, y) == fused_cnn.available()
    assert not applies(plan(cnn64), cnn64, y)                             # float64 weights
    assert not applies(plan(mlp), mlp, y)                                 # no conv-pool stages
    assert not applies(plan(cnn32), cnn32, torch.full((4,), 10))          # class 10 of a 10-class head
    assert not applies(None, cnn32, y)                                    # a model plan does not read


@needs_kernel
def test_the_engine_alone_gives_the_structured_products_of_the_loss_sum():
    net = build("cnn", 0).eval()
    x, y = seeded_data(9, (1, 28, 28), 10, dtype=torch.float32)
    steps = plan(net)
    fused = FusedEngine(Structured(net, steps, x), x, y)
    v = torch.randn(n_params(net), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fused.hvp_sum(v), engine_product(Structured(net, steps, x), net, x, y, v), rtol=1e-4,
                               atol=1e-5)
