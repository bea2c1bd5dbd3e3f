"""Per-sample loss, gradient and Hessian of a network in a D-dim subspace: ``per_sample_terms`` -> (a_i, b_i, C_i).

a_i = l_i(w*), b_i = P grad l_i(w*) (R^D), C_i = P Hess l_i(w*) P^T (D x D), for a basis P of shape (D, n_params)
(rows = directions), for all N samples with forward-mode directional derivatives (plus one adjoint pass on the fast
path), no per-sample loops, chunked over samples:

* ``method="jet"`` (fast path): ``JetInterpreter``, a ``torch.fx.Interpreter`` over the model's traced graph whose
  ``RULES`` table (Linear, Conv2d, ReLU/Tanh/Sigmoid, max/avg pooling, Flatten/view, additions, Dropout/Identity)
  is also its allow-list, with the cross-entropy loss: forward-mode first-order directional derivatives of every
  activation along all D directions (one batched product per layer), then the exact mixed second derivatives from
  one reverse (adjoint) pass, C_ab = z_a^T (diag p - p p^T) z_b + sum over second-order sources of
  adjoint . source_ab (see ``cross_entropy_terms``). About 1 + 2D forward-pass equivalents plus O(D^2) per-sample
  dot products; agrees with the explicit per-sample Hessian to rounding (tested).
* ``method="jvp"``: generic ``torch.func.jvp`` of ``jvp`` (any model / loss_fn): for each direction a, the inner jvp
  along p_a is differentiated along every p_b, b >= a (vmapped), giving the mixed derivative C_ab = d_a d_b l
  directly (no polarisation cancellation) and, for b = a, b_a: D(D+1)/2 nested directional derivatives.
  layer/batch/group norms are evaluated through composite ops there, because torch's own second-order
  forward-AD rules for them are silently wrong (pytorch/pytorch#196700, #198017).
* ``method="auto"`` (default): ``jet`` when the model graph and loss are supported, else ``jvp``.
"""
from __future__ import annotations

import operator
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jvp, vmap
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

from lib.core.checks import check_choice, check_data, check_int
from lib.core.landscape.subspace import check_basis, cross_entropy_per_sample
from lib.core.tensors import chunks, device_dtype, eval_mode, flat_params, param_layout, unflatten

__all__ = ["PerSampleTerms", "per_sample_terms", "JetInterpreter", "Jet", "PointwiseSource", "AffineSource",
           "cross_entropy_terms", "pointwise", "RULES", "Unsupported", "METHODS"]

METHODS = ("auto", "jet", "jvp")
JET_MEMORY_BUDGET = 512 * 2 ** 20   # bytes of first-order tangents per chunk (default chunk size of "jet")
MAX_JET_CHUNK = 4096
DEFAULT_JVP_CHUNK = 2048


@dataclass
class PerSampleTerms:
    """a (N,) = l_i(w*); b (N, D) = P grad l_i(w*); C (N, D, D) = P Hess l_i(w*) P^T (symmetric)."""

    a: torch.Tensor
    b: torch.Tensor
    C: torch.Tensor
    method: str = ""
    seconds: float = 0.0

    @property
    def N(self) -> int:
        return int(self.a.shape[0])

    @property
    def D(self) -> int:
        return int(self.b.shape[1])


class Unsupported(Exception):
    """The traced jet cannot handle this model / loss (``per_sample_terms`` then uses the generic path)."""


# ----------------------------------------------------------------------------------------------- values
@dataclass(frozen=True, eq=False)
class PointwiseSource:
    """y = f(z) with f'' != 0 contributes f''(z) z_a z_b to d_a d_b y."""

    out: torch.Tensor        # y, in the autograd graph: its adjoint lambda weighs this source
    f2: torch.Tensor         # f''(z), detached, shape of y
    tangents: torch.Tensor   # z_a, (D, N, ...)
    node: int = field(default=-1, kw_only=True)   # graph position of the node that made it (set by the interpreter)

    def term(self, lam: torch.Tensor) -> torch.Tensor:
        """lambda . f''(z) z_a z_b, shape (N, D, D)."""
        w = (lam * self.f2).flatten(1)                                   # (N, U)
        u = self.tangents.flatten(2)                                     # (D, N, U)
        return torch.einsum("anu,nu,bnu->nab", u, w, u)


