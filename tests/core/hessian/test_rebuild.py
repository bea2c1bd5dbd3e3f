"""The rebuild engine (``lib.core.hessian.rebuild``): nothing kept, the reference the kept engines' products equal on
the study models."""
import torch

from lib.core import hessian as H
from lib.core.hessian.graph import GraphEngine
from lib.core.hessian.rebuild import RebuildEngine
from tests.cases import explicit_hessian, make
from tests.core.hessian.conftest import engine_product


def test_kept_state_equals_rebuilt_products_on_the_study_models():
    """Float32 study networks: the kept-state products equal the products rebuilt from scratch to float tolerance
    (structured R-op for mlp1 and the CNN, kept autograd graph, rebuild)."""
    from lib.core.training import models
    g = torch.Generator().manual_seed(0)
    for name in ("mlp1", "cnn"):
        net = models.build(name, 0)
        x = torch.randn(300, 1, 28, 28, generator=g)
        x[:, :, :3] = -0.42                                  # constant border rows, as in MNIST
        y = torch.randint(0, 10, (300,), generator=g)
        v = torch.randn(models.n_params(net), generator=g)
        products = {eng: H.HessianOperator(net, x, y, chunk_size=128, engine=eng).hvp(v)
                    for eng in ("structured", "graph", "rebuild")}
        scale = float(products["rebuild"].abs().max())
        for eng in ("structured", "graph"):
            torch.testing.assert_close(products[eng], products["rebuild"], rtol=0, atol=2e-5 * scale)


def test_rebuild_is_the_graph_engine_keeping_nothing():
    """The same products as the graph engine (the same computation, bit for bit), and through the operator no chunk
    state is ever kept or built."""
    model, x, y = make("tanh")
    hess = explicit_hessian(model, x, y)
    rebuild, graph = RebuildEngine(model, x), GraphEngine(model, x)
    assert isinstance(rebuild, GraphEngine) and (rebuild.name, rebuild.keeps) == ("rebuild", False)
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = engine_product(rebuild, model, x, y, v)
    assert torch.equal(got, engine_product(graph, model, x, y, v))
    torch.testing.assert_close(got, len(x) * (hess @ v), rtol=1e-9, atol=1e-10)
    op = H.HessianOperator(model, x, y, chunk_size=10, engine="rebuild")
    for _ in range(2):
        torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-9, atol=1e-12)
    assert (op.kept_chunks, op.kept_bytes, op.state_builds) == (0, 0, 0)
