"""Meshkov, Kiselev & Grabovoy's CNN Hessian-norm bound (lib.core.landscape.bounds): hand computations, explicit
checks."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian
from torch.func import functional_call, jacrev

from lib.core.landscape import bounds
from lib.core.tensors import flat_params, unflatten
from lib.core.training import models
from tests.cases import explicit_hessian, seeded_data, seeded_model

SQRT2 = math.sqrt(2)


def hand_net():
    """conv 1->2 (2x2 kernels) on 4x4 -> 2x3x3, ReLU, conv 2->1 (2x2) -> 1x2x2, ReLU, linear 4 -> 3; no biases.

    conv1: channel 0 has one tap 0.5 at (0,0), channel 1 one tap -0.5 at (1,1); conv2: taps (0,0) = 0.25 in
    both input channels; linear rows e1, e2, e3 + e4."""
    net = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 2, bias=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4, 3, bias=False)).double()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[0, 0, 0, 0], net[0].weight[1, 0, 1, 1] = 0.5, -0.5
        net[2].weight.zero_()
        net[2].weight[0, :, 0, 0] = 0.25
        net[5].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]))
    return net


def hand_inputs():
    """Two 1x4x4 images with ||x|| = 2 (all 0.5) and 1 (one pixel)."""
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    x[0] = 0.5
    x[1, 0, 2, 1] = 1.0
    return x


def test_cnn_bound_by_hand():
    net, x = hand_net(), hand_inputs()
    consts = bounds.cnn_bound_constants(net, x)
    # C = max(1, 2, 2, 1) = 2; k = 2; conv outputs 3x3 and 2x2 -> m = n = 3; w = 0.5; linear 4 -> 3: h = 4;
    # w~ = 1; ||x|| = max(2, 1) = 2
    assert consts == {"n_conv": 2, "n_linear": 1, "C": 2, "k": 2, "w": 0.5, "m": 3, "n": 3, "h": 4,
                      "w_linear": 1.0, "x_norm": 2.0}
    # L = 1, P = 1; q^2 = C^2 k^2 m n = 4*4*9 = 144; c = q^2 w^2 = 36; h^2 w~^2 = 16
    # Lemma 5 (proof's factor): sqrt2 * ||x||^2 q^2 (h^2 w~^2)^P c^L (L+1 + P c/(h^2 w~^2))
    #                         = sqrt2 * 4 * 144 * 16 * 36 * (2 + 36/16) = sqrt2 * 331776 * 4.25 = sqrt2 * 1410048
    assert bounds.cnn_hessian_norm_bound(**consts) == pytest.approx(SQRT2 * 1410048, rel=1e-12)
    # as printed: last factor (2 + 16/36) = 22/9 -> sqrt2 * 331776 * 22 / 9 = sqrt2 * 811008
    assert bounds.cnn_hessian_norm_bound(**consts, printed=True) == pytest.approx(SQRT2 * 811008, rel=1e-12)
    # Theorem 2 (no head, the two convs only): sqrt2 * ||x||^2 q^2 (L+1) c^L = sqrt2 * 4 * 144 * 2 * 36
    no_head = {**consts, "n_linear": 0, "h": 0, "w_linear": 0.0}
    assert bounds.cnn_hessian_norm_bound(**no_head) == pytest.approx(SQRT2 * 41472, rel=1e-12)

    exact = bounds.cnn_operator_norms(net, x)
    # ||T1||^2: T1^T T1 = 0.25 (S0^T S0 + S1^T S1), S_c the 3x3 windows at (0,0) and (1,1) of the 4x4 input;
    # the 4 pixels in both windows give 0.25 * 2 = 0.5.  T2: each output = 0.25 (a0 + a1) at its own position,
    # T2 T2^T = 2 * 0.0625 I -> 0.125.  Linear: W W^T = diag(1, 1, 2) -> 2.
    assert exact["layer_norms_sq"] == pytest.approx([0.5, 0.125, 2.0], rel=1e-12)
    # no padding: every tap reaches all output positions, 9 (conv1) and 4 (conv2); linear 1 -> q^2 = 9
    assert exact["q_sq"] == 9.0 and exact["x_norm"] == 2.0
    # Lemma 2: sqrt2 q^2 ||x||^2 (t2 t3 + t1 t3 + t1 t2) = sqrt2 * 9 * 4 * (0.25 + 1 + 0.0625) = sqrt2 * 47.25
    assert bounds.matricized_hessian_bound(**exact) == pytest.approx(SQRT2 * 47.25, rel=1e-12)
    # equal layer norms: the lemma as printed, sqrt2 q^2 ||x||^2 (L+1) w_T^(2L) with L+1 = 3, w_T^2 = 4
    assert bounds.matricized_hessian_bound([4.0, 4.0, 4.0], 1.0, 1.0) == pytest.approx(SQRT2 * 3 * 16)


def test_cnn_bound_arguments():
    with pytest.raises(ValueError, match="n_conv=0 is not allowed"):
        bounds.cnn_hessian_norm_bound(0, 1, 2, 2, 0.5, 3, 3, 4, 1.0, 2.0)
    with pytest.raises(ValueError, match="w_linear=0.0 is not allowed"):
        bounds.cnn_hessian_norm_bound(2, 1, 2, 2, 0.5, 3, 3, 4, 0.0, 2.0)
    with pytest.raises(ValueError, match="printed=1 is not allowed"):
        bounds.cnn_hessian_norm_bound(2, 0, 2, 2, 0.5, 3, 3, 0, 0.0, 2.0, printed=1)
    assert bounds.cnn_hessian_norm_bound(400, 0, 64, 7, 10.0, 224, 224, 0, 0.0, 1e3) == math.inf
    with pytest.raises(ValueError, match="at least one"):
        bounds.matricized_hessian_bound([], 1.0, 1.0)


@pytest.mark.parametrize("net, message", [
    (nn.Sequential(nn.Conv2d(1, 2, 3, bias=True), nn.Flatten(), nn.Linear(8, 2, bias=False)), "bias-free"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, bias=False)), "stride-1"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding="same", bias=False)), "numeric zero padding"),
    (nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.MaxPool2d(2, stride=1)), "non-overlapping"),
    (nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.AvgPool2d(2)), "AvgPool2d is not covered"),
    (nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.Tanh()), "Tanh is not covered"),
    (nn.Sequential(nn.Flatten(), nn.Linear(16, 16, bias=False)), "at least one Conv2d"),
    (nn.Sequential(nn.Flatten(), nn.Linear(16, 16, bias=False), nn.Unflatten(1, (1, 4, 4)),
                   nn.Conv2d(1, 1, 2, bias=False)), "Unflatten is not covered"),
    (nn.Conv2d(1, 2, 2, bias=False), "nn.Sequential"),
])
def test_cnn_constants_refuse_what_the_statement_does_not_cover(net, message):
    with pytest.raises(ValueError, match=message):
        bounds.cnn_bound_constants(net.double(), torch.zeros(1, 1, 4, 4, dtype=torch.float64))


def test_study_cnn_constants():
    net, x = models.build("cnn", 0), torch.ones(3, 1, 28, 28)
    with pytest.raises(ValueError, match="bias-free"):
        bounds.cnn_bound_constants(net, x)
    consts = bounds.cnn_bound_constants(net, x, allow_bias=True)
    # channels 1, 4, 8; 3x3 kernels with padding 1: outputs 28x28 and 14x14; head 392 -> 10; ||x|| = 28
    assert {k: consts[k] for k in ("n_conv", "n_linear", "C", "k", "m", "n", "h")} == \
        {"n_conv": 2, "n_linear": 1, "C": 8, "k": 3, "m": 28, "n": 28, "h": 392}
    assert consts["w"] == pytest.approx(max(net[i].weight.abs().max().item() for i in (0, 3)))
    assert consts["w_linear"] == pytest.approx(net[7].weight.abs().max().item())
    assert consts["x_norm"] == pytest.approx(28.0)


def test_study_cnn_outer_product_norms(one_thread):
    """models.cnn (fused eval forward) at (1, 2) channels: measured ||H_O|| equals the explicit one, and lies under
    both bounds (read from the weights; with biases the bound is not proved, it holds by orders of magnitude)."""
    net = seeded_model(lambda: models.cnn((1, 2)), 0).eval()
    x, _ = seeded_data(2, models.IMAGE_SHAPE, 10, seed=4)
    measured = bounds.outer_product_hessian_norms(net, x, [0, 1])
    assert net.fused                                               # the caller's model is left as it was
    consts, exact = bounds.cnn_bound_constants(net, x, allow_bias=True), bounds.cnn_operator_norms(net, x, True)
    assert exact["q_sq"] == 28 * 28
    for i in range(2):
        norm = float(torch.linalg.eigvalsh(explicit_outer_product(net, x[i:i + 1])).abs().max())
        assert measured[i] == pytest.approx(norm, rel=1e-9)
        assert norm <= bounds.matricized_hessian_bound(**exact) <= bounds.cnn_hessian_norm_bound(**consts)


def explicit_T(weight, in_shape, padding):
    """The convolution's matrix (rows: outputs, columns: inputs) as the Jacobian of x -> conv2d(x, W)."""
    return jacrev(lambda v: F.conv2d(v.reshape(1, *in_shape), weight, padding=padding).reshape(-1))(
        torch.zeros(math.prod(in_shape), dtype=torch.float64))


