"""Parameter counts, shapes, seeding, kernels and multiply-add counts of the study's networks."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.utils.flop_counter import FlopCounterMode

from lib.core.tensors import n_params, unflatten
from lib.core.training import models


@pytest.mark.parametrize("name, count", [("mlp1", 203_530), ("mlp2", 269_322), ("cnn", 4_266)])
def test_parameter_counts_and_output_shape(name, count):
    net = models.build(name, seed=0)
    assert n_params(net) == count
    out = net(torch.zeros(5, 1, 28, 28))
    assert out.shape == (5, 10)


def test_mlp_counts_follow_widths():
    net = models.mlp((256, 256))
    assert n_params(net) == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert n_params(models.mlp((32, 16), bias=False)) == 784 * 32 + 32 * 16 + 16 * 10
    assert models.n_params is n_params                 # still importable from lib.core.training.models: one copy


def test_seeding_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = models.build("mlp2", 1), models.build("mlp2", 1), models.build("mlp2", 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'resnet'; allowed: \['mlp1', 'mlp2', 'cnn'\]"):
        models.build("resnet", 0)


def test_preferred_chunk_small_for_convolutions_only():
    assert models.preferred_chunk(models.build("cnn", 0)) == models.CONV_CHUNK
    assert models.preferred_chunk(models.build("mlp2", 0)) is None
    for conv in (nn.Conv1d(1, 1, 3), nn.Conv3d(1, 1, 3), nn.ConvTranspose2d(1, 1, 3), nn.LazyConv2d(1, 3)):
        assert models.preferred_chunk(nn.Sequential(conv, nn.ReLU())) == models.CONV_CHUNK
    assert models.preferred_chunk(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))) is None


# ----------------------------------------------------------------------------------------------- fast kernels
def reference_cnn(seed: int, channels=(4, 8)) -> nn.Sequential:
    """The study CNN as the plain Sequential it was before the fast kernels, same seeded initialisation."""
    c1, c2 = channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(c2 * 7 * 7, 10))


def test_cnn_parameters_and_state_dict_layout_unchanged():
    """build("cnn", seed) draws the same weights into the same state_dict layout as the plain Sequential (saved
    results still load), and a saved plain state_dict loads into it."""
    for seed in (0, 3):
        net, ref = models.build("cnn", seed), reference_cnn(seed)
        assert isinstance(net, nn.Sequential) and isinstance(net, models.CNN)
        assert list(net.state_dict()) == list(ref.state_dict())
        for (name, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
        other = models.build("cnn", seed + 1)
        other.load_state_dict(ref.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(other.parameters(), ref.parameters()))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n", [1, 7, models.FUSED_CHUNK + 3])
def test_cnn_eval_forward_equals_layer_by_layer(dtype, tol, n, monkeypatch):
    net = models.build("cnn", 1, dtype=dtype).eval()
    x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(n), dtype=dtype)
    calls = []
    real, real_fused = models.plan_forward, models.fused_cnn.logits
    monkeypatch.setattr(models, "plan_forward", lambda *a: calls.append("plan") or real(*a))
    monkeypatch.setattr(models.fused_cnn, "logits", lambda *a: calls.append("fused") or real_fused(*a))
    with torch.no_grad():
        fast, slow = net(x), nn.Sequential.forward(net, x)
    fused = dtype == torch.float32 and models.fused_cnn.available()
    assert calls == ["fused" if fused else "plan"]       # the eval forward ran the fast kernels
    torch.testing.assert_close(fast, slow, rtol=tol, atol=tol)
    calls.clear()
    graph = net(x)                                        # gradients wanted: the differentiable conv-pool kernels
    assert calls == ["plan"] and graph.requires_grad
    torch.testing.assert_close(graph.detach(), slow, rtol=tol, atol=tol)
    net.fused = False
    with torch.no_grad():
        assert torch.equal(net(x), slow)


def test_cnn_train_mode_forward_is_the_layer_by_layer_one():
    """Training runs torch's own layers: trained weights are bitwise those of the plain Sequential."""
    net, ref = models.build("cnn", 2).train(), reference_cnn(2).train()
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(net(x), ref(x))


