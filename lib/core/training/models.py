"""The networks of the study (docs/specification.md 1), built deterministically from a seed, and their fast CPU kernels.

* ``mlp1``: 784-256-10, one hidden ReLU layer (203,530 parameters);
* ``mlp2``: 784-256-256-10, the original paper's network (269,322 parameters);
* ``cnn``: two 3x3 conv layers (4 and 8 channels, padding 1) with ReLU and 2x2 max-pooling, linear head
  (4,266 parameters). Small on purpose: its exact Hessian-vector product costs a few forward passes over 10k
  images on a 2-core CPU, twice that at (8, 16) channels for +1 point test accuracy.

``mlp(widths, bias)`` builds the ReLU MLPs of other widths/depths (bias-free ones for the Hessian-norm bound);
``preferred_chunk`` is the samples-per-chunk that suits a network. Parameter counts: ``lib.core.tensors.n_params``
(also importable from here, as ``lib.core.training.models.n_params``); arithmetic: ``multiply_adds`` (per layer, one
sample)
and ``hvp_multiply_adds`` (one exact Hessian-vector product in forward passes, counted in multiply-adds).

Fast kernels (docs/specification.md is unchanged by them: same numbers to float rounding). ``plan(model)`` reads a
``Sequential`` of Flatten / Linear / ReLU / Identity / Dropout and *conv-pool stages* (Conv2d 3x3, stride 1,
padding 1, then ReLU, then MaxPool2d(2)) into ``Step``s, or returns None. A conv-pool stage runs as one matrix
product with the pooling folded in: every 2x2 pooling window of conv outputs is a linear map of one 4x4 patch of
the padded input, so ``phase_weights(W)`` (4 O x 16 C) times the patch matrix (``conv_pool_columns``: 16 C x
windows, one strided copy) gives the four conv outputs of every window, and the pooling is an elementwise max over
four contiguous blocks (the bias is added after it). Activations are channel-major (C, n, H, W), so the product is
one large GEMM. torch's own Conv2d + MaxPool2d spend most of their time on layout reorders and a scalar
max-pooling loop at these tiny channel counts (over 10,000 MNIST images on 2 threads the CNN's forward took 7.1x
mlp2's layer by layer and 3.1x with these kernels, 2.5x on one thread; mlp2 has 3x its FLOPs).

``CNN`` (what ``cnn()`` and ``build("cnn", seed)`` return) is an ``nn.Sequential`` of the usual torch layers, so its
``state_dict``, initialisation and torch.fx graph are those of the plain Sequential; in eval mode its forward is
``plan_forward`` (the kernels above), in train mode the layer-by-layer forward (training is bitwise unchanged).
Without gradients (``torch.no_grad``) on float32 CPU tensors it is ``lib.core.native.fused_cnn.logits`` where that
kernel is built (eight images per AVX2 register, every stage in cache; 3x faster than ``plan_forward`` here).
``lib.core.hessian`` (exact Hessian-vector products) and ``lib.core.landscape.subspace`` (many weight vectors at
once) reuse
the same steps and kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import fx, nn

from lib.core.native import fused_cnn
from lib.core.tensors import eval_mode, n_params

__all__ = ["IMAGE_SHAPE", "N_CLASSES", "MODELS", "CONV_CHUNK", "FUSED_CHUNK", "mlp", "cnn", "CNN", "build",
           "preferred_chunk", "n_params", "Step", "plan", "step_names", "step_weights", "plan_accepts", "plan_forward",
           "plan_forward_many", "phase_weights", "phase_weights_adjoint", "conv_pool_columns",
           "conv_pool_columns_adjoint", "conv_pool_pre", "multiply_adds", "hvp_multiply_adds"]

IMAGE_SHAPE = (1, 28, 28)
N_CLASSES = 10
MODELS = ("mlp1", "mlp2", "cnn")


def mlp(hidden: tuple[int, ...] | list[int], bias: bool = True, n_in: int = 784,
        n_out: int = N_CLASSES) -> nn.Sequential:
    """A ReLU MLP ``n_in - hidden... - n_out`` with a leading Flatten."""
    layers: list[nn.Module] = [nn.Flatten()]
    widths = [n_in, *hidden]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], n_out, bias=bias))
    return nn.Sequential(*layers)


class CNN(nn.Sequential):
    """The study's CNN: a plain ``nn.Sequential`` of torch layers (same ``state_dict``, initialisation and torch.fx
    graph) whose eval-mode forward is ``plan_forward`` (conv-pool stages as matrix products, same numbers to float
    rounding). Train mode, torch.fx tracing and ``fused = False`` use the layer-by-layer forward."""

    fused = True

    def forward(self, x):
        if self.training or not self.fused or isinstance(x, fx.Proxy):
            return super().forward(x)
        steps = plan(self)
        if steps is None or not plan_accepts(steps, x):
            return super().forward(x)
        if _fused_eligible(steps, x, list(self.parameters())):
            return fused_cnn.logits(steps, [None if s.module is None else (s.module.weight, s.module.bias)
                                            for s in steps], x)
        return plan_forward(steps, x)


def _plain_tensor(t: torch.Tensor) -> bool:
    """A float32 CPU tensor that no autograd, forward-mode AD or torch.func transform is tracing."""
    return (type(t) in (torch.Tensor, nn.Parameter) and t.dtype == torch.float32 and t.device.type == "cpu"
            and not torch._C._functorch.is_functorch_wrapped_tensor(t)
            and fwAD.unpack_dual(t).tangent is None)


def _fused_eligible(steps, x: torch.Tensor, params: list) -> bool:
    """Whether an eval-mode forward may run on ``lib.core.native.fused_cnn.logits``: no gradient wanted, plain float32
    CPU inputs and weights (no AD or transform tracing them), and ``fused_cnn.applies``."""
    return (not torch.is_grad_enabled() and _plain_tensor(x) and all(_plain_tensor(p) for p in params)
            and fused_cnn.applies(steps, params))


def cnn(channels: tuple[int, int] = (4, 8)) -> CNN:
    """The study's CNN: two 3x3 conv layers (``channels``, padding 1) with ReLU and 2x2 max-pooling, linear head."""
    c1, c2 = channels
    return CNN(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, N_CLASSES),
    )


