"""Hessian spectrum of a model's full-data loss, computed through one reusable Hessian-vector-product operator.

The operator (``HessianOperator``) is the exact, chunked Hessian-vector product of

    L(w) = (1/N) sum_i CE(model(x_i; w), y_i)      over ALL N given samples,

on flat vectors in ``torch.nn.utils.parameters_to_vector`` order. Build it once and pass it to every solver
(top/smallest eigenpairs, trace, density; operator-first, as in curvlinops); each result's ``hvp_count`` is the
number of products that call made and ``seconds`` its wall time::

    op = HessianOperator(model, inputs, targets)          # chunk_size=None: the model's preferred chunk
    top = top_eigenpairs(op, k=10)                        # method="lanczos" (default) or "power"
    low = smallest_eigenvalue(op, tol=1e-4)
    tr = trace(op, n_probes=100)
    dens = density(op, n_runs=4, n_iter=80)
    assert op.hvp_count == top.hvp_count + low.hvp_count + tr.hvp_count + dens.hvp_count

The model is evaluated in eval mode and its train/eval flags are restored afterwards; parameters' ``.grad``
fields are never read or written (products use detached copies of the weights). Products reuse per-chunk state
kept while the weights are unchanged (``engine``: an exact R-op over kept activations for ReLU MLPs and conv-pool
CNNs, else the kept autograd graph of each chunk's gradient; bounded by ``keep_graphs_mb``); any change of a
parameter or buffer rebuilds it, so every product uses the model's current weights and no result depends on an
earlier call.

Solvers (docs/specification.md section 2):

* ``top_eigenpairs(op, k, method="lanczos")``: ``scipy.sparse.linalg.eigsh`` (implicitly restarted Lanczos,
  ARPACK), run with one BLAS thread (``threadpoolctl``);
* ``top_eigenpairs(op, k, method="power")``: PyHessian 0.1's own power iteration with deflation
  (``pyhessian.hessian.eigenvalues``) running on our product, then fixed up (see ``_power_vectors``);
* ``smallest_eigenvalue``, ``trace`` (Hutchinson), ``density`` (stochastic Lanczos quadrature, Gauss nodes and
  weights by ``scipy.linalg.eigh_tridiagonal``).

Both eigen-solvers end with the same Rayleigh-Ritz step, so eigenvalues are signed Rayleigh quotients sorted
algebraically (largest first), eigenvectors are orthonormal, and residuals ``||H v - lambda v|| / max|lambda|``
are measured, not estimated.

PyHessian 0.1 problems worked around here (its code is only used for the power iteration loop):
``cuda=True`` default; puts the model in eval mode for good; sets ``.grad`` to None (``zero_grad``) and, on its
single-batch path, computes the Hessian from ``param.grad`` after ``backward(create_graph=True)``, so a second
instance without ``zero_grad`` sees doubled curvature; unseeded float32 start vectors; ``normalization`` divides
by ``norm + 1e-6`` (vectors not unit length); reported eigenvalues are Rayleigh quotients of the previous iterate,
the returned vector is the next iterate (not re-orthogonalised); it converges to largest ``|lambda|``; its stop
rule ``|d lambda| / (|lambda| + 1e-6) < tol`` is on the eigenvalue, not the residual; ``density`` calls the
removed ``torch.eig`` and ``trace`` uses ``(trace + 1e-6)`` without ``abs``.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from threadpoolctl import threadpool_limits
from torch import nn
from torch.func import functional_call

from lib.core import fused_cnn
from lib.core.checks import ParameterError, check_choice, check_data, check_int, check_number, check_positive
from lib.core.models import (
    Step,
    conv_pool_columns,
    conv_pool_columns_adjoint,
    conv_pool_pre,
    phase_weights,
    phase_weights_adjoint,
    plan,
    plan_accepts,
    preferred_chunk,
    step_names,
    step_weights,
)
from lib.core.tensors import device_dtype, eval_mode, flat_params, n_params, param_layout, unflatten

METHODS = ("lanczos", "power")
ENGINES = ("auto", "fused", "structured", "graph", "rebuild")
#: default bound (MiB) of the per-chunk state kept between Hessian-vector products (``HessianOperator``)
KEEP_GRAPHS_MB = 1024
PROBES = ("rademacher", "gaussian")
DEFAULT_CHUNK = 4096
POWER_MAX_ITER = 1000
#: products kept for the final Rayleigh-Ritz step of the Lanczos solvers (memory: 2 x MAX_RECORDS x n_params)
MAX_RECORDS = 400
#: a Ritz vector is taken from the recorded products only if they reproduce it to this relative accuracy and the
#: combination's coefficients sum (in absolute value) to at most REUSE_MAX_GAIN; otherwise it gets a fresh product
REUSE_TOL = 1e-5
REUSE_MAX_GAIN = 100.0


# ----------------------------------------------------------------------------------------------- results
@dataclass
class Eigenpairs:
    """Top-k eigenpairs: ``eigenvalues`` (k,) float64, largest algebraic first; ``eigenvectors`` (k, n_params)
    orthonormal rows in the model's dtype/device; ``residuals`` (k,) float64 = ||Hv - lambda v|| / max|lambda|."""
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    hvp_count: int
    seconds: float
    method: str


@dataclass
class SmallestEigenpair:
    """Smallest (algebraic) eigenvalue, its unit eigenvector, the largest eigenvalue lambda_1 (``largest``) and
    the residual ||Hv - lambda v|| / max(|lambda_1|, |lambda|)."""
    value: float
    eigenvector: torch.Tensor
    residual: float
    largest: float
    hvp_count: int
    seconds: float


@dataclass
class TraceEstimate:
    """Hutchinson estimate of tr(H): mean of ``samples`` (z^T H z per probe), ``stderr`` = std / sqrt(n_probes)."""
    estimate: float
    stderr: float
    n_probes: int
    samples: np.ndarray
    hvp_count: int
    seconds: float


@dataclass
class Density:
    """Stochastic Lanczos quadrature: ``nodes``/``weights`` (n_runs, n_iter) with weights summing to 1 overall
    (zero-weight padding after a Lanczos breakdown), and the Gaussian-smoothed ``density`` on ``grid``."""
    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma_sq: float
    hvp_count: int
    seconds: float


