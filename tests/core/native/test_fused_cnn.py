"""The fused CNN kernel (lib.core.native.fused_cnn): its losses equal float64 layer-by-layer cross-entropies, for the
study's CNN and for other conv-pool shapes, and the Monte Carlo uses it exactly where it applies."""
import copy
import platform
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.core.landscape.delta import delta_curve
from lib.core.landscape.sampling import make_sampler
from lib.core.landscape.subspace import SubspaceLosses, random_basis
from lib.core.native import fused_cnn, refresh, status
from lib.core.tensors import flat_params, n_params, unflatten
from lib.core.training.models import build, cnn, plan
from tests.cases import seeded_data, seeded_model
from tests.core.native.conftest import SHAPES, needs_kernel


def reference_losses(net: nn.Module, x, y, P, thetas) -> torch.Tensor:
    """Float64 cross-entropies of torch's own Conv2d / ReLU / MaxPool2d / Linear layers at w* + P^T theta."""
    ref = nn.Sequential(*copy.deepcopy(list(net))).double().eval()   # a plain Sequential: torch's layer forward
    w0 = flat_params(ref)
    with torch.no_grad():
        return torch.stack([F.cross_entropy(torch.func.functional_call(ref, unflatten(ref, w0 + P.double().T @ t),
                                                                       (x.double(),)), y, reduction="none")
                            for t in thetas.double()]).float()


def assert_float_close(fused: torch.Tensor, exact: torch.Tensor):
    """Float32 rounding of logits of size ~|l|: absolute 2e-5 plus 2e-6 of the loss."""
    err = (fused - exact).abs()
    bound = 2e-5 + 2e-6 * exact.abs()
    assert bool((err <= bound).all()), f"largest excess {float((err - bound).max()):.3g}"


def test_the_kernel_builds_wherever_it_can():
    """On an x86-64 CPU with AVX2 and a C compiler the kernel must build (a silent fallback would hide a 4x slower
    Monte Carlo); elsewhere the reason is given."""
    can = (platform.machine().lower() in ("x86_64", "amd64") and shutil.which("cc") is not None
           and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))
    if can:
        assert fused_cnn.available(), status()["fused_cnn"]["reason"]
    else:
        assert not fused_cnn.available() and status()["fused_cnn"]["reason"]


@needs_kernel
def test_the_study_cnn_equals_torch_layers_in_float64():
    net = build("cnn", 0).eval()
    x, y = seeded_data(37, (1, 28, 28), 10, dtype=torch.float32)
    P = random_basis(n_params(net), 4, seed=2)
    thetas = 0.3 * torch.randn(21, 4, generator=torch.Generator().manual_seed(3))   # 3 lane groups, a ragged one
    fast = SubspaceLosses(net, x, y, P)
    assert fast.engine == "fused_cnn"
    assert_float_close(fast(thetas), reference_losses(net, x, y, P, thetas))
    slow = SubspaceLosses(net, x, y, P, fused=False)
    assert slow.engine == "torch"
    assert_float_close(slow(thetas), reference_losses(net, x, y, P, thetas))


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layers", [
    [nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 6, 5)],
    [nn.Conv2d(1, 5, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
     nn.Conv2d(5, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
     nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3, 3, bias=False)],
], ids=["one stage, odd channels", "three stages, no biases"])
def test_other_conv_pool_shapes_equal_torch_layers(layers, threads):
    """Odd channel counts (the kernel pairs output channels), missing biases, several input channels, a
    non-square image, one or three stages, sample ranges split over threads (3 threads for 7 images)."""
    net = seeded_model(lambda: nn.Sequential(*layers), 1, torch.float32).eval()
    shape = (2, 8, 12) if isinstance(layers[0], nn.Conv2d) and layers[0].in_channels == 2 else (1, 8, 8)
    x, y = seeded_data(7, shape, layers[-1].out_features, dtype=torch.float32)
    steps = plan(net)
    assert fused_cnn.supports(steps)
    P = random_basis(n_params(net), 3, seed=4)
    thetas = torch.randn(10, 3, generator=torch.Generator().manual_seed(5))
    params = unflatten(net, flat_params(net).unsqueeze(0) + thetas @ P)
    prefix = {id(m): name for name, m in net.named_modules()}
    weights = [None if s.module is None else
               (params[f"{prefix[id(s.module)]}.weight"],
                params.get(f"{prefix[id(s.module)]}.bias") if s.module.bias is not None else None) for s in steps]
    got = fused_cnn.losses(steps, weights, x, y, threads=threads)
    assert got.shape == (10, 7)
    assert_float_close(got, reference_losses(net, x, y, P, thetas))


def test_supports_only_conv_pool_stages_then_one_linear():
    assert fused_cnn.supports(plan(cnn()))
    two_linear = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                               nn.Linear(2 * 14 * 14, 8), nn.ReLU(), nn.Linear(8, 10))
    assert not fused_cnn.supports(plan(two_linear))
    assert not fused_cnn.supports(plan(build("mlp2", 0)))