_BUILDERS = {
    "mlp1": lambda: mlp((256,)),
    "mlp2": lambda: mlp((256, 256)),
    "cnn": lambda: cnn(),
}


def build(name: str, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Model ``name`` with PyTorch's default initialisation drawn from ``seed`` (global RNG untouched)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; allowed: {list(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = _BUILDERS[name]()
    return model.to(dtype)


#: samples per chunk for forward passes and Hessian-vector products of models with convolutions: small chunks
#: keep conv activations in cache (measured 2-3x faster than 4096 on a 2-core CPU)
CONV_CHUNK = 500
#: samples per block inside ``plan_forward`` when a conv-pool stage is present (its activations stay in cache;
#: 256 was fastest with 2 threads, within 5% of 128 with one)
FUSED_CHUNK = 256
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def preferred_chunk(model: nn.Module) -> int | None:
    """Samples per chunk that suit ``model`` (``CONV_CHUNK`` if it has a convolution), or None for the caller's
    own default."""
    return CONV_CHUNK if any(isinstance(m, _CONVOLUTIONS) for m in model.modules()) else None


# ----------------------------------------------------------------------------------------------- costs
def multiply_adds(model: nn.Module, sample: torch.Tensor) -> list[int]:
    """Multiply-adds of the weight products of every Linear and Conv1d/2d/3d layer for one input ``sample`` (a
    batch of one), in the order the layers run (bias additions, activations, pooling and the loss not counted).
    Eval mode, no gradients; a ``Sequential`` runs its layers one by one (``CNN``'s fused forward would bypass
    them)."""
    counts, convs = [], (nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def count(mod, _inputs, out):
        if isinstance(mod, nn.Linear):
            counts.append(out.numel() * mod.in_features)
        else:
            counts.append(out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size))

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, *convs))]
    try:
        with torch.no_grad(), eval_mode(model):
            nn.Sequential.forward(model, sample) if isinstance(model, nn.Sequential) else model(sample)
    finally:
        for h in hooks:
            h.remove()
    return counts