def test_cnn_eval_forward_gradients_vmap_and_jvp_equal_layer_by_layer():
    """Autograd, forward-mode AD and vmap through the fast kernels (what torch.func callers do in eval mode)."""
    net = models.build("cnn", 0, dtype=torch.float64).eval()
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(6) % 10
    names = [n for n, _ in net.named_parameters()]
    params = {n: p.detach() for n, p in net.named_parameters()}

    def loss(p, forward):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(net, p, (x,)) if forward is None
                                                 else forward(p), y)

    def plain(p):
        return torch.func.functional_call(_PlainForward(net), p, (x,))

    g_fast, g_slow = torch.func.grad(loss)(params, None), torch.func.grad(loss)(params, plain)
    for n in names:
        torch.testing.assert_close(g_fast[n], g_slow[n], rtol=1e-10, atol=1e-12)
    t = {n: torch.randn_like(p) for n, p in params.items()}
    _, j_fast = torch.func.jvp(lambda p: loss(p, None), (params,), (t,))
    _, j_slow = torch.func.jvp(lambda p: loss(p, plain), (params,), (t,))
    torch.testing.assert_close(j_fast, j_slow, rtol=1e-10, atol=1e-12)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    v_fast = torch.func.vmap(lambda s: loss({n: p * s for n, p in params.items()}, None))(scale)
    v_slow = torch.stack([loss({n: p * s for n, p in params.items()}, plain) for s in scale])
    torch.testing.assert_close(v_fast, v_slow, rtol=1e-10, atol=1e-12)


class _PlainForward(nn.Module):
    """A wrapper whose forward is the layer-by-layer one of the wrapped Sequential (same parameter names)."""

    def __init__(self, net):
        super().__init__()
        for name, child in net.named_children():
            self.add_module(name, child)

    def forward(self, x):
        for child in self.children():
            x = child(x)
        return x


def test_cnn_traces_to_torch_layers():
    """torch.fx sees the torch layers (lib.core.landscape.jet's rule table binds to them)."""
    graph = torch.fx.symbolic_trace(models.build("cnn", 0)).graph
    targets = [n.target for n in graph.nodes if n.op == "call_module"]
    assert targets == [str(i) for i in range(8)]


def test_plan_reads_the_study_models_and_refuses_others():
    for name in ("mlp1", "mlp2", "cnn"):
        steps = models.plan(models.build(name, 0))
        assert steps is not None and steps[-1].kind == "linear"
    kinds = [s.kind for s in models.plan(models.build("cnn", 0))]
    assert kinds == ["conv_pool", "conv_pool", "flatten", "linear"]
    assert [(s.kind, s.relu) for s in models.plan(models.build("mlp2", 0))] == \
        [("flatten", False), ("linear", True), ("linear", True), ("linear", False)]
    refused = [
        nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)),
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, stride=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8, 2)),
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3), nn.Flatten(), nn.Linear(8, 2)),
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2)),
        nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)),
        nn.Sequential(nn.ReLU(), nn.Linear(3, 2)),
        nn.Sequential(nn.Flatten(), nn.Linear(8, 3), nn.Conv2d(1, 1, 3, padding=1)),
        nn.Linear(3, 2),
    ]
    class OwnForward(nn.Sequential):
        def forward(self, x):
            return super().forward(2 * x)

    with_scale = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with_scale.scale = nn.Parameter(torch.ones(1))
    refused += [OwnForward(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)), with_scale]
    for net in refused:
        assert models.plan(net) is None, net
    # odd image sizes are refused at call time: the CNN then runs its layers
    assert not models.plan_accepts(models.plan(models.build("cnn", 0)), torch.zeros(1, 1, 26, 26))