@pytest.mark.parametrize("explicit_limit", [bounds.EXPLICIT_MAX_ENTRIES, 0])
def test_conv_operator_norms_against_explicit_matrices(monkeypatch, explicit_limit):
    """||T||_2 (explicit matrix or Lanczos through conv_transpose2d) and ||dT/dW||_2 of a padded, non-square conv,
    against matrices built by autograd."""
    monkeypatch.setattr(bounds, "EXPLICIT_MAX_ENTRIES", explicit_limit)
    net = seeded_model(lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False)), 3)
    in_shape = (2, 3, 5)
    got = bounds.cnn_operator_norms(net, torch.ones(1, *in_shape, dtype=torch.float64))
    weight = net[0].weight.detach()
    T = explicit_T(weight, in_shape, 1)
    assert got["layer_norms_sq"][0] == pytest.approx(float(torch.linalg.matrix_norm(T, ord=2)) ** 2, rel=1e-9)
    Q = jacrev(lambda W: explicit_T(W, in_shape, 1).reshape(-1))(weight).reshape(T.numel(), -1)
    assert torch.count_nonzero(Q.sum(1) > 1) == 0                  # each entry of T is at most one weight
    # padding 1 keeps the 3x5 size; the centre tap reaches all 15 output positions
    assert got["q_sq"] == pytest.approx(float(torch.linalg.matrix_norm(Q, ord=2)) ** 2) == 15.0