def hvp_multiply_adds(model: nn.Module, sample: torch.Tensor) -> dict:
    """One exact Hessian-vector product in forward passes, counted in multiply-adds (``multiply_adds``: dense
    layers, every unit active) for a chain of layers whose first layer reads the data. Per layer of m
    multiply-adds (Pearlmutter's R-op; ReLU and max-pooling keep their selections): forward W a (m); gradient dW
    and, past the first layer, da (m + m); tangent forward V a + W Ra (m + m past the first); tangent backward
    R(dW) = Rg a^T + g Ra^T (m + m past the first) and, past the first, R(da) = W^T Rg + V^T g (2m). With every
    forward value and gradient kept from a first pass only the tangent passes remain: 2m for the first layer and
    6m for every later one ("kept"); recomputed per product: 4m and 9m ("recompute")."""
    m = multiply_adds(model, sample)
    forward, first, rest = sum(m), m[0], sum(m[1:])
    return {"layers": m, "forward_multiply_adds": forward, "kept_in_forwards": (2 * first + 6 * rest) / forward,
            "recompute_in_forwards": (4 * first + 9 * rest) / forward}


# ----------------------------------------------------------------------------------------------- steps
@dataclass(frozen=True, eq=False)
class Step:
    """One step of a ``plan``: ``kind`` is "flatten", "linear" (``module`` an nn.Linear, ``relu`` whether a ReLU
    follows) or "conv_pool" (``module`` the Conv2d of a Conv2d 3x3 / ReLU / MaxPool2d(2) stage)."""
    kind: str
    module: nn.Module | None = None
    relu: bool = False


