"""The engine choice (``lib.core.hessian.auto``): auto picks the structured R-op for ReLU MLPs and conv-pool CNNs and
the kept graph otherwise, every engine gives the explicit Hessian's products, a named engine is checked."""
import pytest
import torch
from torch import nn

from lib.core import hessian as H
from lib.core.checks import ParameterError
from lib.core.hessian.auto import ENGINES, engine_for
from tests.cases import explicit_hessian, make, seeded_data, seeded_model


def _study_cnn_case(n=6, seed=0):
    """The study CNN's class at small channel counts, on 28 x 28 images: its exact Hessian is affordable."""
    from lib.core.training.models import cnn
    net = seeded_model(lambda: cnn((2, 3)), seed)
    x, y = seeded_data(n, (1, 28, 28), 10, seed=5)
    return net, x, y


def _two_channel_cnn():
    """Conv-pool stages on two-channel 8 x 8 images (a first stage with C > 1), bias-free second stage."""
    net = seeded_model(lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                             nn.Conv2d(3, 2, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                                             nn.Flatten(), nn.Linear(2 * 2 * 2, 3)), 0)
    x, y = seeded_data(20, (2, 8, 8), 3, seed=6)
    return net, x, y


def _mlp_with_constant_columns():
    """Sequential(Flatten, Linear, ReLU, Linear, ReLU, Linear) on inputs with constant columns (the first Linear
    then skips them, their contribution is a rank-one term)."""
    net = seeded_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                             nn.Linear(8, 3)), 0)
    x, y = seeded_data(30, (1, 3, 4), 3)
    x[:, 0, 0, :3] = 0.7
    return net, x, y


@pytest.mark.parametrize("build, engine", [(lambda: make("relu"), "structured"), (lambda: make("nobias"), "structured"),
                                           (lambda: make("pooled_cnn"), "structured"),
                                           (_mlp_with_constant_columns, "structured"),
                                           (_study_cnn_case, "structured"), (_two_channel_cnn, "structured"),
                                           (lambda: make("tanh"), "graph"),
                                           (lambda: make("cnn"), "graph"), (lambda: make("dropout"), "graph")])
def test_every_engine_matches_the_explicit_hessian(build, engine):
    """'auto' picks the structured R-op for ReLU MLPs and conv-pool CNNs, the kept graph otherwise; every engine
    gives the explicit Hessian's products, whatever the chunking."""
    model, x, y = build()
    hess = explicit_hessian(model, x, y)
    vs = torch.randn(3, hess.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert H.HessianOperator(model, x, y).engine == engine
    for eng in ("auto", "graph", "rebuild"):
        for chunk in (4, len(x)):
            op = H.HessianOperator(model, x, y, chunk_size=chunk, engine=eng)
            for v in vs:
                torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-9, atol=1e-12 * float(hess.abs().max()))
            assert op.hvp_count == 3
            kept = 0 if eng == "rebuild" else -(-len(x) // chunk)
            assert op.kept_chunks == kept and (op.kept_bytes > 0) == (kept > 0)
            assert op.state_builds == (0 if eng == "rebuild" else 1)


def test_engine_choice_is_checked():
    model, x, y = make("tanh")
    with pytest.raises(ParameterError, match="engine='structured' is not allowed"):
        H.HessianOperator(model, x, y, engine="structured")
    with pytest.raises(ParameterError, match="engine='fast' is not allowed"):
        H.HessianOperator(model, x, y, engine="fast")
    with pytest.raises(ParameterError, match="keep_graphs_mb=-1 is not allowed"):
        H.HessianOperator(model, x, y, keep_graphs_mb=-1)
    # class probabilities as targets: the structured R-op (class-index cross-entropy) does not apply
    relu, xr, yr = make("relu")
    soft = torch.nn.functional.one_hot(yr, 3).double() * 0.8 + 0.2 / 3
    op = H.HessianOperator(relu, xr, soft)
    assert op.engine == "graph"
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = explicit_hessian(relu, xr, soft, loss=lambda out, t: torch.nn.functional.cross_entropy(out, t)) @ v
    torch.testing.assert_close(op.hvp(v), expected, rtol=1e-9, atol=1e-12)
    # odd image sizes: the CNN's conv-pool stages do not apply, the kept graph does
    net, _, _ = _study_cnn_case()
    xo = torch.randn(3, 1, 26, 26, dtype=torch.float64)
    assert H.HessianOperator(net, xo, torch.zeros(3, dtype=torch.long)).engine == "graph"


def test_engine_for_builds_the_engine_each_choice_names():
    """``engine_for`` on its own: "auto" gives the structured R-op for a ReLU MLP and the kept graph for a tanh MLP;
    "graph" and "rebuild" are taken as named (rebuild keeps nothing); class probabilities as targets fall back from
    the structured engine to the graph."""
    assert ENGINES == ("auto", "fused", "structured", "graph", "rebuild")
    relu, xr, yr = make("relu")
    tanh, xt, yt = make("tanh")
    dtype = torch.float64
    assert engine_for(relu, xr, yr, "auto", dtype).name == "structured"
    assert engine_for(relu, xr, yr, "structured", dtype).name == "structured"
    assert engine_for(tanh, xt, yt, "auto", dtype).name == "graph"
    for model, x, y in ((relu, xr, yr), (tanh, xt, yt)):
        graph, rebuild = engine_for(model, x, y, "graph", dtype), engine_for(model, x, y, "rebuild", dtype)
        assert (graph.name, graph.keeps) == ("graph", True) and (rebuild.name, rebuild.keeps) == ("rebuild", False)
    soft = torch.nn.functional.one_hot(yr, 3).double()
    assert engine_for(relu, xr, soft, "auto", dtype).name == "graph"
    with pytest.raises(ParameterError, match="engine='structured' is not allowed"):
        engine_for(tanh, xt, yt, "structured", dtype)