def test_conv_pool_kernels_are_adjoint_pairs():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    P = models.phase_weights(W)
    G = torch.randn(P.shape, generator=g, dtype=torch.float64)
    (expected,) = torch.autograd.grad((P * G).sum(), W)
    torch.testing.assert_close(models.phase_weights_adjoint(G, 3, 2), expected, rtol=1e-12, atol=1e-12)
    h = torch.randn(2, 5, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    cols = models.conv_pool_columns(h)
    G = torch.randn(cols.shape, generator=g, dtype=torch.float64)
    (expected,) = torch.autograd.grad((cols * G).sum(), h)
    torch.testing.assert_close(models.conv_pool_columns_adjoint(G, 5, 6, 8), expected, rtol=1e-12, atol=1e-12)
    # with reused buffers
    out, padded = torch.empty_like(cols), torch.zeros(2, 5, 8, 10, dtype=torch.float64)
    torch.testing.assert_close(models.conv_pool_columns(h.detach(), out=out, padded=padded), cols.detach())
    planes, pad2 = torch.empty(2, 2, 2, 5, 4, 5, dtype=torch.float64), torch.empty(2, 5, 8, 10, dtype=torch.float64)
    torch.testing.assert_close(models.conv_pool_columns_adjoint(G, 5, 6, 8, planes=planes, padded=pad2), expected)


def _step_weights_and_outputs(net, steps, W, x):
    """Per step, the (B, ...) weights and biases of the flat weight vectors W (B, n_params), and the network's output
    for each of them by one plain forward pass (torch.func.functional_call): (B, n, K)."""
    params = unflatten(net, W)
    prefix = {id(m): n for n, m in net.named_modules()}
    weights = [None if s.module is None else (params[f"{prefix[id(s.module)]}.weight"],
                                              params[f"{prefix[id(s.module)]}.bias"]) for s in steps]
    return weights, torch.stack([torch.func.functional_call(net, unflatten(net, w), (x,)) for w in W])


@pytest.mark.parametrize("name", ["mlp1", "cnn"])
def test_plan_forward_many_equals_one_forward_per_weight_vector(name):
    net = models.build(name, 0, dtype=torch.float64).eval()
    steps = models.plan(net)
    x = torch.randn(9, 1, 28, 28, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w0 = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    W = w0 + 0.1 * torch.randn(3, w0.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weights, expected = _step_weights_and_outputs(net, steps, W, x)
    torch.testing.assert_close(models.plan_forward_many(steps, weights, x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(models.plan_forward_many(steps, weights, x, classes_first=True),
                               expected.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_plan_forward_many_three_conv_pool_stages_on_16x16_images():
    """The shared first stage, then two grouped-convolution stages in a row (channels-last between them)."""
    torch.manual_seed(4)
    layers = []
    for c_in, c_out in ((1, 3), (3, 5), (5, 2)):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    net = torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(2 * 2 * 2, 4)).double().eval()
    steps = models.plan(net)
    assert [s.kind for s in steps] == ["conv_pool"] * 3 + ["flatten", "linear"]
    x = torch.randn(7, 1, 16, 16, dtype=torch.float64)
    w0 = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    W = w0 + 0.2 * torch.randn(4, w0.numel(), dtype=torch.float64)
    weights, expected = _step_weights_and_outputs(net, steps, W, x)
    torch.testing.assert_close(models.plan_forward_many(steps, weights, x), expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------- arithmetic
def _flops(f) -> int:
    with FlopCounterMode(display=False) as counter:
        f()
    return counter.get_total_flops()


@pytest.mark.parametrize("name, layers", [
    ("mlp2", [784 * 256, 256 * 256, 256 * 10]),
    # conv 1->4 3x3 on 28x28 (padding 1), conv 4->8 3x3 on the pooled 14x14, head 8*7*7 -> 10
    ("cnn", [28 * 28 * 4 * 9, 14 * 14 * 8 * 4 * 9, 8 * 7 * 7 * 10]),
])
def test_multiply_adds_are_the_layer_shapes_and_torch_flop_count(name, layers):
    net = models.build(name, 0).eval()
    x = torch.randn(1, 1, 28, 28)
    assert models.multiply_adds(net, x) == layers
    assert not net.training                                  # the mode is restored
    net.train()
    assert models.multiply_adds(net, x) == layers and net.training
    # torch's own count of the forward (2 flops per multiply-add) through the layer-by-layer graph
    assert _flops(lambda: torch.nn.Sequential.forward(net, x)) == 2 * sum(layers)


@pytest.mark.parametrize("name, kept, recompute", [
    # mlp2: first layer 200,704, the rest 68,096 of 268,800 multiply-adds
    ("mlp2", (2 * 200_704 + 6 * 68_096) / 268_800, (4 * 200_704 + 9 * 68_096) / 268_800),
    # cnn: first conv 28,224, the rest 60,368 of 88,592: no exact product costs <= 3 forwards (issue 16)
    ("cnn", (2 * 28_224 + 6 * 60_368) / 88_592, (4 * 28_224 + 9 * 60_368) / 88_592),
])
def test_hvp_arithmetic_counts_and_bounds_torch_autograd(name, kept, recompute):
    net = models.build(name, 0)
    x, y = torch.randn(1, 1, 28, 28), torch.tensor([3])
    a = models.hvp_multiply_adds(net, x)
    assert a["kept_in_forwards"] == pytest.approx(kept, rel=1e-12)
    assert a["recompute_in_forwards"] == pytest.approx(recompute, rel=1e-12)
    if name == "cnn":
        assert a["kept_in_forwards"] > 3
    # torch's forward-over-reverse product does at least the counted work: the count is a lower bound
    params = {k: v.detach() for k, v in net.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}

    def loss(p):
        return torch.nn.functional.cross_entropy(functional_call(net.train(), p, (x,)), y)

    torch_in_forwards = _flops(lambda: jvp(grad(loss), (params,), (tangent,))) / (2 * a["forward_multiply_adds"])
    assert a["recompute_in_forwards"] <= torch_in_forwards
