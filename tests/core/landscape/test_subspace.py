"""Subspace bases and per-sample losses in the subspace (every direction moves the loss; order preserved)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.core.landscape.subspace import (
    SubspaceLosses,
    filter_normalized_directions,
    hessian_basis,
    losses_at_weights,
    per_sample_losses,
    random_basis,
)
from lib.core.tensors import flat_params, n_params, unflatten
from lib.core.training.models import cnn, mlp
from tests.cases import explicit_hessian, explicit_losses, pooled_cnn, seeded_data, seeded_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def tiny_mlp(seed=0, dtype=torch.float64):
    """Sequential(Flatten, Linear, ...): the shape that takes the first-layer shortcut (cases.py has none)."""
    return seeded_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)), seed,
                        dtype)


def tiny_cnn(seed=0, dtype=torch.float64):
    return seeded_model(pooled_cnn, seed, dtype)


def data(n=20, shape=(1, 3, 4), classes=3, seed=1, dtype=torch.float64):
    return seeded_data(n, shape, classes, seed=seed, dtype=dtype)


def gaussian(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_random_basis_orthonormal_and_seeded():
    P = random_basis(50, 4, seed=3, dtype=torch.float64)
    assert P.shape == (4, 50) and P.dtype == torch.float64
    torch.testing.assert_close(P @ P.T, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(P, random_basis(50, 4, seed=3, dtype=torch.float64))
    assert not torch.allclose(P, random_basis(50, 4, seed=4, dtype=torch.float64))
    assert random_basis(50, 4, seed=3).dtype == torch.float32
    torch.testing.assert_close(random_basis(50, 4, seed=3), P.float())


def test_filter_normalized_directions():
    for model in (tiny_mlp(), tiny_cnn()):
        dirs = filter_normalized_directions(model, n=2, seed=0)
        assert dirs.shape == (2, n_params(model))
        assert not torch.allclose(dirs[0], dirs[1])
        for d in dirs:
            offset = 0
            for p in model.parameters():
                piece = d[offset:offset + p.numel()].reshape(p.shape)
                offset += p.numel()
                if p.dim() <= 1:
                    assert torch.count_nonzero(piece) == 0          # biases zero
                else:
                    torch.testing.assert_close(piece.reshape(p.shape[0], -1).norm(dim=1),
                                               p.detach().reshape(p.shape[0], -1).norm(dim=1))
        torch.testing.assert_close(dirs, filter_normalized_directions(model, n=2, seed=0))


@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn])
def test_per_sample_losses_match_explicit_forward_in_given_order(make):
    model = make()
    x, y = data(shape=(1, 6, 6) if make is tiny_cnn else (1, 3, 4), classes=3)
    model.train()                       # must be evaluated in eval mode and the flag restored
    before = flat_params(model)
    D = 3
    P = random_basis(n_params(model), D, seed=0, dtype=torch.float64)
    thetas = gaussian(5, D, seed=2)
    out = per_sample_losses(model, x, y, P, thetas, chunk_size=7)
    assert out.shape == (5, len(x))
    for t in range(5):
        ref = explicit_losses(model, x, y, before + P.T @ thetas[t])
        torch.testing.assert_close(out[t], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, per_sample_losses(model, x, y, P, thetas))   # chunking invariant
    torch.testing.assert_close(flat_params(model), before, rtol=0, atol=0)        # weights untouched
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    # losses_at_weights on explicit flat vectors agrees
    W = before + thetas @ P
    torch.testing.assert_close(losses_at_weights(model, x, y, W, chunk_size=6), out)
    torch.testing.assert_close(losses_at_weights(model, x, y, before), explicit_losses(model, x, y, before))
    # more thetas than one block of weight vectors (lib.core.landscape.subspace.WEIGHT_BLOCK)
    many = gaussian(37, D, seed=3)
    torch.testing.assert_close(per_sample_losses(model, x, y, P, many),
                               losses_at_weights(model, x, y, before + many @ P), rtol=1e-12, atol=1e-12)
    # single theta
    torch.testing.assert_close(per_sample_losses(model, x, y, P, thetas[2]), out[2])


def test_every_direction_changes_the_losses():
    """The original code perturbed only the first direction; here each of the D rows must move the losses."""
    model = tiny_mlp()
    x, y = data()
    D = 5
    P = random_basis(n_params(model), D, seed=1, dtype=torch.float64)
    l0 = per_sample_losses(model, x, y, P, torch.zeros(D, dtype=torch.float64))
    thetas = 0.3 * torch.eye(D, dtype=torch.float64)
    l = per_sample_losses(model, x, y, P, thetas)
    for d in range(D):
        assert (l[d] - l0).abs().max() > 1e-4, f"direction {d} does not change the per-sample losses"
        ref = explicit_losses(model, x, y, flat_params(model) + 0.3 * P[d])
        torch.testing.assert_close(l[d], ref, rtol=1e-12, atol=1e-12)
    # a perturbation along directions 2..D-1 only is not the same as along the first only
    th = torch.zeros(D, dtype=torch.float64)
    th[1:] = 0.3
    assert (per_sample_losses(model, x, y, P, th) - l0).abs().max() > 1e-4


def test_float32_model_and_float64_thetas():
    model = tiny_mlp(dtype=torch.float32)
    x, y = data(dtype=torch.float32)
    P = random_basis(n_params(model), 2, seed=0)
    thetas = gaussian(3, 2, seed=4)
    out = per_sample_losses(model, x, y, P, thetas)
    assert out.dtype == torch.float32 and out.shape == (3, len(x))
    for t in range(3):
        ref = explicit_losses(model, x, y, flat_params(model) + P.T @ thetas[t].float())
        torch.testing.assert_close(out[t], ref, rtol=1e-5, atol=1e-6)


def test_hessian_basis_matches_explicit_hessian():
    model = tiny_mlp()
    x, y = data(n=30)
    evals, evecs = torch.linalg.eigh(explicit_hessian(model, x, y))
    D = 3
    P, lam = hessian_basis(model, x, y, D, return_eigenvalues=True, tol=1e-10)
    assert P.shape == (D, n_params(model))
    torch.testing.assert_close(torch.as_tensor(lam, dtype=torch.float64), evals.flip(0)[:D], rtol=1e-6, atol=1e-8)
    overlap = (P @ evecs[:, -D:]).abs()                      # |<p_d, v_d>| ~ 1 for the matching pair
    torch.testing.assert_close(overlap.max(dim=1).values, torch.ones(D, dtype=torch.float64), atol=1e-5, rtol=0)


def test_bad_parameters_raise_value_errors():
    model = tiny_mlp()
    x, y = data()
    n = n_params(model)
    P = random_basis(n, 2, seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"basis width {n + 1} != n_params {n}"):
        per_sample_losses(model, x, y, torch.zeros(2, n + 1, dtype=torch.float64), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"thetas must have shape \(T, D=2\)"):
        per_sample_losses(model, x, y, P, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"chunk_size=0 is not allowed: an integer in \[1, inf\]"):
        per_sample_losses(model, x, y, P, torch.zeros(1, 2), chunk_size=0)
    with pytest.raises(ValueError, match=r"chunk_size=2.0 is not allowed"):
        losses_at_weights(model, x, y, flat_params(model), chunk_size=2.0)
    with pytest.raises(ValueError, match="same length, got 20 and 19"):
        per_sample_losses(model, x, y[:-1], P, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="empty data"):
        losses_at_weights(model, x[:0], y[:0], flat_params(model))
    with pytest.raises(ValueError, match=f"D={n} must be smaller than n_params={n}"):
        hessian_basis(model, x, y, n)
    with pytest.raises(ValueError, match="D=5 must be <= n_params=4"):
        random_basis(4, 5)
    with pytest.raises(ValueError, match=r"D=0 is not allowed: an integer in \[1, inf\]"):
        random_basis(4, 0)
    with pytest.raises(ValueError, match=r"n=0 is not allowed: an integer in \[1, inf\]"):
        filter_normalized_directions(model, n=0)
    with pytest.raises(ValueError, match=r"weights must have shape \(T, n_params"):
        losses_at_weights(model, x, y, torch.zeros(3, n + 2))


@pytest.mark.parametrize("bias", [True, False])
def test_first_layer_shortcut_equals_generic_forward(bias):
    """The MLP shortcut (first layer precomputed as z* + sum_d theta_d z_d) gives the generic per-sample losses."""
    torch.manual_seed(0)
    net = mlp((16, 8), bias=bias).double()
    x, y = torch.randn(40, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (40,))
    P = random_basis(n_params(net), 3, seed=1, dtype=torch.float64)
    thetas = torch.randn(5, 3, dtype=torch.float64)
    fast = SubspaceLosses(net, x, y, P, chunk_size=16)
    slow = SubspaceLosses(net, x, y, P, shortcut=False)
    assert fast.shortcut and not slow.shortcut
    assert torch.allclose(fast(thetas), slow(thetas), rtol=1e-12, atol=1e-12)
    direct = torch.stack([F.cross_entropy(
        torch.func.functional_call(net, unflatten(net, flat_params(net) + P.T @ t), (x,)), y, reduction="none")
        for t in thetas])
    assert torch.allclose(fast(thetas), direct, rtol=1e-12, atol=1e-12)


def test_cnn_takes_the_batched_path_and_equals_explicit_losses():
    net = seeded_model(lambda: cnn((2, 2)), 0, torch.float32)
    x, y = seeded_data(3, (1, 28, 28), 10, dtype=torch.float32)
    P = random_basis(n_params(net), 2, seed=0)
    losses = SubspaceLosses(net, x, y, P)
    assert losses.path == "batched" and not losses.shortcut
    theta = torch.tensor([0.5, -0.25])
    torch.testing.assert_close(losses(theta), explicit_losses(net, x, y, flat_params(net) + P.T @ theta),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "mlp_nobias", "cnn", "cnn_nobias", "relu_2d"])
def test_batched_paths_equal_the_generic_forward(kind, monkeypatch):
    """Many thetas per matrix product (MLP first layer precomputed; CNN conv-pool stages stacked) give the generic
    one-forward-per-theta losses: several theta blocks, several sample blocks, a custom loss function."""
    from lib.core.landscape import subspace
    torch.manual_seed(0)
    shape = (1, 28, 28)
    if kind.startswith("mlp"):
        net = mlp((16, 8), bias=kind == "mlp").double()
    elif kind.startswith("cnn"):
        net = cnn((2, 3)).double()
        if kind == "cnn_nobias":
            for m in net:
                if hasattr(m, "bias") and m.bias is not None:
                    m.bias = None
    else:
        net = seeded_model(lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), 0)
        shape = (6,)
    x = torch.randn(45, *shape, dtype=torch.float64)
    y = torch.randint(0, 3, (45,))
    P = random_basis(n_params(net), 3, seed=1, dtype=torch.float64)
    thetas = torch.randn(subspace.WEIGHT_BLOCK + 5, 3, dtype=torch.float64)
    monkeypatch.setattr(subspace, "BATCH_ELEMENTS", 1000)            # several blocks of samples
    monkeypatch.setattr(subspace, "CONV_BATCH_ELEMENTS", 1000)
    fast = SubspaceLosses(net, x, y, P)
    slow = SubspaceLosses(net, x, y, P, shortcut=False)
    assert fast.path == "batched" and slow.path == "generic"
    # the first layer is a Linear (after a Flatten for the MLPs) in every model but the CNNs, whose conv comes first
    first_layer_linear = {"mlp": True, "mlp_nobias": True, "cnn": False, "cnn_nobias": False, "relu_2d": True}
    assert fast.shortcut is first_layer_linear[kind]
    assert fast._block_samples(subspace.WEIGHT_BLOCK) < len(x)
    torch.testing.assert_close(fast(thetas), slow(thetas), rtol=1e-12, atol=1e-12)

    def squared_margin(out, t):                                       # a custom per-sample loss: rows layout
        return (out - out.gather(1, t[:, None])).pow(2).sum(1)
    torch.testing.assert_close(SubspaceLosses(net, x, y, P, loss_fn=squared_margin)(thetas),
                               SubspaceLosses(net, x, y, P, loss_fn=squared_margin, shortcut=False)(thetas),
                               rtol=1e-12, atol=1e-12)


def test_tanh_mlp_keeps_the_per_theta_first_layer_shortcut():
    net = seeded_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)), 0)
    x, y = data()
    P = random_basis(n_params(net), 2, seed=0, dtype=torch.float64)
    fast, slow = SubspaceLosses(net, x, y, P), SubspaceLosses(net, x, y, P, shortcut=False)
    assert fast.path == "shortcut" and fast.shortcut
    thetas = gaussian(4, 2, seed=5)
    torch.testing.assert_close(fast(thetas), slow(thetas), rtol=1e-12, atol=1e-12)