# ----------------------------------------------------------------------------------------------- operator
@contextlib.contextmanager
def _grads_kept(model: torch.nn.Module):
    """Restore every parameter's ``.grad`` (same object and values, or None) after the block."""
    saved = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    try:
        yield
    finally:
        for p, grad, values in saved:
            if grad is not None and not torch.equal(grad, values):
                with torch.no_grad():
                    grad.copy_(values)
            p.grad = grad


class _SavedBytes:
    """Bytes of the tensors autograd saves inside ``counting()`` (storages counted once; the data set's own
    storage, which is not held for the graph, is not counted)."""

    def __init__(self, data: torch.Tensor):
        self.total = 0
        self._seen: set = set()
        self._data = data.untyped_storage().data_ptr() if data.device.type != "meta" else None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen and key != self._data:
            self._seen.add(key)
            self.total += storage.nbytes()
        return t

    def counting(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)


@dataclass(eq=False)
class _GraphState:
    """A chunk's gradient g(w) with its autograd graph (``create_graph=True``) and the leaf w it was taken at."""
    w: torch.Tensor
    g: torch.Tensor
    nbytes: int


@dataclass(eq=False)
class _StructuredState:
    """What one chunk's exact products need, per step of the plan (None where a step keeps nothing): the inputs
    of affine steps (``inputs``: (n, F) rows of a Linear; the 4x4 patch matrix (16 C, positions) of a conv-pool
    stage, or for a first stage, whose input has no tangent, each output's winning 3x3 patch (O, 9 C, positions)),
    the selections (``masks``: ReLU 0/1 masks (n, out); for conv-pool stages (argmax over the 4 window positions
    (1, O, positions) or None, ReLU mask (O, positions))), the backward deltas (``deltas``: d loss / d pre-activation
    (n, out) of Linear steps, and of non-first conv-pool stages at the winning positions (4 O, positions)), layouts
    (``shapes``), the phase matrices of conv-pool weights and their transposes, and the softmax ``p``.
    ``columns``: for a first Linear with input columns constant over the chunk, (kept, constant, values);
    ``units``: per Linear step (input units, output units) kept, or None for all: ReLU units inactive on every
    sample of the chunk are dropped (their activations, tangents and deltas are zero, so are their products'
    rows and columns), and the Linear steps' rows, masks and deltas are stored compacted."""
    inputs: list
    masks: list
    deltas: list
    shapes: list
    phases: list
    columns: tuple | None
    p: torch.Tensor
    units: list = None
    nbytes: int = 0


#: the first Linear drops input columns constant over a chunk when at least this fraction of them are, and a
#: Linear + ReLU step drops its units inactive on the whole chunk when at least this fraction of them are
CONSTANT_COLUMNS_MIN = 0.02


def _constant_columns(x: torch.Tensor):
    """(kept columns, constant columns, their values) of the rows x (n, F), or None when too few are constant."""
    if x.shape[0] < 2:
        return None
    const = (x == x[:1]).all(0)
    if int(const.sum()) < CONSTANT_COLUMNS_MIN * x.shape[1]:
        return None
    kept, fixed = torch.nonzero(~const).flatten(), torch.nonzero(const).flatten()
    return kept, fixed, x[0, fixed]


def _unselect(pooled: torch.Tensor, arg: torch.Tensor, on: torch.Tensor | None) -> torch.Tensor:
    """Adjoint of a conv-pool selection: (O, ...) values at the pooled outputs (times the ReLU mask ``on``) placed
    at the window position ``arg`` (1, O, positions) that won the max, zeros elsewhere: (4 O, positions)."""
    values = pooled.reshape(arg.shape[1], -1)
    if on is not None:
        values = values * on
    return values.new_zeros(4, *values.shape).scatter_(0, arg, values.unsqueeze(0)).view(-1, values.shape[1])


def _buffer(work: dict, key, shape: tuple, like: torch.Tensor, zero: bool = False) -> torch.Tensor:
    """A tensor of ``shape`` (``like``'s dtype and device) kept in ``work`` under ``key`` and reused while the shape
    stays; a new one is zero-filled when ``zero``."""
    t = work.get(key)
    if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
        t = like.new_zeros(shape) if zero else like.new_empty(shape)
        work[key] = t
    return t