def _conv_pool_at(layers: list, i: int) -> bool:
    if i + 3 > len(layers):
        return False
    conv, relu, pool = layers[i:i + 3]
    if not (type(conv) is nn.Conv2d and isinstance(relu, nn.ReLU) and type(pool) is nn.MaxPool2d):
        return False
    ok_conv = (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
               and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")
    k, s = pool.kernel_size, pool.stride
    ok_pool = (k in (2, (2, 2)) and s in (2, (2, 2)) and pool.padding in (0, (0, 0))
               and pool.dilation in (1, (1, 1)) and not pool.ceil_mode and not pool.return_indices)
    return ok_conv and ok_pool


def plan(model: nn.Module) -> list[Step] | None:
    """The ``Step``s of a Sequential made of Flatten(1, -1), Linear (optionally followed by ReLU), conv-pool stages
    (Conv2d 3x3 / stride 1 / padding 1 / zeros, ReLU, MaxPool2d(2)), Identity and Dropout (identities in eval mode);
    None for anything else (other layers, buffers, parameters outside the layers, a Sequential subclass with its own
    forward, a ReLU that does not follow a Linear, a Linear before a conv-pool stage, no Linear at the end)."""
    if not isinstance(model, nn.Sequential) or any(True for _ in model.buffers()):
        return None
    if type(model).forward not in (nn.Sequential.forward, CNN.forward):
        return None                        # a subclass with its own forward: not a plain chain of its layers
    layers = [m for m in model if not isinstance(m, (nn.Identity, nn.Dropout))]
    own = sum(p.numel() for m in layers for p in m.parameters())
    if own != sum(p.numel() for p in model.parameters()):
        return None                        # parameters outside the layers
    steps: list[Step] = []
    i = 0
    while i < len(layers):
        m = layers[i]
        if type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            steps.append(Step("flatten"))
            i += 1
        elif type(m) is nn.Linear:
            relu = i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU
            steps.append(Step("linear", m, relu))
            i += 2 if relu else 1
        elif _conv_pool_at(layers, i):
            if any(s.kind != "conv_pool" for s in steps):
                return None
            steps.append(Step("conv_pool", m))
            i += 3
        else:
            return None
    if not steps or steps[-1].kind != "linear":
        return None
    if any(s.kind == "conv_pool" for s in steps) and not any(s.kind == "flatten" for s in steps):
        return None
    return steps


def step_names(model: nn.Module, steps: list[Step]) -> list:
    """Per step of ``plan(model)``: the names of its weight and bias in ``model.named_parameters()`` (the bias
    None when the layer has none), or None for a step without parameters."""
    prefix = {id(m): name for name, m in model.named_modules()}
    return [None if s.module is None else
            (f"{prefix[id(s.module)]}.weight", f"{prefix[id(s.module)]}.bias" if s.module.bias is not None else None)
            for s in steps]


def step_weights(params: dict, names: list) -> list:
    """Per step (W, b or None) from ``params`` (name -> tensor, e.g. ``unflatten``) and ``step_names``."""
    return [None if n is None else (params[n[0]], params[n[1]] if n[1] else None) for n in names]


def plan_accepts(steps: list[Step], x: torch.Tensor) -> bool:
    """Whether ``plan_forward(steps, x)`` applies to inputs shaped like ``x``: conv-pool stages need a 4-D input
    whose spatial sizes stay even through every stage, a float dtype matching the weights, and one device."""
    if not x.is_floating_point():
        return False
    convs = [s for s in steps if s.kind == "conv_pool"]
    if not convs:
        return x.dim() >= 2
    if x.dim() != 4 or x.shape[1] != convs[0].module.in_channels:
        return False
    h, w = x.shape[2], x.shape[3]
    for _ in convs:
        if h % 2 or w % 2 or h < 2 or w < 2:
            return False
        h, w = h // 2, w // 2
    return True


# ----------------------------------------------------------------------------------------------- conv-pool kernels
def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """(..., O, C, 3, 3) conv weights -> (..., 4 O, 16 C) matrix mapping a 4x4 input patch (columns ordered C, t_r,
    t_c) to the conv outputs at the four positions (a, b) of its 2x2 pooling window (rows ordered a, b, O): output
    (2i + a, 2j + b) reads patch pixels (a + di, b + dj). Differentiable and vmap-safe (pads and a stack)."""
    *batch, O, C, _, _ = weight.shape
    phases = torch.stack([F.pad(weight, (b, 1 - b, a, 1 - a)) for a in (0, 1) for b in (0, 1)], -5)
    return phases.reshape(*batch, 4 * O, 16 * C)


def phase_weights_adjoint(grad: torch.Tensor, out_channels: int, in_channels: int) -> torch.Tensor:
    """Adjoint of ``phase_weights``: (..., 4 O, 16 C) -> (..., O, C, 3, 3)."""
    *batch, _, _ = grad.shape
    g = grad.reshape(*batch, 2, 2, out_channels, in_channels, 4, 4)
    return sum(g[..., a, b, :, :, a:a + 3, b:b + 3] for a in (0, 1) for b in (0, 1))


def conv_pool_columns(h: torch.Tensor, out: torch.Tensor | None = None,
                      padded: torch.Tensor | None = None) -> torch.Tensor:
    """Patch matrix (16 C, n H/2 W/2) of channel-major activations h (C, n, H, W), H and W even: after zero padding
    1, column (k, i, j) holds the 4x4 patch of rows 2i..2i+3 and columns 2j..2j+3 of image k (one strided copy).
    ``out`` (16 C, n H/2 W/2) and ``padded`` (C, n, H + 2, W + 2, zero borders) are optional buffers to reuse
    (no autograd through them)."""
    C, n, H, W = h.shape
    if padded is None:
        padded = F.pad(h, (1, 1, 1, 1))
    else:
        padded[:, :, 1:H + 1, 1:W + 1] = h
    patches = padded.unfold(2, 4, 2).unfold(3, 4, 2).permute(0, 4, 5, 1, 2, 3)   # C, 4, 4, n, H/2, W/2 (a view)
    if out is None:
        return patches.reshape(16 * C, n * (H // 2) * (W // 2))
    out.view(C, 4, 4, n, H // 2, W // 2).copy_(patches)
    return out


def conv_pool_columns_adjoint(cols: torch.Tensor, n: int, height: int, width: int,
                              planes: torch.Tensor | None = None,
                              padded: torch.Tensor | None = None) -> torch.Tensor:
    """Adjoint of ``conv_pool_columns``: (16 C, n H/2 W/2) -> (C, n, H, W). Patch pixel (2u + s_r, 2v + s_c) of
    window (i, j) lands on phase plane (s_r, s_c) at (i + u, j + v): four shifted additions, then depth-to-space.
    ``planes`` (C, 2, 2, n, H/2 + 1, W/2 + 1) and ``padded`` (C, n, H + 2, W + 2) are optional buffers to reuse;
    the result is then a view of ``padded``."""
    C, Hq, Wq = cols.shape[0] // 16, height // 2, width // 2
    c = cols.view(C, 2, 2, 2, 2, n, Hq, Wq)                         # C, u, s_r, v, s_c, n, i, j
    planes = cols.new_zeros(C, 2, 2, n, Hq + 1, Wq + 1) if planes is None else planes.zero_()
    for u in (0, 1):
        for v in (0, 1):
            planes[:, :, :, :, u:u + Hq, v:v + Wq] += c[:, u, :, v]
    depth = planes.permute(0, 3, 4, 1, 5, 2)                         # C, n, I, s_r, J, s_c
    if padded is None:
        padded = depth.reshape(C, n, height + 2, width + 2)
    else:
        padded.view(C, n, Hq + 1, 2, Wq + 1, 2).copy_(depth)
    return padded[:, :, 1:height + 1, 1:width + 1]


def conv_pool_pre(cols: torch.Tensor, phase: torch.Tensor, bias4: torch.Tensor | None) -> torch.Tensor:
    """The conv outputs of every pooling window, (4, O, positions) = ``phase @ cols + bias4`` for ``phase =
    phase_weights(W)`` and ``bias4 = b.repeat(4)`` (or None)."""
    z = phase @ cols if bias4 is None else torch.addmm(bias4.unsqueeze(1), phase, cols)
    return z.view(4, phase.shape[0] // 4, -1)


def _conv_pool_forward(h: torch.Tensor, phase: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """relu(maxpool2(conv3x3(h))) of channel-major h (C, n, H, W) -> (O, n, H/2, W/2); the bias is added after
    the max (it is the same at the four window positions)."""
    C, n, H, W = h.shape
    pooled = conv_pool_pre(conv_pool_columns(h), phase, None).amax(0)
    if bias is not None:
        pooled = pooled + bias.unsqueeze(1)
    return torch.relu(pooled).view(phase.shape[0] // 4, n, H // 2, W // 2)


def plan_forward(steps: list[Step], x: torch.Tensor) -> torch.Tensor:
    """The network's output for inputs x by the fast kernels, in blocks of ``FUSED_CHUNK`` samples when a conv-pool
    stage is present (autograd, forward-mode AD and vmap all apply: views, pads, stacks, matrix products, max)."""
    weights = [(phase_weights(s.module.weight), s.module.bias) if s.kind == "conv_pool" else None for s in steps]
    if not any(w is not None for w in weights) or len(x) <= FUSED_CHUNK:
        return _plan_block(steps, weights, x)
    return torch.cat([_plan_block(steps, weights, x[i:i + FUSED_CHUNK]) for i in range(0, len(x), FUSED_CHUNK)])


def _plan_block(steps: list[Step], weights: list, x: torch.Tensor) -> torch.Tensor:
    h, channel_major = x, False
    for s, w in zip(steps, weights):
        if s.kind == "conv_pool":
            if not channel_major:
                h, channel_major = h.transpose(0, 1), True
            h = _conv_pool_forward(h, *w)
        elif s.kind == "flatten":
            h = h.transpose(0, 1).flatten(1) if channel_major else h.flatten(1)
            channel_major = False
        else:
            h = F.linear(h, s.module.weight, s.module.bias)
            if s.relu:
                h = torch.relu(h)
    return h


def plan_forward_many(steps: list[Step], weights: list, h: torch.Tensor, start: int = 0,
                      batched: bool = False, classes_first: bool = False) -> torch.Tensor:
    """Outputs (B, n, K) (``classes_first``: (B, K, n), the layout in which a softmax over K is fast) of the
    network for B weight sets at once, one batched matrix product per layer.

    ``weights[k]`` = (W (B, ...), b (B, ...) or None) for every affine step k >= ``start`` (other entries unused);
    ``h``: the input of step ``start``, shared by all weight sets (``batched=False``: (n, ...) as the model takes
    it) or per weight set (``batched=True``: (B, n, F) rows, or (B, C, n, H, W) channel-major images before a
    conv-pool step). A conv-pool stage on a shared input runs as one product with the B phase matrices stacked;
    a conv-pool stage on per-weight-set images runs as one grouped convolution (``groups=B``, channels-last
    (n, B C, H, W): the B convolutions of the block in one library call, without the 16x patch matrix) followed by
    the 2x2 max as three elementwise maxima of strided views. No autograd needed (plain tensor operations); inputs
    are not chunked here."""
    # B weight sets; with no affine step left (the first-layer shortcut took the only layer) h carries them
    B = next((w[0].shape[0] for w in weights[start:] if w is not None), h.shape[0] if batched else 1)
    layout = ("batched_" if batched else "shared_") + ("image" if batched and h.dim() == 5 else
                                                       "rows" if batched else "input")
    last = len(steps) - 1
    for k, (s, w) in enumerate(zip(steps[start:], weights[start:]), start):
        if s.kind == "flatten":
            if layout == "grouped_image":                  # (n, B C, H, W) -> (B, n, C H W), the model's order
                n, _, H, Wd = h.shape
                h = h.view(n, B, -1, H, Wd).transpose(0, 1).flatten(2)
            elif layout == "batched_image":
                h = h.permute(0, 2, 1, 3, 4).flatten(2)
            elif layout == "batched_rows":
                h = h.flatten(2)
            else:
                h = h.flatten(1)
            layout = "shared_input" if layout == "shared_input" else "batched_rows"
        elif s.kind == "linear" and classes_first and k == last:
            W, b = w
            h = torch.matmul(W, h.transpose(-1, -2))                               # B, K, n
            if b is not None:
                h = h + b.unsqueeze(2)
            return torch.relu(h) if s.relu else h
        elif s.kind == "linear":
            W, b = w
            if layout == "batched_rows":
                h = torch.bmm(h, W.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h,
                                                                                     W.transpose(1, 2))
            else:
                out = W.shape[1]
                h = (h @ W.reshape(B * out, -1).T).view(len(h), B, out).transpose(0, 1)
                if b is not None:
                    h = h + b.unsqueeze(1)
            layout = "batched_rows"
            if s.relu:
                h = torch.relu(h)
        else:
            W, b = w
            O, C = W.shape[1], W.shape[2]
            if layout == "batched_image":                 # per-weight-set images: grouped from here on
                h, layout = _grouped_channels_last(h), "grouped_image"
            if layout == "grouped_image":
                h = _grouped_conv_pool(h, W, b)
                continue
            P = phase_weights(W)                                                  # B, 4 O, 16 C
            x = h.transpose(0, 1)
            _, n, H, Wd = x.shape
            z = P.reshape(B * 4 * O, 16 * C) @ conv_pool_columns(x)
            pooled = z.view(B, 4, O, -1).amax(1)
            if b is not None:
                pooled += b.unsqueeze(2)
            h = torch.relu_(pooled).view(B, O, n, H // 2, Wd // 2)
            layout = "batched_image"
    return h


def _grouped_channels_last(h: torch.Tensor) -> torch.Tensor:
    """(B, C, n, H, W) channel-major images of B weight sets -> (n, B C, H, W) in channels-last memory (one copy)."""
    B, C, n, H, W = h.shape
    return h.permute(2, 0, 1, 3, 4).reshape(n, B * C, H, W).contiguous(memory_format=torch.channels_last)


def _grouped_conv_pool(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """relu(maxpool2(conv3x3(h_t, W_t)) + b_t) for the B weight sets t at once: h (n, B C, H, W) channels-last,
    W (B, O, C, 3, 3), b (B, O) or None -> (n, B O, H/2, W/2), channels-last."""
    B, O, C = W.shape[:3]
    z = F.conv2d(h, W.reshape(B * O, C, 3, 3), None, padding=1, groups=B)
    pooled = torch.maximum(torch.maximum(z[:, :, 0::2, 0::2], z[:, :, 0::2, 1::2]),
                           torch.maximum(z[:, :, 1::2, 0::2], z[:, :, 1::2, 1::2]))
    if b is not None:
        pooled += b.reshape(1, B * O, 1, 1)
    return torch.relu_(pooled)
