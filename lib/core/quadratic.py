"""Quadratic (second-order) model of d_k(theta) in the subspace and its exact moments (SCIENCE.md sections 4b, 5).

Per sample i at w*: a_i = l_i(w*), b_i = P grad l_i(w*) (R^D), C_i = P Hess l_i(w*) P^T (D x D), with the basis P of
shape (D, n_params) (rows = directions). With prefix means (float64 cumulative sums),
    da_k = (a_{k+1} - a-bar_k)/(k+1),  db_k, dC_k likewise  (exactly ``montecarlo.loss_differences``),
the second-order model of d_k(theta) is da + db.theta + 1/2 theta^T dC theta and its exact second moment is
    isotropic (s, m):   Q_k = da^2 + s|db|^2 + s da tr(dC) + (m/4)(2 tr(dC^2) + (tr dC)^2)
    Gaussian cov. S:    Q_k = da^2 + db^T S db + da tr(dC S) + 1/4 (2 tr((dC S)^2) + (tr(dC S))^2).

``per_sample_terms`` gets (a, b, C) for all N samples with forward-mode directional derivatives (plus one adjoint
pass on the fast path), no per-sample loops, chunked over samples:

* ``method="jet"`` (fast path): for models whose ``torch.fx`` graph is made of Linear, Conv2d, ReLU/Tanh/Sigmoid,
  max/avg pooling, Flatten/view, additions, Dropout/Identity, with the cross-entropy loss: forward-mode first-order
  directional derivatives of every activation along all D directions (one batched product per layer), then the
  exact mixed second derivatives from one reverse (adjoint) pass, C_ab = z_a^T (diag p - p p^T) z_b + sum over
  second-order sources of adjoint . source_ab (see ``_JetRunner``). About 1 + 2D forward-pass equivalents plus
  O(D^2) per-sample dot products; agrees with the explicit per-sample Hessian to rounding (tested).
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
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jvp, vmap
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

from lib.core.checks import check_positive
from lib.core.montecarlo import loss_differences
from lib.core.sampling import Sampler
from lib.core.subspace import (check_basis, cross_entropy_per_sample, eval_mode, flat_params, unflatten,
                       _device_dtype)

__all__ = [
    "PerSampleTerms",
    "QuadraticCurve",
    "VarianceParts",
    "per_sample_terms",
    "delta_quadratic",
    "delta_theorem1",
    "variance_quadratic",
    "quadratic_losses",
    "METHODS",
]

METHODS = ("auto", "jet", "jvp")
JET_MEMORY_BUDGET = 512 * 2 ** 20   # bytes of first-order tangents per chunk (default chunk size of "jet")
MAX_JET_CHUNK = 4096
DEFAULT_JVP_CHUNK = 2048


# ----------------------------------------------------------------------------------------------- results
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


@dataclass
class QuadraticCurve:
    """Exact second moment of the quadratic model of d_k, k = 1..N-1 (numpy float64 arrays).

    Q = d0sq + grad_part + cross_part + curv_part; centred = grad_part + curv_part = E[(d_k(theta) - d_k(0))^2]
    (the cross term da * E[theta^T dC theta] vanishes from the centred moment because d_k(0) = da is removed).
    """

    k: np.ndarray
    Q: np.ndarray
    centred: np.ndarray
    d0sq: np.ndarray
    grad_part: np.ndarray
    cross_part: np.ndarray
    curv_part: np.ndarray
    sampler: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class VarianceParts:
    """Quadratic-model V-bar = E_theta V(w* + P^T theta), V(w) = (1/N) sum_i (l_i - L_N)^2, and its parts.

    vbar = V0 + grad_part + cross_part + curv_part, where (alpha, beta, Gamma centred over the N samples)
      V0         = mean alpha^2                          (loss spread at w*)
      grad_part  = s * V2,  V2 = mean |beta|^2            (covariance S: mean beta^T S beta, V2 = nan)
      cross_part = s * mean(alpha tr Gamma)               (covariance S: mean alpha tr(Gamma S)); reported
                   separately, it is part of vbar and can be negative
      curv_part  = m * V4,  V4 = mean (2 tr Gamma^2 + (tr Gamma)^2) / 4   (covariance S: mean of
                   (2 tr((Gamma S)^2) + (tr Gamma S)^2) / 4, V4 = nan)
    """

    vbar: float
    V0: float
    grad_part: float
    cross_part: float
    curv_part: float
    V2: float
    V4: float
    s: object
    m: object
    sampler: str = ""


# ----------------------------------------------------------------------------------------------- checks
def _check_terms(terms: PerSampleTerms):
    if not isinstance(terms, PerSampleTerms):
        raise ValueError(f"terms must be a PerSampleTerms (from per_sample_terms), got {type(terms).__name__}")
    N = terms.a.shape[0]
    if terms.a.dim() != 1 or terms.b.dim() != 2 or terms.C.dim() != 3:
        raise ValueError("terms must have a (N,), b (N, D), C (N, D, D)")
    D = terms.b.shape[1]
    if terms.b.shape[0] != N or tuple(terms.C.shape) != (N, D, D):
        raise ValueError(f"inconsistent terms shapes: a {tuple(terms.a.shape)}, b {tuple(terms.b.shape)}, "
                         f"C {tuple(terms.C.shape)}; need a (N,), b (N, D), C (N, D, D)")
    if N < 2:
        raise ValueError(f"need N >= 2 samples in terms, got {N}")
    return N, D


def _moments(sampler: Sampler, D: int):
    """(isotropic, s, m, S): scalar s, m for isotropic samplers, covariance S (float64 tensor) otherwise."""
    if not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be a lib.sampling.Sampler (see make_sampler), got {type(sampler).__name__}")
    S = torch.as_tensor(sampler.covariance(D), dtype=torch.float64)  # validates D (curvature)
    if sampler.isotropic:
        return True, float(sampler.s(D)), float(sampler.m(D)), S
    return False, None, None, S


# ----------------------------------------------------------------------------------------------- closed forms
def _differences(terms: PerSampleTerms):
    da = loss_differences(terms.a.detach().cpu())                               # (K,)
    db = loss_differences(terms.b.detach().cpu().T)                             # (D, K)
    dC = loss_differences(terms.C.detach().cpu().permute(1, 2, 0))              # (D, D, K)
    return da, db, dC


def delta_quadratic(terms: PerSampleTerms, sampler: Sampler) -> QuadraticCurve:
    """Exact E_theta[(da_k + db_k.theta + 1/2 theta^T dC_k theta)^2] for k = 1..N-1 (and its parts)."""
    N, D = _check_terms(terms)
    iso, s, m, S = _moments(sampler, D)
    da, db, dC = _differences(terms)
    dC = 0.5 * (dC + dC.transpose(0, 1))
    if iso:
        tr = torch.einsum("aak->k", dC)
        tr2 = (dC * dC).sum(dim=(0, 1))
        grad = s * (db * db).sum(0)
        cross = s * da * tr
        curv = 0.25 * m * (2 * tr2 + tr * tr)
    else:
        M = torch.einsum("abk,bc->ack", dC, S)                                 # dC S
        tr = torch.einsum("aak->k", M)
        tr2 = torch.einsum("abk,bak->k", M, M)
        grad = torch.einsum("ak,ab,bk->k", db, S, db)
        cross = da * tr
        curv = 0.25 * (2 * tr2 + tr * tr)
    d0sq = da * da
    Q = d0sq + grad + cross + curv
    return QuadraticCurve(k=np.arange(1, N), Q=Q.numpy(), centred=(grad + curv).numpy(), d0sq=d0sq.numpy(),
                          grad_part=grad.numpy(), cross_part=cross.numpy(), curv_part=curv.numpy(),
                          sampler=sampler.name, meta={"sampler_params": sampler.params(), "D": D, "N": N})


def delta_theorem1(terms: PerSampleTerms, sigma: float) -> np.ndarray:
    """Original paper's Theorem 1: T_k = sigma^4/4 (2 sum_d (dC_k)_dd^2 + (sum_d (dC_k)_dd)^2), k = 1..N-1."""
    _check_terms(terms)
    sig = check_positive("sigma", sigma)
    dC = loss_differences(terms.C.detach().cpu().permute(1, 2, 0))
    diag = torch.diagonal(dC, dim1=0, dim2=1)                                   # (K, D)
    return (sig ** 4 / 4.0 * (2 * (diag * diag).sum(-1) + diag.sum(-1) ** 2)).numpy()


