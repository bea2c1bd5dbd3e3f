"""The structured engine: exact Hessian-vector products of ReLU MLPs and conv-pool CNNs from kept activations,
selections and backward deltas (Pearlmutter's R-op written out in matrix products)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.core.tensors import param_layout, unflatten
from lib.core.training.models import (
    Step,
    conv_pool_columns,
    conv_pool_columns_adjoint,
    conv_pool_pre,
    phase_weights,
    phase_weights_adjoint,
    step_names,
)


@dataclass(eq=False)
class StructuredState:
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


class Structured:
    """Exact Hessian-vector products of the loss sum over a chunk for networks read by
    ``lib.core.training.models.plan``,
    from kept forward activations, selections and backward deltas (Pearlmutter's R-op: one tangent forward pass
    and one backward pass; ReLU and max-pooling are piecewise linear, so their selections are fixed and the only
    second-order terms are the softmax's and the products of weights of different layers)."""

    name = "structured"
    #: the per-chunk states are kept between products (within the operator's budget)
    keeps = True

    def __init__(self, model: nn.Module, steps: list[Step], data: torch.Tensor):
        self.model, self.steps, self.data = model, steps, data
        self.names = param_layout(model)[0]
        self.param_names = step_names(model, steps)
        self.first = next(k for k, s in enumerate(steps) if s.module is not None)
        self.work: dict = {}

    def weights(self, k: int):
        """(weight, bias or None) of step k, detached: the model's current values."""
        m = self.steps[k].module
        return m.weight.detach(), None if m.bias is None else m.bias.detach()

    def start(self, v: torch.Tensor, w0: torch.Tensor) -> tuple[list, dict]:
        """(tangents of v, empty accumulator) for one product."""
        return self.tangents(v), {}

    def tangents(self, v: torch.Tensor) -> list:
        """Per step: (V, c) slices of the flat vector v (conv-pool: also V's phase matrix and c repeated 4x)."""
        parts = unflatten(self.model, v)
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
    def build(self, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor | None = None,
              count: bool = True) -> StructuredState:
        """Forward and backward pass of one chunk at the model's current weights; the kept tensors (their bytes in
        ``nbytes``, the data set's own storage not counted). ``w0`` and ``count`` are not needed here."""
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
                W, b = self.weights(k)
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
                W, b = self.weights(k)
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
                    g = gz @ _take(self.weights(k)[0], *reversed(units[k]))
            elif k > self.first:             # a first conv-pool stage needs no deltas (its input has no tangent)
                C, n, H, Wd = shapes[k]
                deltas[k] = _unselect(g, *masks[k])
                g = conv_pool_columns_adjoint(phases[k][1] @ deltas[k], n, H, Wd)
        state = StructuredState(inputs, masks, deltas, shapes, phases, columns, p, units)
        data_ptr = self.data.untyped_storage().data_ptr() if torch.is_tensor(self.data) else None
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
    def product(self, st: StructuredState, tangents: list, out: dict, work: dict) -> None:
        """Add H v of the chunk's loss sum to ``out`` (parameter name -> tensor; ``tangents`` from
        ``tangents(v)``); ``work`` holds buffers reused from chunk to chunk (no page faults on the large
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
                    Rz = Rz.addmm_(Rh, _take(self.weights(k)[0], outs, ins).T)
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
                    Rg = (Rgz @ _take(self.weights(k)[0], outs, ins)).addmm_(gz, _take(V, outs, ins))
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

    def apply(self, st: StructuredState, tangents: list, out: dict) -> None:
        """Add the chunk's H v (loss sum) to ``out`` (``product`` with this engine's reused buffers)."""
        self.product(st, tangents, out, self.work)

    def finish(self, out: dict, like: torch.Tensor) -> torch.Tensor:
        """The summed product as one flat vector (``flat``)."""
        return self.flat(out, like)

    def drop(self) -> None:
        """Free the reused buffers."""
        self.work = {}

    def flat(self, out: dict, like: torch.Tensor) -> torch.Tensor:
        """The accumulated ``out`` as one flat vector in parameters_to_vector order."""
        _, shapes, _ = param_layout(self.model)
        return torch.cat([(out[name] if name in out else like.new_zeros(shape)).reshape(-1)
                          for name, shape in zip(self.names, shapes)])