@dataclass(frozen=True, eq=False)
class AffineSource:
    """y = op(h, W(theta)) with h depending on theta contributes op(h_b, V_a) + op(h_a, V_b) to d_a d_b y."""

    out: torch.Tensor        # y, in the autograd graph
    adjoint: Callable        # adjoint(lam, V, in_shape) -> (N, D, *in): V_a^T lam[n] for every direction a
    V: torch.Tensor          # directions of the layer's weight, (D, *weight.shape)
    tangents: torch.Tensor   # h_a, (D, N, *in)
    node: int = field(default=-1, kw_only=True)   # graph position of the node that made it (set by the interpreter)

    def term(self, lam: torch.Tensor) -> torch.Tensor:
        """lambda . (op(h_b, V_a) + op(h_a, V_b)) = (op^T(lambda; V_a)) . h_b + (a <-> b), shape (N, D, D)."""
        U = self.adjoint(lam, self.V, self.tangents.shape[1:])         # (N, D, *in)
        G = torch.einsum("nau,bnu->nab", U.flatten(2), self.tangents.flatten(2))
        return G + G.transpose(1, 2)


@dataclass(frozen=True, eq=False)
class Jet:
    """A traced value: primal h (N, ...) inside an autograd graph, its first derivatives h1 (D, N, ...) along the D
    basis directions (detached; None when h does not depend on theta) and the second-order sources it depends on,
    in graph order. Rules return a Jet with only their own new sources; the interpreter adds the inputs'."""

    h: torch.Tensor
    h1: torch.Tensor | None = None
    sources: tuple = ()