def variance_quadratic(terms: PerSampleTerms, sampler: Sampler) -> VarianceParts:
    """V-bar of the quadratic model with its parts (see ``VarianceParts``)."""
    N, D = _check_terms(terms)
    iso, s, m, S = _moments(sampler, D)
    a = terms.a.detach().cpu().to(torch.float64)
    b = terms.b.detach().cpu().to(torch.float64)
    C = terms.C.detach().cpu().to(torch.float64)
    C = 0.5 * (C + C.transpose(1, 2))
    alpha = a - a.mean()
    beta = b - b.mean(0)
    G = C - C.mean(0)
    V0 = float((alpha * alpha).mean())
    if iso:
        tr = torch.einsum("iaa->i", G)
        V2 = float((beta * beta).sum(1).mean())
        X = float((alpha * tr).mean())
        V4 = float(0.25 * (2 * (G * G).sum((1, 2)) + tr * tr).mean())
        grad, cross, curv = s * V2, s * X, m * V4
        s_out, m_out = s, m
    else:
        M = torch.einsum("iab,bc->iac", G, S)
        tr = torch.einsum("iaa->i", M)
        tr2 = torch.einsum("iab,iba->i", M, M)
        grad = float(torch.einsum("ia,ab,ib->i", beta, S, beta).mean())
        cross = float((alpha * tr).mean())
        curv = float(0.25 * (2 * tr2 + tr * tr).mean())
        V2 = V4 = float("nan")
        s_out, m_out = S.diagonal().numpy(), None
    return VarianceParts(vbar=V0 + grad + cross + curv, V0=V0, grad_part=grad, cross_part=cross, curv_part=curv,
                         V2=V2, V4=V4, s=s_out, m=m_out, sampler=sampler.name)