def test_the_torch_engine_serves_what_the_kernel_does_not():
    """Float64 models, custom losses, targets out of range and LIB_FUSED_CNN=0 keep torch's operations."""
    net = build("cnn", 0).eval()
    x, y = seeded_data(5, (1, 28, 28), 10, dtype=torch.float32)
    P = random_basis(n_params(net), 2, seed=0)
    assert SubspaceLosses(net.double(), x.double(), y, P.double()).engine == "torch"
    net = net.float()
    assert SubspaceLosses(net, x, y, P, loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none")
                          ).engine == "torch"
    assert SubspaceLosses(net, x, torch.full_like(y, 10), P).engine == "torch"


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv("LIB_FUSED_CNN", "0")
    refresh()
    try:
        assert not fused_cnn.available() and "LIB_FUSED_CNN" in status()["fused_cnn"]["reason"]
        net = build("cnn", 0).eval()
        x, y = seeded_data(5, (1, 28, 28), 10, dtype=torch.float32)
        assert SubspaceLosses(net, x, y, random_basis(n_params(net), 2, seed=0)).engine == "torch"
        with pytest.raises(RuntimeError, match="LIB_FUSED_CNN"):
            fused_cnn.losses(plan(net), [], x, y)
    finally:
        monkeypatch.delenv("LIB_FUSED_CNN")
        refresh()


@needs_kernel
def test_delta_curve_records_its_engine_and_matches_the_torch_engine(monkeypatch):
    net = build("cnn", 0).eval()
    x, y = seeded_data(60, (1, 28, 28), 10, dtype=torch.float32)
    P = random_basis(n_params(net), 3, seed=1)
    sampler = make_sampler("gaussian", sigma=0.2)
    fast = delta_curve(net, x, y, P, sampler, 24, n_orders=3, progress=False)
    assert fast.meta["engine"] == "fused_cnn"
    monkeypatch.setenv("LIB_FUSED_CNN", "0")
    refresh()
    try:
        slow = delta_curve(net, x, y, P, sampler, 24, n_orders=3, progress=False)
    finally:
        monkeypatch.delenv("LIB_FUSED_CNN")
        refresh()
    assert slow.meta["engine"] == "torch"
    np.testing.assert_allclose(fast.delta, slow.delta, rtol=2e-3, atol=1e-12)
    np.testing.assert_allclose(fast.order_mean, slow.order_mean, rtol=2e-3, atol=1e-12)


@needs_kernel
def test_fused_logits_equal_torch_layers():
    net = build("cnn", 1).eval()
    x, _ = seeded_data(19, (1, 28, 28), 10, dtype=torch.float32)
    steps = plan(net)
    weights = [None if s.module is None else (s.module.weight, s.module.bias) for s in steps]
    with torch.no_grad():
        want = nn.Sequential(*copy.deepcopy(list(net))).double()(x.double()).float()
    for threads in (1, 2):
        torch.testing.assert_close(fused_cnn.logits(steps, weights, x, threads=threads), want,
                                   rtol=1e-5, atol=2e-5)


@needs_kernel
def test_fused_gradient_equals_autograd_of_torch_layers():
    """The minibatch gradient and loss sum that ``train`` takes from the kernel, against float64 autograd."""
    builder, shape, K, n = SHAPES["odd channels, no biases, 3 stages"]
    net = seeded_model(builder, 3, torch.float32).eval()
    x, y = seeded_data(n, shape, K, dtype=torch.float32)
    steps = plan(net)
    weights = [None if s.module is None else (s.module.weight, s.module.bias) for s in steps]
    grads, loss = fused_cnn.gradient(steps, weights, x, y, threads=2)
    ref = nn.Sequential(*copy.deepcopy(list(net))).double()
    total = F.cross_entropy(ref(x.double()), y, reduction="sum")
    total.backward()
    got = [t for pair in grads for t in pair if t is not None]
    assert len(got) == len(list(ref.parameters()))
    for g, p in zip(got, ref.parameters()):
        torch.testing.assert_close(g.double(), p.grad, rtol=1e-4, atol=1e-6)
    assert loss == pytest.approx(float(total), rel=1e-6)


@needs_kernel
def test_losses_at_weights_of_a_cnn_use_the_kernel_and_equal_torch_layers():
    from lib.core.landscape.subspace import losses_at_weights
    net = build("cnn", 4).eval()
    x, y = seeded_data(11, (1, 28, 28), 10, dtype=torch.float32)
    P = random_basis(n_params(net), 2, seed=3)
    thetas = torch.randn(19, 2, generator=torch.Generator().manual_seed(1))
    weights = flat_params(net).unsqueeze(0) + thetas @ P
    assert_float_close(losses_at_weights(net, x, y, weights), reference_losses(net, x, y, P, thetas))