def _merge(t):   # (K, N, ...) -> (K*N, ...)
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _split(t, K):  # (K*N, ...) -> (K, N, ...)
    return t.reshape(K, t.shape[0] // K, *t.shape[1:])


# ----------------------------------------------------------------------------------------------- rules
def _linear_map(j: Jet, f) -> Jet:
    """y = f(h), f linear and acting on each sample alone: y_a = f(h_a)."""
    h = f(j.h)
    if j.h1 is None:
        return Jet(h)
    with torch.no_grad():
        return Jet(h, _split(f(_merge(j.h1)), j.h1.shape[0]))


def pointwise(f, f1, f2, j: Jet, *_ignored, **_ignored_kw) -> Jet:
    """Rule of y = f(z) for a pointwise f: y_a = f'(z) z_a; source f''(z) z_a z_b (f2 None: f'' = 0), with
    ``f1(z, y)``, ``f2(z, y)`` (z, y detached). ``partial(pointwise, f, f1, f2)`` is a step for ``RULES``.

    Further arguments (``F.relu``'s ``inplace``) do not change the value and are ignored."""
    y = f(j.h)
    if j.h1 is None:
        return Jet(y)
    with torch.no_grad():
        zd, yd = j.h.detach(), y.detach()
        y1 = f1(zd, yd) * j.h1
        sources = () if f2 is None else (PointwiseSource(y, f2(zd, yd), j.h1),)
    return Jet(y, y1, sources)


_relu = partial(pointwise, torch.relu, lambda z, y: (z > 0).to(z.dtype), None)
_tanh = partial(pointwise, torch.tanh, lambda z, y: 1 - y * y, lambda z, y: -2 * y * (1 - y * y))
_sigmoid = partial(pointwise, torch.sigmoid, lambda z, y: y * (1 - y), lambda z, y: y * (1 - y) * (1 - 2 * y))


def _flatten(j: Jet, start_dim=1, end_dim=-1) -> Jet:
    nd = j.h.dim()
    s, e = start_dim % nd, end_dim % nd
    if s < 1:
        raise Unsupported("flatten over the batch dimension")
    return _linear_map(j, lambda t: torch.flatten(t, s, e))


def _reshape(j: Jet, *shape, **kwargs) -> Jet:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if kwargs or not shape or shape[0] != j.h.shape[0]:
        raise Unsupported("view/reshape that does not keep the batch dimension first")
    rest = tuple(shape[1:])
    return _linear_map(j, lambda t: t.reshape(t.shape[0], *rest))


def _size(j: Jet, *args, **kwargs):
    return j.h.size(*args, **kwargs)


def _maxpool(j: Jet, kernel_size, stride, padding, dilation, ceil_mode) -> Jet:
    y, idx = F.max_pool2d(j.h, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    if j.h1 is None:
        return Jet(y)
    with torch.no_grad():
        K = j.h1.shape[0]
        flat = j.h1.flatten(-2)                                          # (K, N, C, H*W)
        ii = idx.flatten(-2).unsqueeze(0).expand(K, *idx.shape[:-2], -1)
        return Jet(y, torch.gather(flat, -1, ii).reshape(K, *y.shape))


def _max_pool2d(j: Jet, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices:
        raise Unsupported("max_pool2d(return_indices=True)")
    stride = stride if stride not in (None, []) else kernel_size
    return _maxpool(j, kernel_size, stride, padding, dilation, ceil_mode)


def _add(x, y, **kwargs):
    if kwargs:
        raise Unsupported("add with kwargs")
    if not isinstance(x, Jet):
        x, y = y, x
    if not isinstance(x, Jet):           # sizes: plain numbers
        return x + y
    if not isinstance(y, Jet):
        return Jet(x.h + y, x.h1)
    h1 = y.h1 if x.h1 is None else (x.h1 if y.h1 is None else x.h1 + y.h1)
    return Jet(x.h + y.h, h1)


def _affine(mod: nn.Module, V, Vb, op, adjoint, j: Jet) -> Jet:
    """y = op(h, W(theta)) + bias(theta), W(theta) = W + sum_a theta_a V_a (op linear in each argument).

    ``adjoint(lam, V, in_shape)`` is the adjoint of h -> op(h, V_a) for every a (used by the source)."""
    W = mod.weight.detach()
    bias = None if mod.bias is None else mod.bias.detach()
    D, out_ch = V.shape[0], W.shape[0]
    y = op(j.h, W, bias)
    with torch.no_grad():
        hd = j.h.detach()
        Vcat = V.reshape(D * out_ch, *W.shape[1:])
        hv = op(hd, Vcat, None if Vb is None else Vb.reshape(-1))      # (N, D*out, ...)
        N = hv.shape[0]
        y1 = hv.reshape(N, D, out_ch, *hv.shape[2:]).transpose(0, 1)
        if j.h1 is None:
            return Jet(y, y1)
        y1 = y1 + _split(op(_merge(j.h1), W, None), D)
    return Jet(y, y1, (AffineSource(y, adjoint, V, j.h1),))


def _linear_adjoint(lam, V, in_shape):
    """U[n, a] = V_a^T lam[n] for F.linear: lam (N, out), V (D, out, in) -> (N, D, in)."""
    D, out_ch, fan_in = V.shape
    return (lam @ V.permute(1, 0, 2).reshape(out_ch, D * fan_in)).reshape(lam.shape[0], D, fan_in)


#: channels-last memory for the jet's convolutions (same values; oneDNN runs small channel counts 2-8x faster)
_CL = torch.channels_last


def _conv_adjoint(lam, V, in_shape, stride, padding, dilation):
    """U[n, a] = adjoint of h -> conv2d(h, V_a) applied to lam[n]: lam (N, out, H', W'), V (D, out, in, k, k).

    A transposed convolution in channels-last memory (oneDNN's fast path: 8x faster than ``conv2d_input`` in the
    default layout at the study CNN's 4 and 8 channels), with the output padding that restores ``in_shape``;
    ``conv2d_input`` (channels-last too) where that is not expressible (string padding, odd geometry)."""
    D, out_ch, in_ch = V.shape[:3]
    Wt = V.permute(1, 0, 2, 3, 4).reshape(out_ch, D * in_ch, *V.shape[3:])   # conv weight D*in -> out
    N = lam.shape[0]
    lam, Wt = lam.contiguous(memory_format=_CL), Wt.contiguous(memory_format=_CL)
    size = tuple(in_shape[-2:])
    extra = None
    if not isinstance(padding, str):
        extra = [n - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for n, o, s, p, d, k in
                 zip(size, lam.shape[-2:], stride, padding, dilation, V.shape[-2:])]
        if not all(0 <= e < max(s, d) for e, s, d in zip(extra, stride, dilation)):
            extra = None
    if extra is not None:
        U = F.conv_transpose2d(lam, Wt, None, stride, padding, extra, 1, dilation)
    else:
        U = torch.nn.grad.conv2d_input((N, D * in_ch, *size), Wt, lam, stride, padding, dilation, 1)
    return U.reshape(N, D, in_ch, *size)


# Module rules are binders: ``bind(module, dirs) -> step(jet)``, called once per graph node when the interpreter is
# built (``dirs(name)``: the (D, *shape) directions of the module's parameter ``name``); a binder may refuse its
# module by raising ``Unsupported``.
def _linear_layer(mod, dirs):
    Vb = dirs("bias") if mod.bias is not None else None
    return partial(_affine, mod, dirs("weight"), Vb, F.linear, _linear_adjoint)


def _conv2d_layer(mod, dirs):
    if mod.groups != 1 or mod.padding_mode != "zeros":
        raise Unsupported("grouped / non-zero-padded Conv2d")
    geometry = (mod.stride, mod.padding, mod.dilation)

    def op(h, w, b):
        return F.conv2d(h.contiguous(memory_format=_CL), w.contiguous(memory_format=_CL), b, *geometry, 1)

    def adjoint(lam, V, in_shape):
        return _conv_adjoint(lam, V, in_shape, *geometry)

    Vb = dirs("bias") if mod.bias is not None else None
    return partial(_affine, mod, dirs("weight"), Vb, op, adjoint)


def _stateless(step):
    """Binder of a module whose rule does not depend on the module."""
    return lambda mod, dirs: step


def _identity(j: Jet) -> Jet:
    return j


#: The jet's one rule table, and its allow-list: fx target -> rule. Keys are module classes (call_module nodes; a
#: subclass uses its nearest listed base; the value is a binder, see above), functions (call_function) and method
#: names (call_method); the values of the last two are steps ``step(*args, **kwargs) -> Jet`` called with the
#: node's arguments (Jets for traced tensors). A graph with a call whose target is not here uses the generic path.
RULES: dict = {
    nn.Linear: _linear_layer,
    nn.Conv2d: _conv2d_layer,
    nn.ReLU: _stateless(_relu),
    nn.Tanh: _stateless(_tanh),
    nn.Sigmoid: _stateless(_sigmoid),
    nn.Flatten: lambda mod, dirs: partial(_flatten, start_dim=mod.start_dim, end_dim=mod.end_dim),
    nn.MaxPool2d: lambda mod, dirs: partial(_maxpool, kernel_size=mod.kernel_size, stride=mod.stride,
                                            padding=mod.padding, dilation=mod.dilation, ceil_mode=mod.ceil_mode),
    nn.AvgPool2d: lambda mod, dirs: partial(_linear_map, f=mod),
    nn.AdaptiveAvgPool2d: lambda mod, dirs: partial(_linear_map, f=mod),
    nn.Identity: _stateless(_identity),
    nn.Dropout: _stateless(_identity),     # eval mode
    F.relu: _relu,
    torch.relu: _relu,
    torch.tanh: _tanh,
    torch.sigmoid: _sigmoid,
    torch.flatten: _flatten,
    operator.add: _add,
    torch.add: _add,
    F.max_pool2d: _max_pool2d,
    "size": _size,
    "relu": _relu,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "flatten": _flatten,
    "view": _reshape,
    "reshape": _reshape,
}


def _module_rule(cls: type):
    return next((RULES[c] for c in cls.__mro__ if c in RULES), None)


# ----------------------------------------------------------------------------------------------- interpreter
class JetInterpreter(fx.Interpreter):
    """Per-sample value, gradient and Hessian in the subspace for fx-traceable models built from ``RULES``.

    Forward: every node's primal h (autograd graph kept), its D first-order directional derivatives h1 and the
    second-order sources it depends on (``Jet``). ``terms(x, y)`` then assembles (a, b, C) of the cross-entropy
    (``cross_entropy_terms``). Construction raises ``Unsupported`` when the model cannot be traced or its graph has
    a call without a rule. The interpreter holds only the graph and its per-node steps: ``terms`` can be called any
    number of times, on any inputs.
    """

    def __init__(self, model: nn.Module, basis: torch.Tensor):
        try:
            gm = fx.symbolic_trace(model)
        except Exception as e:  # noqa: BLE001 - any tracing failure means: use the generic path
            raise Unsupported(f"torch.fx tracing failed: {e}") from None
        super().__init__(gm)
        self.extra_traceback = False        # Unsupported messages stay as raised
        device, dtype = device_dtype(model)
        self.D = int(basis.shape[0])
        basis = basis.to(device=device, dtype=dtype)
        offsets, o = {}, 0
        for name, shape, numel in zip(*param_layout(model)):
            offsets[name] = (o, numel, shape)
            o += numel

        def dirs(qualname):
            if qualname not in offsets:
                raise Unsupported(f"parameter {qualname} not found in named_parameters")
            start, numel, shape = offsets[qualname]
            return basis[:, start:start + numel].reshape(self.D, *shape)

        self.steps, self.position = {}, {}
        for i, node in enumerate(gm.graph.nodes):
            self.steps[node] = self._bind(node, lambda p, node=node: dirs(f"{node.target}.{p}"))
            self.position[node] = i
        if sum(1 for nd in gm.graph.nodes if nd.op == "placeholder") != 1:
            raise Unsupported("models with more than one input")

    def _bind(self, node, dirs):
        if node.op == "get_attr":
            raise Unsupported("get_attr nodes (parameters used outside supported modules)")
        if node.op == "call_module":
            mod = self.module.get_submodule(node.target)
            bind = _module_rule(type(mod))
            if bind is None:
                raise Unsupported(f"module {type(mod).__name__}")
            return bind(mod, dirs)
        if node.op in ("call_function", "call_method"):
            step = RULES.get(node.target)
            if step is None:
                raise Unsupported(f"{node.op[5:]} {node.target}")
            return step
        return None                          # placeholder, output: fx.Interpreter's own

    def run_node(self, n):
        step = self.steps[n]
        if step is None:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        out = step(*args, **kwargs)
        if not isinstance(out, Jet):
            return out
        sources = [replace(s, node=self.position[n]) if s.node < 0 else s for s in out.sources]
        fx.node.map_aggregate((args, kwargs), lambda v: sources.extend(v.sources) if isinstance(v, Jet) else None)
        return replace(out, sources=tuple(sorted(dict.fromkeys(sources), key=lambda s: s.node)))

    def terms(self, x: torch.Tensor, y: torch.Tensor):
        """(a (N,), b (N, D), C (N, D, D)) of the per-sample cross-entropy of the samples x with labels y."""
        with torch.enable_grad():
            out = self.run(Jet(x.detach().requires_grad_(True)))
            if not isinstance(out, Jet):
                raise Unsupported("model output is not a single tensor")
            return cross_entropy_terms(out, y, self.D)


def cross_entropy_terms(logits: Jet, y: torch.Tensor, D: int):
    """(a, b, C) of l = cross-entropy(z, y) from the logits' jet z (with its second-order sources).

    With p = softmax(z) and r = p - onehot(y) (per sample, held fixed):
        a = -log p_y,   b_a = r . z_a,   C_ab = z_a^T (diag p - p p^T) z_b + r . d_a d_b z,
    where d_a d_b z is linear in its sources, so r . d_a d_b z = sum over sources of lambda . source_ab with
    lambda = d(r . z)/d(source output): the per-sample adjoints of one reverse pass (autograd on the primal; samples
    are independent in eval mode). Cost: about 1 + D (first-order tangents) + D (adjoints against the directions)
    forward-pass equivalents, plus D^2 per-sample dot products; no D^2 matrix products.
    """
    z = logits.h
    N = z.shape[0]
    with torch.no_grad():
        logp = torch.log_softmax(z, dim=-1)
        a = -logp.gather(-1, y.reshape(-1, 1)).squeeze(-1)
        if logits.h1 is None:
            return a, a.new_zeros(N, D), a.new_zeros(N, D, D)
        p = logp.exp()
        r = p.clone()
        r[torch.arange(N, device=r.device), y] -= 1.0
        z1 = logits.h1                                                   # (D, N, C)
        b = (z1 * r).sum(-1).T                                           # (N, D)
        pz = (z1 * p).sum(-1).T                                          # (N, D)
        C = torch.einsum("anc,nc,bnc->nab", z1, p, z1) - pz.unsqueeze(2) * pz.unsqueeze(1)
    if logits.sources:
        lams = torch.autograd.grad((z * r).sum(), [s.out for s in logits.sources], allow_unused=True,
                                   retain_graph=True)          # leave the jet usable: no side effects
        with torch.no_grad():
            for source, lam in zip(logits.sources, lams):
                if lam is not None:
                    C += source.term(lam)
    return a.detach(), b.contiguous(), C


def _auto_jet_chunk(interp: JetInterpreter, inputs, D, device, dtype):
    """Samples per chunk so that the D+1 copies of every activation stay within JET_MEMORY_BUDGET."""
    try:
        with torch.no_grad():
            ShapeProp(interp.module).propagate(inputs[:1].to(device))
        per_sample = sum(int(np.prod(nd.meta["tensor_meta"].shape[1:])) for nd in interp.module.graph.nodes
                         if "tensor_meta" in nd.meta and hasattr(nd.meta["tensor_meta"], "shape"))
    except Exception:  # noqa: BLE001 - shape propagation is only a heuristic
        return 256
    itemsize = torch.empty((), dtype=dtype).element_size()
    chunk = JET_MEMORY_BUDGET // max(1, (D + 2) * per_sample * itemsize)
    return int(min(MAX_JET_CHUNK, max(16, chunk)))


def _terms_jet(interp, inputs, targets, D, chunk, device, dtype, progress):
    N = len(inputs)
    a = torch.empty(N, dtype=dtype, device=device)
    b = torch.empty(N, D, dtype=dtype, device=device)
    C = torch.empty(N, D, D, dtype=dtype, device=device)
    starts = tqdm(range(0, N, chunk), disable=not progress, desc="per_sample_terms (jet)", leave=False)
    for s, (x, y) in zip(starts, chunks(inputs, targets, chunk, device)):
        a[s:s + chunk], b[s:s + chunk], C[s:s + chunk] = interp.terms(x, y)
    return a, b, C


# ----------------------------------------------------------------------------------------------- generic jvp path
class _CompositeNorms(TorchFunctionMode):
    """Replace F.layer_norm / F.batch_norm / F.group_norm by composite implementations (mean, var, sqrt) while the
    nested jvp runs: torch's hand-written second-order forward-AD rules of these ops are wrong (silently; e.g.
    pytorch/pytorch#196700 layer_norm, #196699 batch_norm, umbrella #198017), the composites' are right."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        if func is F.batch_norm:
            return _batch_norm(*args, **kwargs)
        if func is F.group_norm:
            return _group_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _affine_channels(y, weight, bias, shape):
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    xc = x - x.mean(dims, keepdim=True)
    y = xc / torch.sqrt((xc * xc).mean(dims, keepdim=True) + eps)
    return _affine_channels(y, weight, bias, tuple(normalized_shape))


def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if training or running_mean is None:     # batch statistics (running buffers are not updated here)
        dims = (0,) + tuple(range(2, x.dim()))
        mu = x.mean(dims, keepdim=True)
        var = ((x - mu) ** 2).mean(dims, keepdim=True)
    else:
        mu, var = running_mean.reshape(shape), running_var.reshape(shape)
    return _affine_channels((x - mu) / torch.sqrt(var + eps), weight, bias, shape)


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    n = x.shape[0]
    g = x.reshape(n, num_groups, -1)
    gc = g - g.mean(-1, keepdim=True)
    y = (gc / torch.sqrt((gc * gc).mean(-1, keepdim=True) + eps)).reshape(x.shape)
    return _affine_channels(y, weight, bias, (1, -1) + (1,) * (x.dim() - 2))


def _terms_jvp(model, inputs, targets, basis, chunk, loss_fn, device, dtype, progress):
    D = basis.shape[0]
    N = len(inputs)
    w0 = flat_params(model)
    P = basis.to(device=device, dtype=dtype)
    a = torch.empty(N, dtype=dtype, device=device)
    b = torch.empty(N, D, dtype=dtype, device=device)
    C = torch.empty(N, D, D, dtype=dtype, device=device)
    buffers = dict(model.named_buffers())

    def losses(w, x, y):
        params = unflatten(model, w)
        params.update(buffers)
        return loss_fn(functional_call(model, params, (x,)), y)

    with torch.no_grad():
        for s, (x, y) in zip(range(0, N, chunk), chunks(inputs, targets, chunk, device)):
            a[s:s + chunk] = losses(w0, x, y)
    for ai in tqdm(range(D), disable=not progress, desc="per_sample_terms (jvp)", leave=False):
        for s, (x, y) in zip(range(0, N, chunk), chunks(inputs, targets, chunk, device)):

            def inner(w):
                return jvp(lambda u: losses(u, x, y), (w,), (P[ai],))[1]

            with _CompositeNorms(), warnings.catch_warnings():
                # torch's first forward-AD call scripts its jvp decompositions with the deprecated torch.jit.script
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
                first, second = vmap(lambda t: jvp(inner, (w0,), (t,)))(P[ai:])   # (D-ai, n) each
            b[s:s + chunk, ai] = first[0].detach()
            C[s:s + chunk, ai, ai:] = second.detach().T
            C[s:s + chunk, ai:, ai] = second.detach().T
    return a, b, C


# ----------------------------------------------------------------------------------------------- entry
def per_sample_terms(model, inputs, targets, basis: torch.Tensor, chunk_size: int | None = None,
                     loss_fn=None, method: str = "auto", progress: bool = True) -> PerSampleTerms:
    """(a_i, b_i, C_i) for all N samples at the current weights w* (see module docstring for the methods).

    ``chunk_size``: samples per pass (default for ``jet``: as many as keep the D+1 copies of all activations
    within 512 MiB, at most 4096; for ``jvp``: 2048); ``loss_fn(outputs, targets)`` ->
    per-sample losses (default cross-entropy; ``jet`` supports only the default).
    """
    t0 = time.perf_counter()
    D = check_basis(model, basis)
    check_choice("method", method, METHODS)
    check_data(inputs, targets)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size)
    device, dtype = device_dtype(model)
    with eval_mode(model):
        terms = None
        if method in ("auto", "jet"):
            try:
                if loss_fn is not None and loss_fn is not cross_entropy_per_sample:
                    raise Unsupported("jet supports only the default cross-entropy loss")
                interp = JetInterpreter(model, basis)
                chunk = chunk_size or _auto_jet_chunk(interp, inputs, D, device, dtype)
                terms = _terms_jet(interp, inputs, targets, D, chunk, device, dtype, progress)
            except Unsupported as e:
                if method == "jet":
                    raise ValueError(f"method='jet' is not available for this model/loss ({e}); use method='jvp' "
                                     "or 'auto'") from None
        used = "jet"
        if terms is None:
            terms = _terms_jvp(model, inputs, targets, basis, chunk_size or DEFAULT_JVP_CHUNK,
                               loss_fn or cross_entropy_per_sample, device, dtype, progress)
            used = "jvp"
    return PerSampleTerms(*terms, method=used, seconds=time.perf_counter() - t0)