def quadratic_losses(terms: PerSampleTerms, thetas: torch.Tensor) -> torch.Tensor:
    """Per-sample losses of the quadratic model a_i + b_i.theta + 1/2 theta^T C_i theta, shape (T, N), float64."""
    _check_terms(terms)
    th = torch.as_tensor(thetas, dtype=torch.float64)
    if th.dim() == 1:
        th = th.unsqueeze(0)
    if th.shape[1] != terms.D:
        raise ValueError(f"thetas must have shape (T, D={terms.D}); got {tuple(th.shape)}")
    a = terms.a.detach().cpu().double()
    b = terms.b.detach().cpu().double()
    C = terms.C.detach().cpu().double()
    return a + th @ b.T + 0.5 * torch.einsum("ta,iab,tb->ti", th, C, th)


# ----------------------------------------------------------------------------------------------- jet (fast path)
class _Unsupported(Exception):
    pass


class _Jet:
    """Value h (N, ...) (primal, inside an autograd graph) and first derivatives h1 (D, N, ...) along the D basis
    directions (detached), or None when h does not depend on theta."""

    __slots__ = ("h", "h1")

    def __init__(self, h, h1=None):
        self.h, self.h1 = h, h1


def _merge(t):   # (K, N, ...) -> (K*N, ...)
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _split(t, K):  # (K*N, ...) -> (K, N, ...)
    return t.reshape(K, t.shape[0] // K, *t.shape[1:])


class _JetRunner:
    """Per-sample value, gradient and Hessian in the subspace for fx-traceable models built from supported layers.

    Forward: primal h (autograd graph kept) and the D first-order directional derivatives h1 of every node.
    Second order: with r = softmax(z) - onehot(y) (per sample, held fixed),
        C_ab = z_a^T (diag p - p p^T) z_b + r . d_a d_b z,
    and d_a d_b z is linear in its *sources*: at an affine layer y = op(h, W(theta)) the term
    op(h_b, V_a) + op(h_a, V_b) (V_a: direction a of that layer's weight), at a pointwise nonlinearity f the term
    f''(z) z_a z_b. So r . d_a d_b z = sum over sources of lambda . source_ab with lambda = d(r . z)/d(source
    output), the per-sample adjoints of one reverse pass (autograd on the primal; samples are independent in eval
    mode). lambda . op(h_b, V_a) = (op^T(lambda; V_a)) . h_b, computed for all a with one transposed op.
    Cost: about 1 + D (first-order tangents) + D (adjoints against the directions) forward-pass equivalents,
    plus D^2 per-sample dot products; no D^2 matrix products.
    """

    def __init__(self, model, basis, dtype, device):
        import torch.fx as fx

        try:
            self.gm = fx.symbolic_trace(model)
        except Exception as e:  # noqa: BLE001 - any tracing failure means: use the generic path
            raise _Unsupported(f"torch.fx tracing failed: {e}") from None
        self.D = basis.shape[0]
        offsets, o = {}, 0
        for name, p in model.named_parameters():
            offsets[name] = (o, p.numel(), p.shape)
            o += p.numel()
        self.offsets = offsets
        self.basis = basis.to(device=device, dtype=dtype)
        self._check_graph()

    # -- directions of one parameter: (D, *shape)
    def _dirs(self, qualname):
        if qualname not in self.offsets:
            raise _Unsupported(f"parameter {qualname} not found in named_parameters")
        o, n, shape = self.offsets[qualname]
        return self.basis[:, o:o + n].reshape(self.D, *shape)

    def _check_graph(self):
        for node in self.gm.graph.nodes:
            if node.op == "get_attr":
                raise _Unsupported("get_attr nodes (parameters used outside supported modules)")
            if node.op == "call_module":
                mod = self.gm.get_submodule(node.target)
                if not isinstance(mod, _MODULES):
                    raise _Unsupported(f"module {type(mod).__name__}")
                if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or mod.padding_mode != "zeros"):
                    raise _Unsupported("grouped / non-zero-padded Conv2d")
            elif node.op == "call_function" and node.target not in _FUNCTIONS:
                raise _Unsupported(f"function {node.target}")
            elif node.op == "call_method" and node.target not in _METHODS:
                raise _Unsupported(f"method {node.target}")
        n_in = sum(1 for nd in self.gm.graph.nodes if nd.op == "placeholder")
        if n_in != 1:
            raise _Unsupported("models with more than one input")

    # -- forward propagation of (h, h1), collecting second-order sources
    def run(self, x):
        import torch.fx as fx

        self.sources = []
        env = {}
        out = None

        def arg(a):
            if isinstance(a, fx.Node):
                return env[a]
            if isinstance(a, (tuple, list)):
                return type(a)(arg(v) for v in a)
            return a

        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = _Jet(x)
            elif node.op == "output":
                out = arg(node.args[0])
            elif node.op == "call_module":
                env[node] = self._module(node.target, self.gm.get_submodule(node.target), arg(node.args[0]))
            elif node.op == "call_function":
                env[node] = self._function(node.target, [arg(a) for a in node.args],
                                           {k: arg(v) for k, v in node.kwargs.items()})
            elif node.op == "call_method":
                env[node] = self._method(node.target, [arg(a) for a in node.args],
                                         {k: arg(v) for k, v in node.kwargs.items()})
        if not isinstance(out, _Jet):
            raise _Unsupported("model output is not a single tensor")
        return out

    @staticmethod
    def _linear_map(j, f):
        h = f(j.h)
        if j.h1 is None:
            return _Jet(h)
        with torch.no_grad():
            return _Jet(h, _split(f(_merge(j.h1)), j.h1.shape[0]))

    def _pointwise(self, j, f, f1, f2):
        """y = f(z): y_a = f'(z) z_a; source f''(z) z_a z_b (f2 None: f'' = 0)."""
        y = f(j.h)
        if j.h1 is None:
            return _Jet(y)
        with torch.no_grad():
            zd, yd = j.h.detach(), y.detach()
            y1 = f1(zd, yd) * j.h1
            if f2 is not None:
                self.sources.append(("pointwise", y, f2(zd, yd), j.h1))
        return _Jet(y, y1)

    def _affine(self, j, op, op_t, W, bias, V, Vb):
        """y = op(h, W(theta)) + bias(theta), W(theta) = W + sum_a theta_a V_a (op linear in each argument).

        ``op_t(lam, Vcat_t, in_shape)`` is the adjoint of h -> op(h, Vcat_t) (used for the sources)."""
        D = self.D
        out_ch = W.shape[0]
        y = op(j.h, W, bias)
        with torch.no_grad():
            hd = j.h.detach()
            Vcat = V.reshape(D * out_ch, *W.shape[1:])
            hv = op(hd, Vcat, None if Vb is None else Vb.reshape(-1))      # (N, D*out, ...)
            N = hv.shape[0]
            y1 = hv.reshape(N, D, out_ch, *hv.shape[2:]).transpose(0, 1)
            if j.h1 is not None:
                y1 = y1 + _split(op(_merge(j.h1), W, None), D)
                self.sources.append(("affine", y, (op_t, V), j.h1))
        return _Jet(y, y1)

    def _module(self, name, mod, j):
        if isinstance(mod, (nn.Identity, nn.Dropout)):
            return j
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            V = self._dirs(f"{name}.weight")
            Vb = self._dirs(f"{name}.bias") if mod.bias is not None else None
            W = mod.weight.detach()
            b = None if mod.bias is None else mod.bias.detach()
            if isinstance(mod, nn.Linear):
                return self._affine(j, F.linear, _linear_adjoint, W, b, V, Vb)

            def conv(x, w, bb, mod=mod):
                return F.conv2d(x, w, bb, mod.stride, mod.padding, mod.dilation, 1)

            def conv_t(lam, Vd, in_shape, mod=mod):
                return _conv_adjoint(lam, Vd, in_shape, mod.stride, mod.padding, mod.dilation)
            return self._affine(j, conv, conv_t, W, b, V, Vb)
        if isinstance(mod, nn.ReLU):
            return self._relu(j)
        if isinstance(mod, nn.Tanh):
            return self._tanh(j)
        if isinstance(mod, nn.Sigmoid):
            return self._sigmoid(j)
        if isinstance(mod, nn.Flatten):
            return self._flatten(j, mod.start_dim, mod.end_dim)
        if isinstance(mod, nn.MaxPool2d):
            return self._maxpool(j, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
        if isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return self._linear_map(j, mod)
        raise _Unsupported(type(mod).__name__)

    def _relu(self, j):
        return self._pointwise(j, torch.relu, lambda z, y: (z > 0).to(z.dtype), None)

    def _tanh(self, j):
        return self._pointwise(j, torch.tanh, lambda z, y: 1 - y * y, lambda z, y: -2 * y * (1 - y * y))

    def _sigmoid(self, j):
        return self._pointwise(j, torch.sigmoid, lambda z, y: y * (1 - y), lambda z, y: y * (1 - y) * (1 - 2 * y))

    def _flatten(self, j, start_dim=1, end_dim=-1):
        nd = j.h.dim()
        s, e = start_dim % nd, end_dim % nd
        if s < 1:
            raise _Unsupported("flatten over the batch dimension")
        return self._linear_map(j, lambda t: torch.flatten(t, s, e))

    def _maxpool(self, j, k, stride, padding, dilation, ceil_mode):
        y, idx = F.max_pool2d(j.h, k, stride, padding, dilation, ceil_mode, return_indices=True)
        if j.h1 is None:
            return _Jet(y)
        with torch.no_grad():
            K = j.h1.shape[0]
            flat = j.h1.flatten(-2)                                          # (K, N, C, H*W)
            ii = idx.flatten(-2).unsqueeze(0).expand(K, *idx.shape[:-2], -1)
            return _Jet(y, torch.gather(flat, -1, ii).reshape(K, *y.shape))

    @staticmethod
    def _add(x, y):
        if not isinstance(x, _Jet):
            x, y = y, x
        if not isinstance(y, _Jet):
            return _Jet(x.h + y, x.h1)
        h1 = y.h1 if x.h1 is None else (x.h1 if y.h1 is None else x.h1 + y.h1)
        return _Jet(x.h + y.h, h1)

    def _function(self, f, args, kwargs):
        if f in (F.relu, torch.relu):
            return self._relu(args[0])
        if f is torch.tanh:
            return self._tanh(args[0])
        if f is torch.sigmoid:
            return self._sigmoid(args[0])
        if f is torch.flatten:
            return self._flatten(args[0], *args[1:], **kwargs)
        if f in (operator.add, torch.add):
            if kwargs:
                raise _Unsupported("add with kwargs")
            return self._add(args[0], args[1])
        if f is F.max_pool2d:
            return self._maxpool(args[0], *_bind_maxpool(*args[1:], **kwargs))
        raise _Unsupported(str(f))

    def _method(self, name, args, kwargs):
        j = args[0]
        if name == "size":
            return j.h.size(*args[1:], **kwargs)
        if name == "relu":
            return self._relu(j)
        if name == "tanh":
            return self._tanh(j)
        if name == "sigmoid":
            return self._sigmoid(j)
        if name == "flatten":
            return self._flatten(j, *args[1:], **kwargs)
        if name in ("view", "reshape"):
            shape = args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
                shape = tuple(shape[0])
            if kwargs or not shape or shape[0] != j.h.shape[0]:
                raise _Unsupported("view/reshape that does not keep the batch dimension first")
            rest = tuple(shape[1:])
            return self._linear_map(j, lambda t: t.reshape(t.shape[0], *rest))
        raise _Unsupported(name)

    # -- cross-entropy on top
    def terms(self, x, y):
        D = self.D
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            z = self.run(xg)
            logits = z.h
            N = logits.shape[0]
            with torch.no_grad():
                logp = torch.log_softmax(logits, dim=-1)
                a = -logp.gather(-1, y.reshape(-1, 1)).squeeze(-1)
                if z.h1 is None:
                    return a, a.new_zeros(N, D), a.new_zeros(N, D, D)
                p = logp.exp()
                r = p.clone()
                r[torch.arange(N, device=r.device), y] -= 1.0
                z1 = z.h1                                                   # (D, N, C)
                b = (z1 * r).sum(-1).T                                      # (N, D)
                pz = (z1 * p).sum(-1).T                                     # (N, D)
                C = torch.einsum("anc,nc,bnc->nab", z1, p, z1) - pz.unsqueeze(2) * pz.unsqueeze(1)
            if self.sources:
                outs = [s[1] for s in self.sources]
                lams = torch.autograd.grad((logits * r).sum(), outs, allow_unused=True)
                with torch.no_grad():
                    for (kind, _, extra, h1), lam in zip(self.sources, lams):
                        if lam is None:
                            continue
                        if kind == "pointwise":            # lambda . f''(z) z_a z_b
                            w = (lam * extra).flatten(1)                        # (N, U)
                            u = h1.flatten(2)                                    # (D, N, U)
                            C += torch.einsum("anu,nu,bnu->nab", u, w, u)
                        else:                              # lambda . (op(h_b, V_a) + op(h_a, V_b))
                            op_t, V = extra
                            U = op_t(lam, V, h1.shape[1:])                       # (N, D, *in)
                            G = torch.einsum("nau,bnu->nab", U.flatten(2), h1.flatten(2))
                            C += G + G.transpose(1, 2)
        self.sources = []
        return a.detach(), b.contiguous(), C


def _auto_jet_chunk(runner, model, inputs, D):
    """Samples per chunk so that the D+1 copies of every activation stay within JET_MEMORY_BUDGET."""
    from torch.fx.passes.shape_prop import ShapeProp

    device, dtype = _device_dtype(model)
    try:
        with torch.no_grad():
            ShapeProp(runner.gm).propagate(inputs[:1].to(device))
        per_sample = sum(int(np.prod(nd.meta["tensor_meta"].shape[1:])) for nd in runner.gm.graph.nodes
                         if "tensor_meta" in nd.meta and hasattr(nd.meta["tensor_meta"], "shape"))
    except Exception:  # noqa: BLE001 - shape propagation is only a heuristic
        return 256
    itemsize = torch.empty((), dtype=dtype).element_size()
    chunk = JET_MEMORY_BUDGET // max(1, (D + 2) * per_sample * itemsize)
    return int(min(MAX_JET_CHUNK, max(16, chunk)))


def _linear_adjoint(lam, V, in_shape):
    """U[n, a] = V_a^T lam[n] for F.linear: lam (N, out), V (D, out, in) -> (N, D, in)."""
    D, out_ch, fan_in = V.shape
    return (lam @ V.permute(1, 0, 2).reshape(out_ch, D * fan_in)).reshape(lam.shape[0], D, fan_in)


def _conv_adjoint(lam, V, in_shape, stride, padding, dilation):
    """U[n, a] = adjoint of h -> conv2d(h, V_a) applied to lam[n]: lam (N, out, H', W'), V (D, out, in, k, k)."""
    D, out_ch, in_ch = V.shape[:3]
    Wt = V.permute(1, 0, 2, 3, 4).reshape(out_ch, D * in_ch, *V.shape[3:])   # conv weight D*in -> out
    N = lam.shape[0]
    U = torch.nn.grad.conv2d_input((N, D * in_ch, *in_shape[-2:]), Wt, lam, stride, padding, dilation, 1)
    return U.reshape(N, D, in_ch, *in_shape[-2:])


def _bind_maxpool(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices:
        raise _Unsupported("max_pool2d(return_indices=True)")
    return kernel_size, stride if stride not in (None, []) else kernel_size, padding, dilation, ceil_mode


_MODULES = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d,
            nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)
_FUNCTIONS = (F.relu, torch.relu, torch.tanh, torch.sigmoid, torch.flatten, operator.add, torch.add, F.max_pool2d)
_METHODS = ("size", "relu", "tanh", "sigmoid", "flatten", "view", "reshape")


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
        for s in range(0, N, chunk):
            a[s:s + chunk] = losses(w0, inputs[s:s + chunk].to(device), targets[s:s + chunk].to(device))
    for ai in tqdm(range(D), disable=not progress, desc="per_sample_terms (jvp)", leave=False):
        for s in range(0, N, chunk):
            x = inputs[s:s + chunk].to(device)
            y = targets[s:s + chunk].to(device)

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
def per_sample_terms(model, inputs, targets, basis: torch.Tensor, chunk_size: Optional[int] = None,
                     loss_fn=None, method: str = "auto", progress: bool = True) -> PerSampleTerms:
    """(a_i, b_i, C_i) for all N samples at the current weights w* (see module docstring for the methods).

    ``chunk_size``: samples per pass (default for ``jet``: as many as keep the D+1 copies of all activations
    within 512 MiB, at most 4096; for ``jvp``: 2048); ``loss_fn(outputs, targets)`` ->
    per-sample losses (default cross-entropy; ``jet`` supports only the default).
    """
    t0 = time.perf_counter()
    D = check_basis(model, basis)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed methods: {METHODS}")
    if len(inputs) != len(targets):
        raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) must have the same length")
    if len(inputs) < 1:
        raise ValueError("need at least one sample")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    device, dtype = _device_dtype(model)
    runner = None
    with eval_mode(model):
        if method in ("auto", "jet"):
            try:
                if loss_fn is not None and loss_fn is not cross_entropy_per_sample:
                    raise _Unsupported("jet supports only the default cross-entropy loss")
                runner = _JetRunner(model, basis, dtype, device)
            except _Unsupported as e:
                if method == "jet":
                    raise ValueError(f"method='jet' is not available for this model/loss ({e}); use method='jvp' "
                                     "or 'auto'") from None
        if runner is not None:
            chunk = int(chunk_size or _auto_jet_chunk(runner, model, inputs, D))
            N = len(inputs)
            a = torch.empty(N, dtype=dtype, device=device)
            b = torch.empty(N, D, dtype=dtype, device=device)
            C = torch.empty(N, D, D, dtype=dtype, device=device)
            for s in tqdm(range(0, N, chunk), disable=not progress, desc="per_sample_terms (jet)", leave=False):
                x = inputs[s:s + chunk].to(device)
                y = targets[s:s + chunk].to(device)
                a[s:s + chunk], b[s:s + chunk], C[s:s + chunk] = runner.terms(x, y)
            used = "jet"
        else:
            a, b, C = _terms_jvp(model, inputs, targets, basis, int(chunk_size or DEFAULT_JVP_CHUNK),
                                 loss_fn or cross_entropy_per_sample, device, dtype, progress)
            used = "jvp"
    return PerSampleTerms(a=a, b=b, C=C, method=used, seconds=time.perf_counter() - t0)
