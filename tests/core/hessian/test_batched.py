"""The batched Hessian operator (``lib.core.hessian.batched``) on a loss other than cross-entropy: products, gradient
and loss against an explicit Hessian, the solvers on it, data as lists / DataLoaders / tensors / callables alike,
and a refusal of data it cannot read twice in one order."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lib.core import hessian
from lib.core.checks import ParameterError
from lib.core.hessian.batched import BatchedHessianOperator, as_batches
from lib.core.tensors import n_params
from tests.cases import explicit_hessian, make
from tests.core.hessian.conftest import batch_list, mse_onehot


@pytest.fixture(scope="module")
def tanh_case():
    torch.set_num_threads(1)
    model, x, y = make("tanh", n=40)
    H = explicit_hessian(model, x, y, loss=lambda out, t: mse_onehot(out, t).mean())
    return model, x, y, H


def test_batched_products_equal_explicit_hessian(tanh_case):
    model, x, y, H = tanh_case
    op = BatchedHessianOperator(model, batch_list(x, y), mse_onehot)
    assert op.n_samples == 40 and op.n_params == H.shape[0] and op.dtype == torch.float64
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(op.n_params, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.hvp(v), H @ v, rtol=1e-12, atol=1e-12)
    assert op.hvp_count == 3
    # gradient and loss of the same objective
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    mean = mse_onehot(torch.func.functional_call(model, params, (x,)), y).mean()
    grads = torch.autograd.grad(mean, list(params.values()))
    torch.testing.assert_close(op.gradient(), torch.cat([t.reshape(-1) for t in grads]), rtol=1e-12, atol=1e-13)
    assert op.loss() == pytest.approx(mean.item(), rel=1e-13)
    # chunk_size splits batches without changing the result
    split = BatchedHessianOperator(model, batch_list(x, y), mse_onehot, chunk_size=3)
    torch.testing.assert_close(split.hvp(v), H @ v, rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_top_eigenpairs_match_eigh(tanh_case):
    model, x, y, H = tanh_case
    op = BatchedHessianOperator(model, batch_list(x, y), mse_onehot)
    top = hessian.top_eigenpairs(op, 4, tol=1e-10)
    values, vectors = np.linalg.eigh(H.numpy())
    np.testing.assert_allclose(top.eigenvalues.numpy(), values[::-1][:4], rtol=1e-9, atol=1e-10)
    overlap = np.abs(top.eigenvectors.numpy() @ vectors[:, ::-1][:, :4])
    np.testing.assert_allclose(np.diag(overlap), 1.0, atol=1e-6)
    assert top.hvp_count == op.hvp_count and float(top.residuals.max()) < 1e-8
    tr = hessian.trace(op, n_probes=6)
    dens = hessian.density(op, n_iter=10)
    assert tr.hvp_count == 6 and dens.hvp_count == 10 and op.hvp_count == top.hvp_count + 16
    power = hessian.top_eigenpairs(op, 2, method="power", tol=1e-9)
    np.testing.assert_allclose(power.eigenvalues.numpy(), values[::-1][:2], rtol=1e-6)


def test_list_dataloader_and_tensors_give_identical_results(tanh_case):
    model, x, y, _ = tanh_case
    ops = [BatchedHessianOperator(model, batch_list(x, y), mse_onehot),
           BatchedHessianOperator(model, DataLoader(TensorDataset(x, y), batch_size=7, shuffle=False), mse_onehot),
           BatchedHessianOperator(model, (x, y), mse_onehot, batch_size=7),
           BatchedHessianOperator(model, lambda: iter(batch_list(x, y)), mse_onehot)]
    v = torch.randn(ops[0].n_params, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    products = [op.hvp(v) for op in ops]
    tops = [hessian.top_eigenpairs(op, 3, tol=1e-8).eigenvalues for op in ops]
    for p, t in zip(products[1:], tops[1:]):
        assert torch.equal(p, products[0]) and torch.equal(t, tops[0])


def test_refuses_data_it_cannot_read_twice_in_one_order(tanh_case):
    model, x, y, _ = tanh_case
    with pytest.raises(ValueError, match="shuffle=False"):
        BatchedHessianOperator(model, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), mse_onehot)
    with pytest.raises(ValueError, match="read only once"):
        BatchedHessianOperator(model, (b for b in batch_list(x, y)), mse_onehot)
    with pytest.raises(ValueError, match="one loss per sample"):
        BatchedHessianOperator(model, (x, y), lambda out, t: mse_onehot(out, t).mean()).hvp(
            torch.zeros(n_params(model), dtype=torch.float64))
    sizes = iter([40, 39])

    def shrinking():
        n = next(sizes)
        return iter([(x[:n], y[:n])])

    unstable = BatchedHessianOperator(model, shrinking, mse_onehot)
    with pytest.raises(RuntimeError, match="not deterministic"):
        unstable.hvp(torch.zeros(unstable.n_params, dtype=torch.float64))
    with pytest.raises(ValueError, match="pair"):
        list(as_batches([x[:5], x[5:10], x[10:15]]))


# ----------------------------------------------------------------------------------------------- kept state
@pytest.mark.parametrize("kind", ["relu", "pooled_cnn"])
def test_every_engine_equals_the_explicit_hessian_and_keeps_its_state(kind):
    """Cross-entropy on a model ``plan`` reads: "auto" is the structured R-op; it, the kept graphs and the rebuilt
    graphs all give the explicit Hessian's products; after the first product every batch's state is kept and later
    products read no data (a function source counts its passes); a zero budget keeps nothing."""
    model, x, y = make(kind, n=30)
    hess = explicit_hessian(model, x, y)
    passes = []

    def source():
        passes.append(1)
        return iter(batch_list(x, y, size=8))

    g = torch.Generator().manual_seed(5)
    vs = [torch.randn(n_params(model), generator=g, dtype=torch.float64) for _ in range(3)]
    for engine in ("auto", "structured", "graph", "rebuild"):
        passes.clear()
        op = BatchedHessianOperator(model, source, engine=engine, n_samples=30)
        assert op.engine == ("structured" if engine == "auto" else engine)
        for v in vs:
            torch.testing.assert_close(op.hvp(v), hess @ v, rtol=1e-10, atol=1e-12)
        keeps = engine != "rebuild"
        assert (op.kept_chunks, op.kept_bytes > 0) == ((4, True) if keeps else (0, False))
        # one pass to pick the engine (structured / auto), then one pass per product until all are kept
        assert len(passes) == (1 if engine in ("auto", "structured") else 0) + (1 if keeps else 3)
    op = BatchedHessianOperator(model, source, keep_state_mb=0, n_samples=30)
    torch.testing.assert_close(op.hvp(vs[0]), hess @ vs[0], rtol=1e-10, atol=1e-12)
    assert op.kept_chunks == 0


def test_kept_state_follows_weight_changes_and_its_budget(tanh_case):
    """A custom loss takes the graph engine; a weight change rebuilds the state (products of the new Hessian); a
    budget of about two batches keeps two and streams the rest, with the same products."""
    model, x, y, H = tanh_case
    op = BatchedHessianOperator(model, batch_list(x, y), mse_onehot)
    assert op.engine == "graph"
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(op.hvp(v), H @ v, rtol=1e-12, atol=1e-12)
    per_batch = op.kept_bytes / op.kept_chunks
    assert op.kept_chunks == 6 and op.state_builds == 1
    moved = [p.detach().clone() for p in model.parameters()]
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1)
        H2 = explicit_hessian(model, x, y, loss=lambda out, t: mse_onehot(out, t).mean())
        torch.testing.assert_close(op.hvp(v), H2 @ v, rtol=1e-12, atol=1e-12)
        assert op.state_builds == 2
    finally:
        with torch.no_grad():
            for p, q in zip(model.parameters(), moved):
                p.copy_(q)
    small = BatchedHessianOperator(model, batch_list(x, y), mse_onehot, keep_state_mb=2.5 * per_batch / 2 ** 20)
    for _ in range(2):
        torch.testing.assert_close(small.hvp(v), H @ v, rtol=1e-12, atol=1e-12)
    assert small.kept_chunks == 2
    small.drop_state()
    assert small.kept_chunks == 0


def test_engine_choice_is_checked(tanh_case):
    model, x, y, _ = tanh_case
    with pytest.raises(ParameterError, match="engine"):
        BatchedHessianOperator(model, (x, y), mse_onehot, engine="structured")
    with pytest.raises(ParameterError, match="engine"):
        BatchedHessianOperator(model, (x, y), engine="fused")
    with pytest.raises(ParameterError, match="keep_state_mb"):
        BatchedHessianOperator(model, (x, y), keep_state_mb=-1)
