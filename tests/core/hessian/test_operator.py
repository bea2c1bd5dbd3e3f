"""The Hessian operator (``lib.core.hessian.operator.HessianOperator``) against explicit float64 Hessians: products
for every chunk size, gradient and loss, float32 models, eval mode, the current weights, the model's mode and grads
restored, the kept state invalidated by any weight change and bounded by its memory budget."""
import numpy as np
import pytest
import torch
from torch import nn

from lib.core import hessian as H
from lib.core.training.models import preferred_chunk
from tests.cases import case, explicit_hessian, make
from tests.core.hessian.conftest import KINDS, N, operator


# --------------------------------------------------------------------------------------------- products, gradient, loss
@pytest.mark.parametrize("kind", KINDS)
def test_hvp_matches_explicit_hessian_for_every_chunk_size(kind):
    model, x, y, hess, _, _ = case(kind)
    vs = torch.randn(3, hess.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for chunk in (5, 7, N, 4096):
        op = H.HessianOperator(model, x, y, chunk_size=chunk)
        assert op.n_params == hess.shape[0] and op.dtype == torch.float64 and op.device.type == "cpu"
        assert op.chunk_size == chunk and op.n_samples == N
        for v in vs:
            torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-6, atol=1e-12)
        assert op.hvp_count == len(vs)


def test_default_chunk_size_comes_from_the_model():
    assert operator("relu").chunk_size == H.DEFAULT_CHUNK
    cnn = operator("cnn")
    assert cnn.chunk_size == preferred_chunk(cnn.model) and cnn.chunk_size != H.DEFAULT_CHUNK
    pooled = operator("pooled_cnn")
    assert pooled.engine == "structured" and pooled.chunk_size == preferred_chunk(pooled.model)


def test_gradient_and_loss_match_autograd():
    model, x, y, _, _, _ = case("tanh")
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    expected = torch.cat([g.reshape(-1) for g in grads])
    op = H.HessianOperator(model, x, y, chunk_size=5)
    torch.testing.assert_close(op.gradient(), expected)
    assert op.grad_count == 1 and op.hvp_count == 0
    assert op.loss() == pytest.approx(float(loss.detach()), rel=1e-12)


def test_float32_model():
    _, x, y, hess, vals, _ = case("tanh")
    model32 = make("tanh")[0].float()
    op = H.HessianOperator(model32, x.float(), y)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv = op.hvp(v)
    assert hv.dtype == torch.float32
    torch.testing.assert_close(hv.double(), hess @ v, rtol=1e-4, atol=1e-5 * float(hess.abs().max()))
    eig = H.top_eigenpairs(op, k=3)
    assert eig.eigenvectors.dtype == torch.float32
    assert eig.hvp_count == op.hvp_count - 1 > 0            # the product above is not counted in the result
    np.testing.assert_allclose(eig.eigenvalues.numpy(), vals[:3], rtol=0, atol=1e-4 * abs(vals).max())


def test_eval_mode_is_used_with_dropout():
    model, x, y = make("dropout")
    hess = explicit_hessian(model, x, y)
    model.train()
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(H.HessianOperator(model, x, y).hvp(v), hess @ v, rtol=1e-6, atol=1e-12)
    assert model.training


def test_operator_reads_the_current_weights():
    model, x, y = make("relu")
    op = H.HessianOperator(model, x, y)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    before = op.hvp(v)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    after = op.hvp(v)
    torch.testing.assert_close(after, explicit_hessian(model, x, y) @ v, rtol=1e-6, atol=1e-12)
    assert not torch.allclose(before, after)


# ---------------------------------------------------------------------------------------------- model state, kept state
def _state(model):
    return ([m.training for m in model.modules()],
            [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()])


def _assert_state(model, state):
    modes, grads = state
    assert [m.training for m in model.modules()] == modes
    for p, (obj, values) in zip(model.parameters(), grads, strict=True):
        assert p.grad is obj
        if obj is not None:
            assert torch.equal(p.grad, values)


CALLS = {
    "hvp": lambda op: op.hvp(torch.ones(op.n_params)),
    "gradient": lambda op: op.gradient(),
    "loss": lambda op: op.loss(),
    "lanczos": lambda op: H.top_eigenpairs(op, k=2),
    "power": lambda op: H.top_eigenpairs(op, k=2, method="power", max_iter=50),
    "smallest": lambda op: H.smallest_eigenvalue(op, tol=1e-3),
    "trace": lambda op: H.trace(op, n_probes=3),
    "density": lambda op: H.density(op, n_iter=4),
}


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("setup", ["train_nograd", "eval_grad", "mixed_graphgrad"])
def test_mode_and_grads_restored(name, setup):
    model, x, y = make("dropout")
    if setup == "train_nograd":
        model.train()
    elif setup == "eval_grad":
        model.eval()
        nn.functional.cross_entropy(model(x), y).backward()
    else:
        model.train()
        model[2].eval()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
        model[0].bias.grad = None
    state = _state(model)
    out = CALLS[name](H.HessianOperator(model, x, y))
    assert out is not None
    _assert_state(model, state)
    for p in model.parameters():    # drop graph-carrying grads (reference cycle)
        p.grad = None


@pytest.mark.parametrize("engine", ["structured", "graph"])
def test_a_weight_change_invalidates_the_kept_state(engine):
    """In-place edits, edits through .data (no version bump), load_state_dict and vector_to_parameters all rebuild
    the state at the next product; products are always those of the current weights."""
    model, x, y = make("relu")
    op = H.HessianOperator(model, x, y, chunk_size=20, engine=engine)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    original = {k: t.clone() for k, t in model.state_dict().items()}

    def check(builds):
        torch.testing.assert_close(op.hvp(v), explicit_hessian(model, x, y) @ v, rtol=1e-9, atol=1e-12)
        assert op.state_builds == builds and op.kept_chunks == 3

    try:
        check(1)
        op.hvp(v)
        assert op.state_builds == 1                               # unchanged weights: state reused
        with torch.no_grad():
            model[0].weight.mul_(1.5)
        check(2)
        model[2].bias.data.add_(0.25)                             # .data: the version counter does not move
        check(3)
        model.load_state_dict(original)
        check(4)
        flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        torch.nn.utils.vector_to_parameters(flat * 0.5, model.parameters())
        check(5)
        op.drop_state()
        assert op.kept_chunks == 0 and op.kept_bytes == 0
        check(6)
    finally:
        model.load_state_dict(original)


@pytest.mark.parametrize("engine", ["structured", "graph"])
def test_memory_bound_keeps_what_fits_and_rebuilds_the_rest(engine):
    model, x, y = make("pooled_cnn" if engine == "structured" else "tanh")
    hess = explicit_hessian(model, x, y)
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    full = H.HessianOperator(model, x, y, chunk_size=12, engine=engine)
    full.hvp(v)
    assert full.kept_chunks == 4
    per_chunk = full.kept_bytes / 4
    for budget_chunks in (0, 1, 2.5):
        mb = budget_chunks * per_chunk * 1.01 / 2 ** 20
        op = H.HessianOperator(model, x, y, chunk_size=12, engine=engine, keep_graphs_mb=mb)
        for _ in range(2):
            torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-9, atol=1e-12)
        assert op.kept_chunks == int(budget_chunks)
        assert op.kept_bytes <= mb * 2 ** 20
    assert op.hvp_count == 2