def study_like():
    """The study's CNN in miniature: padded 3x3 convs 1->2->3 with ReLU and 2x2 max pooling, linear head."""
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(3 * 2 * 2, 4, bias=False))


def two_convs():
    return nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.ReLU(), nn.Conv2d(2, 2, 2, bias=False), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 4 * 4, 3, bias=False))


def deep_head():
    return nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 3 * 3, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False))


def explicit_outer_product(net, x):
    """H_O = J^T (diag p - p p^T) J of one sample, J the Jacobian of the logits by autograd (P x P)."""
    w0 = flat_params(net)
    logits = lambda w: functional_call(net, unflatten(net, w), (x,))[0]
    J = jacobian(logits, w0)
    p = torch.softmax(logits(w0), 0)
    return J.T @ (torch.diag(p) - torch.outer(p, p)) @ J


@pytest.mark.parametrize("builder, size", [(study_like, 8), (two_convs, 7), (deep_head, 8)])
def test_bound_covers_the_explicit_outer_product_hessian(builder, size, one_thread):
    for seed in range(3):
        net = seeded_model(builder, seed).eval()
        x, y = seeded_data(4, (1, size, size), 3, seed=10 + seed)
        x = 3.0 * x                                                    # ||x|| about 3 size, not 1 size
        paper = bounds.cnn_hessian_norm_bound(**bounds.cnn_bound_constants(net, x))
        printed = bounds.cnn_hessian_norm_bound(**bounds.cnn_bound_constants(net, x), printed=True)
        exact = bounds.matricized_hessian_bound(**bounds.cnn_operator_norms(net, x))
        assert exact <= paper * (1 + 1e-12)          # exact norms satisfy the lemma's hypotheses, tighter
        measured = bounds.outer_product_hessian_norms(net, x, range(len(x)))
        for i in range(len(x)):
            H_O = explicit_outer_product(net, x[i:i + 1])
            norm = float(torch.linalg.eigvalsh(H_O).abs().max())
            assert measured[i] == pytest.approx(norm, rel=1e-9)
            assert norm <= exact and norm <= paper and norm <= printed
            # H_O is the Gauss-Newton part: the logits are linear in the last layer's weights, so there the
            # full Hessian (cases.explicit_hessian) has no functional term and equals H_O
            n_last = net[-1].weight.numel()
            H = explicit_hessian(net, x[i:i + 1], y[i:i + 1])
            assert torch.allclose(H[-n_last:, -n_last:], H_O[-n_last:, -n_last:], atol=1e-12, rtol=1e-10)


def test_cnn_bound_comparison_on_a_tiny_net(one_thread):
    net = seeded_model(study_like, 5).eval()
    x, y = seeded_data(12, (1, 8, 8), 4, seed=7)
    out = bounds.cnn_bound_comparison(net, x, y, n_samples=3, seed=2, tol=1e-8)
    idx = torch.randperm(12, generator=torch.Generator().manual_seed(2))[:3].tolist()
    assert out["indices"] == idx and out["bias_free"]
    assert out["bound"] == bounds.cnn_hessian_norm_bound(**bounds.cnn_bound_constants(net, x))
    full = [float(torch.linalg.eigvalsh(explicit_hessian(net, x[i:i + 1], y[i:i + 1])).abs().max()) for i in idx]
    outer = [float(torch.linalg.eigvalsh(explicit_outer_product(net, x[i:i + 1])).abs().max()) for i in idx]
    assert np.allclose(out["full_norms"], full, rtol=1e-6)
    assert np.allclose(out["outer_norms"], outer, rtol=1e-9)
    assert out["full_max"] == max(out["full_norms"]) and out["outer_median"] == float(np.median(out["outer_norms"]))
    assert out["outer_max"] <= out["bound_exact_norms"] <= out["bound"]
    assert set(out["seconds"]) == {"bounds", "outer", "full"}

    biased = seeded_model(lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                                nn.Flatten(), nn.Linear(2 * 4 * 4, 4)), 1).eval()
    out = bounds.cnn_bound_comparison(biased, x, y, n_samples=2, seed=0)
    assert not out["bias_free"] and len(out["full_norms"]) == 2 == len(out["outer_norms"])