def _winning_patches(cols: torch.Tensor, arg: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(O, 9 C, positions): for every pooled output (o, q) the 3x3 x C input patch of the window position
    ``arg`` (O, positions) that won its max, from the 4x4 patch matrix ``cols`` (16 C, positions); then
    the pooled pre-activation of weights V is V[o] . patch (before bias and ReLU)."""
    O, Q = arg.shape
    a, b = arg // 2, arg % 2                                             # (O, Q) window row / column
    d = torch.arange(3, device=cols.device)
    rows = (a[:, None, None] + d[None, :, None, None]) * 4 + b[:, None, None] + d[None, None, :, None]
    rows = rows.reshape(O, 1, 9, Q) + 16 * torch.arange(in_channels, device=cols.device).view(1, -1, 1, 1)
    return torch.gather(cols.unsqueeze(0).expand(O, -1, -1), 1, rows.reshape(O, 9 * in_channels, Q))


def _take(matrix: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    """matrix[rows][:, cols], None standing for all."""
    if rows is not None:
        matrix = matrix.index_select(0, rows)
    return matrix if cols is None else matrix.index_select(1, cols)


def _place(compact: torch.Tensor, shape, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    """The full tensor of ``shape`` with ``compact`` at [rows][:, cols] (None: all) and zeros elsewhere."""
    if rows is None and cols is None:
        return compact
    if cols is not None:
        full = compact.new_zeros(compact.shape[0], shape[1])
        full[:, cols] = compact
        compact = full
    if rows is not None:
        full = compact.new_zeros(shape)
        full[rows] = compact
        compact = full
    return compact


def _accumulate(out: dict, name: str, value: torch.Tensor) -> None:
    if name in out:
        out[name] += value
    else:
        out[name] = value


class _Structured:
    """Exact Hessian-vector products of the loss sum over a chunk for networks read by ``lib.core.models.plan``,
    from kept forward activations, selections and backward deltas (Pearlmutter's R-op: one tangent forward pass
    and one backward pass; ReLU and max-pooling are piecewise linear, so their selections are fixed and the only
    second-order terms are the softmax's and the products of weights of different layers)."""

    def __init__(self, model: nn.Module, steps: list[Step]):
        self.steps = steps
        self.names = param_layout(model)[0]
        self.param_names = step_names(model, steps)
        self.first = next(k for k, s in enumerate(steps) if s.module is not None)

    def _weights(self, k: int):
        m = self.steps[k].module
        return m.weight.detach(), None if m.bias is None else m.bias.detach()

    def tangents(self, model: nn.Module, v: torch.Tensor) -> list:
        """Per step: (V, c) slices of the flat vector v (conv-pool: also V's phase matrix and c repeated 4x)."""
        parts = unflatten(model, v)
        out = []
        for s, names in zip(self.steps, self.param_names):
            if names is None:
                out.append(None)
                continue
            V, c = parts[names[0]], parts[names[1]] if names[1] else None
            if s.kind == "conv_pool":
                PV = phase_weights(V)
                out.append((V, c, PV, PV.T.contiguous(), None if c is None else c.repeat(4)))
            else:
                out.append((V, c))
        return out

    @torch.no_grad()
    def build(self, x: torch.Tensor, y: torch.Tensor, data: torch.Tensor) -> _StructuredState:
        """Forward and backward pass of one chunk at the model's current weights; the kept tensors."""
        steps = self.steps
        K = len(steps)
        inputs, masks, deltas, shapes, phases = [None] * K, [None] * K, [None] * K, [None] * K, [None] * K
        units = [None] * K
        columns, alive = None, None                     # alive: the units of h kept (None: all)
        h, channel_major = x, False
        for k, s in enumerate(steps):
            if s.kind == "flatten":
                shapes[k] = (channel_major, tuple(h.shape))
                h = h.transpose(0, 1).flatten(1) if channel_major else h.flatten(1)
                channel_major = False
            elif s.kind == "linear":
                W, b = self._weights(k)
                inputs[k] = h
                if k == self.first:
                    columns = _constant_columns(h)
                    if columns is not None:
                        inputs[k] = h[:, columns[0]]
                z = F.linear(h, _take(W, None, alive), b)
                out_units = None
                if s.relu:
                    on = z > 0
                    live = on.any(0)
                    if int((~live).sum()) >= CONSTANT_COLUMNS_MIN * len(live):
                        out_units = torch.nonzero(live).flatten()
                        z, on = z[:, out_units], on[:, out_units]
                    masks[k] = on.to(z.dtype)
                    z = z * masks[k]
                units[k] = (alive, out_units)
                alive = out_units
                h = z
            else:
                if not channel_major:
                    h, channel_major = h.transpose(0, 1), True
                W, b = self._weights(k)
                C, n, H, Wd = h.shape
                shapes[k] = (C, n, H, Wd)
                P = phase_weights(W)
                phases[k] = (P, P.T.contiguous())
                inputs[k] = conv_pool_columns(h)
                z = conv_pool_pre(inputs[k], P, None if b is None else b.repeat(4))
                top, arg = z.max(0)
                on = (top > 0).to(z.dtype)
                masks[k] = (arg.unsqueeze(0), on)
                if k == self.first:          # fixed input: keep each output's winning 3x3 patch instead
                    inputs[k] = _winning_patches(inputs[k], arg, C)
                    masks[k] = (None, on)
                h = (top * on).view(W.shape[0], n, H // 2, Wd // 2)
        p = torch.softmax(h, dim=1)
        g = p.clone()
        g[torch.arange(len(y), device=g.device), y] -= 1.0
        for k in range(K - 1, self.first - 1, -1):
            s = steps[k]
            if s.kind == "flatten":
                cm, shape = shapes[k]
                g = g.view(shape[1], shape[0], *shape[2:]).transpose(0, 1) if cm else g.view(shape)
            elif s.kind == "linear":
                gz = g * masks[k] if s.relu else g
                deltas[k] = gz
                if k > self.first:
                    g = gz @ _take(self._weights(k)[0], *reversed(units[k]))
            elif k > self.first:             # a first conv-pool stage needs no deltas (its input has no tangent)
                C, n, H, Wd = shapes[k]
                deltas[k] = _unselect(g, *masks[k])
                g = conv_pool_columns_adjoint(phases[k][1] @ deltas[k], n, H, Wd)
        state = _StructuredState(inputs, masks, deltas, shapes, phases, columns, p, units)
        data_ptr = data.untyped_storage().data_ptr()
        seen = set()
        flat = [t for m in masks for t in (m if isinstance(m, tuple) else (m,))]
        flat += [t for ph in phases if ph is not None for t in ph]
        flat += [t for u in units if u is not None for t in u if t is not None]
        for t in [*inputs, *flat, *deltas, p, *(columns or ())]:
            if t is None or t.untyped_storage().data_ptr() in (data_ptr, *seen):
                continue
            seen.add(t.untyped_storage().data_ptr())
            state.nbytes += t.untyped_storage().nbytes()
        return state

    @torch.no_grad()
    def product(self, st: _StructuredState, tangents: list, out: dict, work: dict) -> None:
        """Add H v of the chunk's loss sum to ``out`` (parameter name -> tensor; ``tangents`` from
        ``tangents(model, v)``); ``work`` holds buffers reused from chunk to chunk (no page faults on the large
        conv-pool temporaries)."""
        steps = self.steps
        K = len(steps)
        rin = [None] * K
        Rh = None                                        # tangent of the activations (None: zero)
        for k, s in enumerate(steps):
            if s.kind == "flatten":
                if Rh is not None:
                    Rh = Rh.transpose(0, 1).flatten(1) if st.shapes[k][0] else Rh.flatten(1)
            elif s.kind == "linear":
                ins, outs = st.units[k]
                V, c = tangents[k]
                V = _take(V, outs, ins)
                if c is not None and outs is not None:
                    c = c[outs]
                rin[k] = Rh
                if k == self.first and st.columns is not None:
                    kept, fixed, values = st.columns
                    bias = V[:, fixed] @ values if c is None else torch.addmv(c, V[:, fixed], values)
                    Rz = torch.addmm(bias, st.inputs[k], V[:, kept].T)
                else:
                    Rz = F.linear(st.inputs[k], V, c)
                if Rh is not None:
                    Rz = Rz.addmm_(Rh, _take(self._weights(k)[0], outs, ins).T)
                Rh = Rz.mul_(st.masks[k]) if s.relu else Rz
            else:
                V, c, PV, PVT, c4 = tangents[k]
                C, n, H, Wd = st.shapes[k]
                O, Q = V.shape[0], st.inputs[k].shape[-1]
                if k == self.first:          # Rh = on * (V . winning patch + c)
                    Rh = torch.bmm(V.reshape(O, 1, 9 * C), st.inputs[k]).view(O, Q)
                    if c is not None:
                        Rh += c.unsqueeze(1)
                    Rh = Rh.mul_(st.masks[k][1]).view(O, n, H // 2, Wd // 2)
                    continue
                Rz = _buffer(work, (k, "z"), (4 * O, Q), V)
                if c4 is None:
                    torch.mm(PV, st.inputs[k], out=Rz)
                else:
                    torch.addmm(c4.unsqueeze(1), PV, st.inputs[k], out=Rz)
                if Rh is not None:
                    rin[k] = conv_pool_columns(Rh, out=_buffer(work, (k, "cols"), (16 * C, Q), V),
                                               padded=_buffer(work, (k, "pad"), (C, n, H + 2, Wd + 2), V, zero=True))
                    Rz.addmm_(st.phases[k][0], rin[k])
                arg, on = st.masks[k]
                Rh = torch.gather(Rz.view(4, O, Q), 0, arg, out=_buffer(work, (k, "h"), (1, O, Q), V))[0]
                Rh = Rh.mul_(on).view(O, n, H // 2, Wd // 2)
        pr = st.p * Rh
        Rg = pr - st.p * pr.sum(1, keepdim=True)         # (diag p - p p^T) R logits
        for k in range(K - 1, self.first - 1, -1):
            s = steps[k]
            if s.kind == "flatten":
                cm, shape = st.shapes[k]
                Rg = Rg.view(shape[1], shape[0], *shape[2:]).transpose(0, 1) if cm else Rg.view(shape)
            elif s.kind == "linear":
                ins, outs = st.units[k]
                V = tangents[k][0]
                wname, bname = self.param_names[k]
                Rgz = Rg.mul_(st.masks[k]) if s.relu else Rg
                gz = st.deltas[k]
                if k == self.first and st.columns is not None:
                    kept, fixed, values = st.columns
                    HW = Rgz.new_empty(Rgz.shape[1], len(kept) + len(fixed))
                    HW[:, kept] = Rgz.T @ st.inputs[k]
                    HW[:, fixed] = Rgz.sum(0)[:, None] * values[None, :]
                else:
                    HW = Rgz.T @ st.inputs[k]
                if rin[k] is not None:
                    HW = HW.addmm_(gz.T, rin[k])
                _accumulate(out, wname, _place(HW, V.shape, outs, ins))
                if bname:
                    _accumulate(out, bname, _place(Rgz.sum(0), V.shape[:1], outs, None))
                if k > self.first:
                    Rg = (Rgz @ _take(self._weights(k)[0], outs, ins)).addmm_(gz, _take(V, outs, ins))
            else:
                V, c, PV, PVT, c4 = tangents[k]
                C, n, H, Wd = st.shapes[k]
                O = V.shape[0]
                wname, bname = self.param_names[k]
                arg, on = st.masks[k]
                Q = on.shape[1]
                Rgh = _buffer(work, (k, "gh"), (O, Q), V)
                torch.mul(Rg, on.view(O, n, H // 2, Wd // 2), out=Rgh.view(O, n, H // 2, Wd // 2))
                if k == self.first:          # one matrix-vector product per channel (batched GEMV is slower)
                    HW = torch.stack([torch.mv(st.inputs[k][o], Rgh[o]) for o in range(O)])
                    _accumulate(out, wname, HW.view(O, C, 3, 3))
                    if bname:
                        _accumulate(out, bname, Rgh.sum(1))
                    continue
                Rgz = _buffer(work, (k, "gz"), (4, O, Q), V).zero_().scatter_(0, arg, Rgh.unsqueeze(0))
                Rgz = Rgz.view(4 * O, Q)
                HP = Rgz @ st.inputs[k].T
                if rin[k] is not None:
                    HP.addmm_(st.deltas[k], rin[k].T)
                _accumulate(out, wname, phase_weights_adjoint(HP, O, C))
                if bname:
                    _accumulate(out, bname, Rgh.sum(1))
                if k > self.first:
                    Rgc = torch.mm(st.phases[k][1], Rgz, out=_buffer(work, (k, "gcols"), (16 * C, Q), V))
                    Rg = conv_pool_columns_adjoint(
                        Rgc.addmm_(PVT, st.deltas[k]), n, H, Wd,
                        planes=_buffer(work, (k, "planes"), (C, 2, 2, n, H // 2 + 1, Wd // 2 + 1), V),
                        padded=_buffer(work, (k, "gpad"), (C, n, H + 2, Wd + 2), V))

    def flat(self, model: nn.Module, out: dict, like: torch.Tensor) -> torch.Tensor:
        """The accumulated ``out`` as one flat vector in parameters_to_vector order."""
        _, shapes, _ = param_layout(model)
        return torch.cat([(out[name] if name in out else like.new_zeros(shape)).reshape(-1)
                          for name, shape in zip(self.names, shapes)])


class HessianOperator:
    """Exact Hessian of the mean cross-entropy over all of (inputs, targets), applied in chunks.

    ``hvp(v)`` returns H v for a flat v (parameters_to_vector order) and increments ``hvp_count``;
    ``gradient()`` returns the flat gradient. Chunk contributions are summed losses divided by N, so the result
    does not depend on ``chunk_size`` (None: ``preferred_chunk(model)`` or ``DEFAULT_CHUNK``). Floating inputs are
    cast to the parameters' dtype and every chunk is moved to their device. Build it once and pass it to
    ``top_eigenpairs``, ``smallest_eigenvalue``, ``trace``, ``density``.

    Products reuse per-chunk state while the weights are unchanged (``engine``):

    * ``"structured"`` (``"auto"`` picks it when ``lib.core.models.plan(model)`` reads the model: ReLU MLPs,
      conv-pool CNNs): the forward activations, ReLU / max-pool selections and backward deltas of every chunk are
      kept, and a product is one tangent (R-op) forward and one backward pass over them (Pearlmutter 1994),
      matrix products only (the first Linear skips input columns that are constant within the chunk, e.g. MNIST's
      border pixels: their contribution is a rank-one term; ReLU units inactive on the whole chunk are dropped);
    * ``"graph"`` (``"auto"`` for every other model): the autograd graph of each chunk's gradient
      (``create_graph=True``) is kept and differentiated again per product (``retain_graph=True``);
    * ``"rebuild"``: the gradient graph is rebuilt for every product (no state kept).

    Kept state is bounded by ``keep_graphs_mb`` (MiB over all chunks; bytes of the kept tensors, for ``"graph"``
    the tensors autograd saves): chunks past the budget are rebuilt at every product. The state is dropped and
    rebuilt whenever any parameter or buffer differs (``torch.equal``) from the values it was built with, so every
    product uses the model's current weights. ``kept_chunks``, ``kept_bytes`` and ``state_builds`` describe it.
    """

    def __init__(self, model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                 chunk_size: int | None = None, keep_graphs_mb: float = KEEP_GRAPHS_MB, engine: str = "auto"):
        self.n_samples = check_data(inputs, targets)
        self.device, self.dtype = device_dtype(model)
        self.model = model
        self.inputs, self.targets = inputs, targets
        self.n_params = n_params(model)
        self.keep_bytes = check_number("keep_graphs_mb", keep_graphs_mb, ge=0) * 2 ** 20
        engine = check_choice("engine", engine, ENGINES)
        steps = plan(model) if engine in ("auto", "structured") and not targets.is_floating_point() else None
        if steps is not None and not plan_accepts(steps, inputs[:1].to(self.dtype)):
            steps = None
        if engine == "structured" and steps is None:
            raise ParameterError("engine", engine, "a model that lib.core.models.plan reads (Flatten, Linear, ReLU, "
                                 "conv-pool stages) with inputs it accepts and class-index targets",
                                 hint="use engine='auto' or 'graph'")
        self._structured = _Structured(model, steps) if steps is not None else None
        if chunk_size is None:
            chunk_size = preferred_chunk(model) or DEFAULT_CHUNK
        self.chunk_size = check_int("chunk_size", chunk_size, 1)
        self.engine = "structured" if self._structured else ("graph" if engine in ("auto", "graph") else "rebuild")
        fusable = fused_cnn.applies(steps, list(model.parameters()), targets)
        if engine == "fused" and not fusable:
            raise ParameterError("engine", engine, "a float32 CPU model of conv-pool stages and one Linear "
                                 f"(lib.core.fused_cnn.supports) and a kernel built here "
                                 f"({fused_cnn.unavailable_reason() or 'it is'})", hint="use engine='auto'")
        if engine in ("auto", "fused") and fusable:
            self.engine = "fused"
            self._x32 = inputs.to(torch.float32).contiguous()
            self._y64 = targets.to(torch.int64).contiguous()
        self.hvp_count = 0
        self.grad_count = 0
        self.state_builds = 0
        self._records: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._snapshot: list[torch.Tensor] | None = None
        self._states: list | None = None
        self._work: dict = {}

    def _chunks(self):
        for start in range(0, self.n_samples, self.chunk_size):
            yield self._chunk(start)

    def _chunk(self, start: int):
        """Samples start .. start + chunk_size on the operator's device (floating inputs in its dtype)."""
        x = self.inputs[start:start + self.chunk_size].to(self.device)
        y = self.targets[start:start + self.chunk_size].to(self.device)
        return (x.to(self.dtype) if x.is_floating_point() else x), y

    def _loss_sum(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.model, unflatten(self.model, w), (x,)), y, reduction="sum")

    def as_vector(self, v) -> torch.Tensor:
        """``v`` as a flat tensor of this operator's dtype and device (shape checked)."""
        v = torch.as_tensor(v).reshape(-1).to(device=self.device, dtype=self.dtype)
        if v.numel() != self.n_params:
            raise ValueError(f"vector has {v.numel()} entries, the model has n_params={self.n_params}")
        return v

    # ------------------------------------------------------------------------------------------- kept state
    @property
    def kept_chunks(self) -> int:
        """Chunks whose state is kept now (0 before the first product and after a weight change)."""
        return 0 if self._states is None else sum(s is not None for s in self._states)

    @property
    def kept_bytes(self) -> int:
        """Bytes of the kept state (see ``keep_graphs_mb``)."""
        return 0 if self._states is None else sum(s.nbytes for s in self._states if s is not None)

    def _weights_unchanged(self) -> bool:
        current = [t.detach() for t in (*self.model.parameters(), *self.model.buffers())]
        return (self._snapshot is not None and len(current) == len(self._snapshot)
                and all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
                        for a, b in zip(current, self._snapshot)))

    def _current_states(self) -> list:
        """Per-chunk kept states (None: not kept); rebuilt lazily (at the next product) after a weight change."""
        if self.engine == "rebuild" or self.keep_bytes <= 0:
            return [None] * ((self.n_samples + self.chunk_size - 1) // self.chunk_size)
        if self._states is None or not self._weights_unchanged():
            self._states = None
            self._snapshot = [t.detach().clone() for t in (*self.model.parameters(), *self.model.buffers())]
            self._states = []
            self.state_builds += 1
        return self._states

    def drop_state(self) -> None:
        """Free the kept per-chunk state now (it is rebuilt at the next product)."""
        self._states, self._snapshot, self._work = None, None, {}

    def _chunk_product(self, i: int, start: int, w0, tangents, states: list, out) -> None:
        """Add chunk i's H v (loss sum) to ``out``, keeping the chunk's state if the budget allows (the samples
        are read only to build a state)."""
        building = len(states) == i
        state = None if building else states[i]
        if state is None:
            state = self._build_state(*self._chunk(start), w0, count=building)
        self._apply(state, tangents, out)
        if building:
            fits = self.keep_bytes > 0 and self.kept_bytes + state.nbytes <= self.keep_bytes
            states.append(state if fits else None)

    def _build_state(self, x, y, w0, count: bool = True):
        """A chunk's state at the current weights (``count``: measure the bytes autograd saves)."""
        if self._structured is not None:
            return self._structured.build(x, y, self.inputs)
        w = w0.clone().requires_grad_(True)
        sizes = _SavedBytes(self.inputs)
        with sizes.counting() if count else contextlib.nullcontext():
            (g,) = torch.autograd.grad(self._loss_sum(w, x, y), w, create_graph=True)
        return _GraphState(w, g, sizes.total + g.numel() * g.element_size())

    def _apply(self, state, tangents, out):
        """Add the chunk's H v (loss sum) to ``out``: a dict of parameter tensors (structured) or a flat vector."""
        if self._structured is not None:
            self._structured.product(state, tangents, out, self._work)
        elif state.g.requires_grad:                 # else piecewise-linear in w on this chunk: zero curvature
            out += torch.autograd.grad(state.g, state.w, grad_outputs=tangents, retain_graph=True)[0]

    # ------------------------------------------------------------------------------------------- products
    def _fused_hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v (loss sum) by ``lib.core.fused_cnn.hvp``: forward, tangent and backward pass per image in cache."""
        st = self._structured
        names = [n for n in st.param_names if n is not None]
        tangents = step_weights(unflatten(self.model, v), st.param_names)
        weights = [None if s.module is None else st._weights(k) for k, s in enumerate(st.steps)]
        parts = fused_cnn.hvp(st.steps, weights, tangents, self._x32, self._y64)
        out = {}
        for (wname, bname), (hw, hb) in zip(names, parts):
            out[wname] = hw
            if bname:
                out[bname] = hb
        return st.flat(self.model, out, v)

    def hvp(self, v) -> torch.Tensor:
        """H v, from the kept per-chunk state (built at the first product after a weight change)."""
        v = self.as_vector(v)
        if self.engine == "fused":
            out = self._fused_hvp(v) / self.n_samples
            self.hvp_count += 1
            if self._records is not None and len(self._records) < MAX_RECORDS:
                self._records.append((v.detach().clone(), out.detach().clone()))
            return out
        w0 = flat_params(self.model)
        states = self._current_states()
        structured = self._structured is not None
        out = {} if structured else torch.zeros_like(w0)
        tangents = self._structured.tangents(self.model, v) if structured else v
        with eval_mode(self.model), torch.enable_grad():
            for i, start in enumerate(range(0, self.n_samples, self.chunk_size)):
                if self.engine == "rebuild" or self.keep_bytes <= 0:
                    self._apply(self._build_state(*self._chunk(start), w0, count=False), tangents, out)
                else:
                    self._chunk_product(i, start, w0, tangents, states, out)
        if structured:
            out = self._structured.flat(self.model, out, w0)
        self.hvp_count += 1
        out = out / self.n_samples
        if self._records is not None and len(self._records) < MAX_RECORDS:
            self._records.append((v.detach().clone(), out.detach().clone()))
        return out

    @contextlib.contextmanager
    def recording(self):
        """Keep every product (v, H v) made inside the block (at most ``MAX_RECORDS``) in ``records()``."""
        self._records = []
        try:
            yield self
        finally:
            self._records = None

    def records(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(X, HX), each (m, n_params), of the recorded products, or None."""
        if not self._records:
            return None
        return (torch.stack([x for x, _ in self._records]), torch.stack([hx for _, hx in self._records]))

    def gradient(self) -> torch.Tensor:
        """Flat gradient of the mean loss (same chunking; counted in ``grad_count``)."""
        w0 = flat_params(self.model)
        out = torch.zeros_like(w0)
        with eval_mode(self.model), torch.enable_grad():
            for x, y in self._chunks():
                w = w0.clone().requires_grad_(True)
                out += torch.autograd.grad(self._loss_sum(w, x, y), w)[0]
        self.grad_count += 1
        return out / self.n_samples

    def loss(self) -> float:
        """Mean loss over all samples."""
        w0 = flat_params(self.model)
        with eval_mode(self.model), torch.no_grad():
            return sum(float(self._loss_sum(w0, x, y)) for x, y in self._chunks()) / self.n_samples

    def hvp_numpy(self, x: np.ndarray) -> np.ndarray:
        """H x for a float64 numpy vector (for scipy), returned as float64."""
        return self.hvp(torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(-1))).double().cpu().numpy()

    def linear_operator(self, shift: float | None = None) -> LinearOperator:
        """scipy LinearOperator for H, or for ``shift * I - H`` when a shift is given."""
        n = self.n_params
        if shift is None:
            return LinearOperator((n, n), matvec=self.hvp_numpy, dtype=np.float64)
        return LinearOperator((n, n), matvec=lambda x: shift * np.ravel(x) - self.hvp_numpy(x), dtype=np.float64)


def _check_operator(op) -> HessianOperator:
    if not isinstance(op, HessianOperator):
        raise TypeError(f"pass a HessianOperator(model, inputs, targets, chunk_size=None) as the first argument, "
                        f"got {type(op).__name__}")
    return op


# ----------------------------------------------------------------------------------------------- eigenpairs
def _products(op: HessianOperator, q: torch.Tensor) -> torch.Tensor:
    """H q for the orthonormal columns of q (n, k), float64: from the products recorded during the solver
    where they reproduce a column (linearity: q = X^T c gives H q = (HX)^T c), else a fresh product."""
    hq = torch.empty_like(q)
    fresh = list(range(q.shape[1]))
    rec = op.records()
    if rec is not None:
        X, HX = rec[0].double(), rec[1].double()                       # (m, n)
        coef = torch.linalg.lstsq(X.T.cpu(), q.cpu(), driver="gelsd").solution.to(q.device)   # (m, k)
        recon = torch.linalg.norm(X.T @ coef - q, dim=0)               # columns of q have unit norm
        gain = (coef.abs() * torch.linalg.norm(X, dim=1)[:, None]).sum(0)   # error amplification of the sum
        ok = (recon <= REUSE_TOL) & (gain <= REUSE_MAX_GAIN)
        if ok.any():
            hq[:, ok] = HX.T @ coef[:, ok]
        fresh = [j for j in range(q.shape[1]) if not bool(ok[j])]
    for j in fresh:
        hq[:, j] = op.hvp(q[:, j]).double()
    return hq


def _ritz(op: HessianOperator, vectors: torch.Tensor, scale: float | None = None):
    """Rayleigh-Ritz on span(vectors): (values desc, rows, residuals), all float64. H is applied to the span
    through the solver's recorded products where they reproduce it (``_products``), else by fresh products."""
    q, _ = torch.linalg.qr(vectors.double().T)                        # (n, k) orthonormal columns
    hq = _products(op, q)                                              # (n, k)
    m = q.T @ hq
    values, s = torch.linalg.eigh((m + m.T) / 2)
    values, s = values.flip(0), s.flip(1)
    vecs, hvecs = q @ s, hq @ s
    if scale is None:
        scale = float(values.abs().max())
    scale = scale if scale > 0 else 1.0
    residuals = torch.linalg.norm(hvecs - vecs * values, dim=0) / scale
    return values.cpu(), vecs.T.contiguous(), residuals.cpu()


def _eigsh(op: HessianOperator, k: int, tol: float, max_iter, seed: int, ncv, shift=None):
    """ARPACK largest-algebraic eigenvectors of H (or shift*I - H) as (k, n) rows in op's dtype.

    Runs with one BLAS thread (``threadpoolctl``, restored after): ARPACK's OpenBLAS threads otherwise keep
    spinning between calls and took the cores from torch, doubling the cost of each product on 2 cores."""
    v0 = np.random.RandomState(seed).standard_normal(op.n_params)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            _, vecs = eigsh(op.linear_operator(shift), k=k, which="LA", tol=tol, maxiter=max_iter, v0=v0, ncv=ncv)
    except ArpackNoConvergence as err:
        raise RuntimeError(f"Lanczos (eigsh) did not converge to tol={tol} in max_iter={max_iter} restarts; "
                           "raise max_iter or tol") from err
    return torch.from_numpy(vecs.T.copy()).to(device=op.device, dtype=op.dtype)


def _pyhessian_class():
    from pyhessian import hessian as pyhessian_hessian  # lazy: only the power method needs PyHessian

    class OnOperator(pyhessian_hessian):
        """PyHessian's ``hessian`` whose product is our exact chunked ``HessianOperator.hvp``.

        Its ``__init__`` is replaced (no forward/backward, no ``.grad`` use, no ``model.eval()`` for good);
        ``eigenvalues`` is PyHessian's unchanged loop, which calls ``dataloader_hv_product`` when
        ``full_dataset`` is True.
        """

        def __init__(self, op: HessianOperator):
            self.op, self.model, self.criterion, self.data = op, op.model, None, None
            self.full_dataset, self.device = True, op.device
            self.params = list(op.model.parameters())
            self.gradsH = None

        def dataloader_hv_product(self, v):
            flat = self.op.as_vector(torch.cat([t.reshape(-1) for t in v]))
            hv = self.op.hvp(flat)
            return float(hv.double() @ flat.double()), list(unflatten(self.op.model, hv).values())

    return OnOperator


def _power_vectors(op: HessianOperator, k: int, tol: float, max_iter: int, seed: int) -> torch.Tensor:
    """PyHessian 0.1 ``hessian.eigenvalues(maxIter, tol, top_n=k)`` on ``op``: power iteration with deflation,
    stop when |d lambda| / (|lambda| + 1e-6) < tol. Seeded (its torch.randn start vectors use the CPU RNG, forked);
    model mode and ``.grad`` restored (it calls ``zero_grad``). Returns its k vectors as rows; its eigenvalues
    (Rayleigh quotients of the previous iterate) are discarded and recomputed by ``_ritz``. Finds the k largest
    |lambda|, which are the k largest algebraic ones unless negative curvature is that strong."""
    solver = _pyhessian_class()(op)
    with torch.random.fork_rng(devices=[]), eval_mode(op.model), _grads_kept(op.model):
        torch.manual_seed(seed)
        _, vectors = solver.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
    return torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in vectors]).to(op.dtype)


def top_eigenpairs(op: HessianOperator, k: int, method: str = "lanczos", tol: float = 1e-4,
                   max_iter: int | None = None, seed: int = 0, ncv: int | None = None) -> Eigenpairs:
    """Top-k eigenpairs of the operator's Hessian, largest algebraic eigenvalue first.

    ``method="lanczos"``: eigsh(which="LA") with ARPACK's criterion ||r|| <= tol |lambda|; ``max_iter`` = restarts
    (None: scipy's default), ``ncv`` = Lanczos basis size (None: max(2k + 1, k + 5); scipy's default 20 would
    spend 20 products on k = 1).
    ``method="power"``: PyHessian's power iteration with deflation, ``tol`` its relative eigenvalue-change rule
    (the eigenvalue settles faster than the vector: residual 1e-3 took tol 1e-4 to 1e-6 on mlp2),
    ``max_iter`` iterations per pair (None: 1000); it returns the k largest-|lambda| pairs (sorted algebraically).
    Both finish with Rayleigh-Ritz and residuals from H applied to the k vectors: Lanczos takes H v from its own
    recorded products where they reproduce v (linearity; no new products), power iteration spends k fresh
    products. ``hvp_count`` = products made by this call.
    """
    op = _check_operator(op)
    method = check_choice("method", method, METHODS)
    tol = check_positive("tol", tol)
    k = check_int("k", k, 1)
    if k >= op.n_params:
        raise ParameterError("k", k, f"an integer smaller than n_params={op.n_params}", hint="lower k")
    count0, t0 = op.hvp_count, time.perf_counter()
    if method == "lanczos":
        ncv = min(op.n_params, max(2 * k + 1, k + 5)) if ncv is None else ncv
        with op.recording():
            vectors = _eigsh(op, k, tol, max_iter, seed, ncv)
            values, vecs, residuals = _ritz(op, vectors)
    else:
        iters = POWER_MAX_ITER if max_iter is None else check_int("max_iter", max_iter, 1)
        vectors = _power_vectors(op, k, tol, iters, seed)
        values, vecs, residuals = _ritz(op, vectors)
    return Eigenpairs(eigenvalues=values, eigenvectors=canonical_signs(vecs).to(op.dtype), residuals=residuals,
                      hvp_count=op.hvp_count - count0, seconds=time.perf_counter() - t0, method=method)


def canonical_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Each row times the sign that makes its entry of largest magnitude positive.

    An eigenvector's sign is arbitrary: the solver's start vector, thread count or BLAS build can flip it, and a flip
    changes which perturbations w* + P^T theta a Monte-Carlo estimate draws. Fixing it makes downstream numbers
    independent of those accidents (up to ties in the largest magnitude)."""
    idx = vectors.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(torch.gather(vectors, 1, idx))
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def smallest_eigenvalue(op: HessianOperator, tol: float = 1e-4, max_iter: int | None = None, seed: int = 0,
                        ncv: int | None = None) -> SmallestEigenpair:
    """Smallest algebraic eigenvalue: lambda_1 by eigsh, then the top eigenpair of lambda_1 I - H.

    The shift makes ARPACK's stopping rule relative to lambda_1 - lambda_min (not to a possibly tiny
    |lambda_min|), so ``residual`` = ||Hv - lambda v|| / max(|lambda_1|, |lambda|) is about ``tol`` or below.
    ``hvp_count`` = products made by this call.
    """
    op = _check_operator(op)
    tol = check_positive("tol", tol)
    count0, t0 = op.hvp_count, time.perf_counter()
    with op.recording():
        top, _, _ = _ritz(op, _eigsh(op, 1, tol, max_iter, seed, ncv))
        lam1 = float(top[0])
        vector = _eigsh(op, 1, tol, max_iter, seed + 1, ncv, shift=lam1)
        value, vec, absolute = _ritz(op, vector, scale=1.0)
    value = float(value[0])
    residual = float(absolute[0]) / (max(abs(lam1), abs(value)) or 1.0)
    return SmallestEigenpair(value=value, eigenvector=vec[0].to(op.dtype), residual=residual, largest=lam1,
                             hvp_count=op.hvp_count - count0, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- trace
def _probe(op: HessianOperator, gen: torch.Generator, kind: str) -> torch.Tensor:
    """Rademacher (+-1) or standard Gaussian vector from ``gen`` (CPU), in op's dtype/device."""
    if kind == "rademacher":
        z = torch.randint(0, 2, (op.n_params,), generator=gen, dtype=torch.float64) * 2 - 1
    else:
        z = torch.randn(op.n_params, generator=gen, dtype=torch.float64)
    return z.to(device=op.device, dtype=op.dtype)


def trace(op: HessianOperator, n_probes: int = 100, probe: str = "rademacher", seed: int = 0) -> TraceEstimate:
    """Hutchinson estimate of tr(H) from ``n_probes`` seeded probes z (Rademacher, or ``probe="gaussian"``):
    mean of z^T H z, with its standard error std(ddof=1) / sqrt(n_probes). ``hvp_count`` = n_probes."""
    op = _check_operator(op)
    n_probes = check_int("n_probes", n_probes, 2)
    probe = check_choice("probe", probe, PROBES)
    count0, t0 = op.hvp_count, time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    samples = np.empty(n_probes)
    for i in range(n_probes):
        z = _probe(op, gen, probe)
        samples[i] = float(op.hvp(z).double() @ z.double())
    return TraceEstimate(estimate=float(samples.mean()), stderr=float(samples.std(ddof=1) / np.sqrt(n_probes)),
                         n_probes=n_probes, samples=samples, hvp_count=op.hvp_count - count0,
                         seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- density
def lanczos_tridiagonal(op: HessianOperator, start: torch.Tensor, n_iter: int):
    """Lanczos with full (twice repeated Gram-Schmidt) reorthogonalisation from ``start``.

    Returns (alphas, betas) as float64 numpy arrays of lengths m and m - 1, m <= n_iter (m < n_iter only when
    an invariant subspace is reached: beta <= 1000 eps max|T|).
    """
    eps = torch.finfo(op.dtype).eps
    basis = torch.zeros(n_iter, op.n_params, dtype=op.dtype, device=op.device)
    q = start / torch.linalg.norm(start)
    alphas, betas = [], []
    for j in range(n_iter):
        basis[j] = q
        w = op.hvp(q)
        alphas.append(float(w.double() @ q.double()))
        for _ in range(2):
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        if j == n_iter - 1:
            break
        beta = float(torch.linalg.norm(w))
        if beta <= 1e3 * eps * max(max(abs(a) for a in alphas), max(betas, default=0.0)):
            break
        betas.append(beta)
        q = w / beta
    return np.array(alphas), np.array(betas)


def _gauss_quadrature(alphas: np.ndarray, betas: np.ndarray):
    """Nodes (Ritz values, ascending) and weights (squared first components of the Ritz vectors) of the
    symmetric tridiagonal with diagonal ``alphas`` and off-diagonal ``betas``."""
    nodes, vecs = eigh_tridiagonal(alphas, betas)
    return nodes, vecs[0] ** 2


def smooth_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma_sq: float) -> np.ndarray:
    """sum_j weights_j N(grid; nodes_j, sigma_sq), evaluated in blocks of grid points."""
    nodes, weights = np.ravel(nodes), np.ravel(weights)
    keep = weights > 0
    nodes, weights = nodes[keep], weights[keep]
    out = np.empty(len(grid))
    for start in range(0, len(grid), 1000):
        g = grid[start:start + 1000, None]
        out[start:start + 1000] = np.exp(-(g - nodes) ** 2 / (2 * sigma_sq)) @ weights
    return out / np.sqrt(2 * np.pi * sigma_sq)


def density(op: HessianOperator, n_runs: int = 1, n_iter: int = 100, seed: int = 0, grid=None,
            sigma_sq: float | None = None, probe: str = "rademacher", n_grid: int = 10000) -> Density:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019, as in PyHessian).

    Per run: a seeded probe (Rademacher or Gaussian), normalised; ``n_iter`` Lanczos steps with full
    reorthogonalisation; nodes = Ritz values, weights = squared first Ritz-vector components / n_runs
    (``scipy.linalg.eigh_tridiagonal``). sum(weights * nodes) estimates tr(H)/n_params and
    sum(weights * nodes**2) estimates tr(H^2)/n_params.
    ``sigma_sq`` defaults to PyHessian's 1e-5 * max(1, spectral range); ``grid`` defaults to ``n_grid`` points
    covering all nodes +- (0.01 + 5 sigma), so the smoothed density integrates to ~1 (it is not renormalised).
    ``hvp_count`` = products made by this call (n_runs * n_iter unless a run stops early).
    """
    op = _check_operator(op)
    n_runs = check_int("n_runs", n_runs, 1)
    n_iter = check_int("n_iter", n_iter, 1)
    probe = check_choice("probe", probe, PROBES)
    if n_iter > op.n_params:
        raise ParameterError("n_iter", n_iter, f"an integer in [1, n_params={op.n_params}]", hint="lower n_iter")
    if sigma_sq is not None:
        sigma_sq = check_positive("sigma_sq", sigma_sq)
    count0, t0 = op.hvp_count, time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    nodes = np.empty((n_runs, n_iter))
    weights = np.zeros((n_runs, n_iter))
    for r in range(n_runs):
        alphas, betas = lanczos_tridiagonal(op, _probe(op, gen, probe), n_iter)
        x, w = _gauss_quadrature(alphas, betas)
        nodes[r, :len(x)], nodes[r, len(x):] = x, x[-1]
        weights[r, :len(x)] = w / n_runs
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma_sq is None:
        sigma_sq = 1e-5 * max(1.0, hi - lo)
    if grid is None:
        pad = 0.01 + 5 * np.sqrt(sigma_sq)
        grid = np.linspace(lo - pad, hi + pad, check_int("n_grid", n_grid, 2))
    grid = np.asarray(grid, dtype=np.float64)
    return Density(nodes=nodes, weights=weights, grid=grid, density=smooth_density(nodes, weights, grid, sigma_sq),
                   sigma_sq=float(sigma_sq), hvp_count=op.hvp_count - count0, seconds=time.perf_counter() - t0)
