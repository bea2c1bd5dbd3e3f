"""A fused CPU kernel for the per-sample losses of conv-pool CNNs at many weight sets (``fused_cnn.c``, AVX2).

The Monte Carlo of a CNN evaluates the same images at thousands of weight vectors ``w* + P^T theta``. Written with
torch's operations (``lib.core.training.models.plan_forward_many``), every stage writes its whole block of
activations to
memory and reads it back, and the tiny channel counts (4 and 8) leave the library kernels bound by that traffic.
``fused_cnn.c`` instead puts eight weight sets in the eight lanes of an AVX2 register and runs one image through
every stage, the linear head and the cross-entropy in buffers that stay in the core's cache.

* ``supports(steps)``: a ``lib.core.training.models.plan`` of conv-pool stages, a Flatten and one Linear (no ReLU
after it).
* ``applies(steps, params, targets)``: both of the above, float32 CPU weights and class targets in range.
* ``available()``: the kernel is built and usable here (``lib.core.native.build``: an x86-64 CPU on which torch
  runs its AVX2 (or AVX-512) kernels, a C compiler (``$CC`` or ``cc``), neither ``LIB_NATIVE`` nor
  ``LIB_FUSED_CNN`` set to 0); ``lib.core.native.status()["fused_cnn"]`` says why not. Without it the torch path
  serves, with the same losses to float rounding.
* ``losses(steps, weights, x, y)``: the (B, n) cross-entropy losses for B weight sets (the ``weights`` list of
  ``plan_forward_many``), split over ``torch.get_num_threads()`` threads (the foreign call releases the GIL).

Numerics: float32 with fused multiply-adds in a fixed order, so the same on every AVX2 CPU; they differ from
torch's by float rounding (tested against ``plan_forward_many`` + ``cross_entropy``).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from lib.core.native import build

__all__ = ["SOURCE", "FLAGS", "LANES", "supports", "applies", "available", "losses", "logits", "hvp", "gradient"]

SOURCE = Path(__file__).with_suffix(".c")
#: compiler flags (``lib.core.native.build``): AVX2 + FMA code whatever the CPU, no contraction of the scalar code
FLAGS = build.FLAGS
#: weight sets per SIMD register (float32 lanes of AVX2)
LANES = 8
_MAX_STAGES, _MAX_K = 8, 64


def supports(steps) -> bool:
    """Whether a ``lib.core.training.models.plan`` is conv-pool stages, then a Flatten, then one Linear without ReLU."""
    if not steps or len(steps) < 3:
        return False
    convs = [s for s in steps if s.kind == "conv_pool"]
    if not convs or len(convs) > _MAX_STAGES or steps[:len(convs)] != convs:
        return False
    rest = steps[len(convs):]
    return (len(rest) == 2 and rest[0].kind == "flatten" and rest[1].kind == "linear" and not rest[1].relu
            and rest[1].module.out_features <= _MAX_K)


def applies(steps, params, targets: torch.Tensor | None = None) -> bool:
    """Whether the kernel serves a model here: its plan ``steps`` is ``supports``-ed, every parameter in ``params``
    is float32 on the CPU, the class ``targets`` (when given) lie in 0..K-1 (cross-entropy's own check, made before
    a kernel that does not check), and the kernel is built. Inputs are cast to float32 by the functions below."""
    if steps is None or not supports(steps):
        return False
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        return False
    if targets is not None:
        if targets.is_floating_point() or targets.dim() != 1 or not len(targets):
            return False
        if not (bool(targets.min() >= 0) and bool(targets.max() < steps[-1].module.out_features)):
            return False
    return available()


_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_library = build.kernel(SOURCE, "LIB_FUSED_CNN", {
    "conv_pool_ce_losses": [_P, _I64, _I, _I, _I, _P, _I, _I, _P, _P, _P, _P, _I, _P, _I, _P, _I64],
    "conv_pool_ce_hvp": [_P, _I64, _I, _I, _I, _P, _I, _I, _P, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P, _P],
    "conv_pool_ce_grad": [_P, _I64, _I, _I, _I, _P, _I, _I, _P, _P, _P, _P, _I, _P, _P, _P],
})


def available() -> bool:
    """Whether the kernel is built and usable here (see the module docstring)."""
    return _library()[0] is not None



def _function(name: str):
    lib, reason = _library()
    if lib is None:
        raise RuntimeError(f"the fused CNN kernel is not available: {reason}")
    return getattr(lib, name)


def _lanes(t: torch.Tensor, G: int) -> torch.Tensor:
    """(B, ...) -> (G, ..., 8) contiguous float32, the weight sets padded with zeros to G * 8."""
    B = t.shape[0]
    if B < G * LANES:
        t = torch.cat([t, t.new_zeros(G * LANES - B, *t.shape[1:])])
    t = t.reshape(G, LANES, *t.shape[1:])
    return t.movedim(1, -1).contiguous().float()


def losses(steps, weights: list, x: torch.Tensor, y: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """(B, n) cross-entropy losses of the plan ``steps`` (``supports(steps)``) at B weight sets: ``weights[k]`` =
    (W (B, O, C, 3, 3), b (B, O)) for the conv-pool steps and (W (B, K, F), b (B, K)) for the Linear, b possibly
    None; ``x`` (n, C, H, W) float32 images, ``y`` (n,) targets in 0..K-1. ``threads`` defaults to torch's."""
    fn = _function("conv_pool_ce_losses")
    convs = [k for k, s in enumerate(steps) if s.kind == "conv_pool"]
    head = len(steps) - 1
    B = weights[head][0].shape[0]
    G = -(-B // LANES)
    conv_w, conv_b, channels = [], [], [int(x.shape[1])]
    for k in convs:
        W, b = weights[k]
        O = W.shape[1]
        channels.append(int(O))
        conv_w.append(_lanes(W.detach(), G).reshape(G, -1))
        conv_b.append(_lanes(W.new_zeros(B, O) if b is None else b.detach(), G).reshape(G, -1))
    W, b = weights[head]
    K = int(W.shape[1])
    lin_w = _lanes(W.detach().transpose(1, 2), G)                      # (G, F, K, 8)
    lin_b = _lanes(W.new_zeros(B, K) if b is None else b.detach(), G)
    cw, cb = torch.cat(conv_w, 1).contiguous(), torch.cat(conv_b, 1).contiguous()
    xs = x.detach().to(torch.float32).contiguous()
    ys = y.detach().to(torch.int64).contiguous()
    n = len(xs)
    out = torch.empty(G * LANES, max(n, 1), dtype=torch.float32)
    ch = (ctypes.c_int * len(channels))(*channels)
    H, Wd = int(xs.shape[2]), int(xs.shape[3])
    args = (xs.data_ptr(), n, len(convs), ch, H, Wd, cw.data_ptr(), cb.data_ptr(), lin_w.data_ptr(),
            lin_b.data_ptr(), K, ys.data_ptr(), G, out.data_ptr(), out.shape[1])

    codes = build.run(build.split(n, threads), lambda s0, s1: fn(args[0], args[1], s0, s1, *args[2:]))
    if any(codes):
        raise RuntimeError(f"fused CNN kernel rejected the sizes: channels {channels}, image {H}x{Wd}, K = {K}")
    return out[:B, :n]


def _plain(t: torch.Tensor | None, like: torch.Tensor, n: int) -> torch.Tensor:
    """A contiguous float32 copy of t, or n zeros (an absent bias)."""
    return (like.new_zeros(n) if t is None else t.detach()).to(torch.float32).contiguous()


def _single(steps, weights: list, x: torch.Tensor, tangents: list | None):
    """Arguments of ``conv_pool_ce_hvp`` for one weight set (``weights`` / ``tangents``: per step (W, b) or
    (V, c), b / c possibly None) and the tensors that must outlive the call."""
    convs = [k for k, s in enumerate(steps) if s.kind == "conv_pool"]
    head = len(steps) - 1
    keep, channels = [], [int(x.shape[1])]
    conv_w, conv_b, tan_w, tan_b = [], [], [], []
    for k in convs:
        W, b = weights[k]
        O = int(W.shape[0])
        channels.append(O)
        keep += [_plain(W, W, 0), _plain(b, W, O)]
        conv_w.append(keep[-2].data_ptr())
        conv_b.append(keep[-1].data_ptr())
        if tangents is not None:
            V, c = tangents[k]
            keep += [_plain(V, W, 0), _plain(c, W, O)]
            tan_w.append(keep[-2].data_ptr())
            tan_b.append(keep[-1].data_ptr())
    W, b = weights[head]
    K = int(W.shape[0])
    keep += [_plain(W, W, 0), _plain(b, W, K)]
    lin = (keep[-2].data_ptr(), keep[-1].data_ptr())
    tan_lin = (None, None)
    if tangents is not None:
        V, c = tangents[head]
        keep += [_plain(V, W, 0), _plain(c, W, K)]
        tan_lin = (keep[-2].data_ptr(), keep[-1].data_ptr())
    S = len(convs)
    arrays = ((ctypes.c_int * len(channels))(*channels), (ctypes.c_void_p * S)(*conv_w),
              (ctypes.c_void_p * S)(*conv_b),
              (ctypes.c_void_p * S)(*tan_w) if tangents is not None else None,
              (ctypes.c_void_p * S)(*tan_b) if tangents is not None else None)
    return S, channels, K, arrays, lin, tan_lin, keep


def logits(steps, weights: list, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """(n, K) outputs of the plan ``steps`` at one weight set (``weights[k]`` = (W, b) of the affine steps, as
    the model holds them) for images x (n, C, H, W): eight images per register."""
    fn = _function("conv_pool_ce_hvp")
    xl = x.detach().to(torch.float32).contiguous()
    n = len(xl)
    S, channels, K, arrays, lin, _, keep = _single(steps, weights, xl, None)
    out = torch.empty(n, K, dtype=torch.float32)
    H, Wd = int(x.shape[2]), int(x.shape[3])
    codes = build.run(build.split(n, threads, LANES), lambda s0, s1: fn(
        xl.data_ptr(), n, s0, s1, S, arrays[0], H, Wd, arrays[1], arrays[2], lin[0], lin[1], K,
        None, None, None, None, None, None, out.data_ptr()))
    if any(codes):
        raise RuntimeError(f"fused CNN kernel rejected the sizes: channels {channels}, image {H}x{Wd}, K = {K}")
    return out


def _reduction(steps, weights: list, x: torch.Tensor, y: torch.Tensor, tangents, threads: int | None):
    """What ``hvp`` and ``gradient`` share: contiguous float32 images and int64 targets, the kernel's arguments,
    the affine steps with their sizes, the threads' sample ranges and their zeroed lane sums."""
    xl = x.detach().to(torch.float32).contiguous()
    ys = y.detach().to(torch.int64).contiguous()
    S, channels, K, arrays, lin, tan_lin, keep = _single(steps, weights, xl, tangents)
    affine = [k for k, s in enumerate(steps) if s.module is not None]
    sizes = [(weights[k][0].numel(), weights[k][0].shape[0]) for k in affine]
    parts = build.split(len(xl), threads, LANES)
    acc = torch.zeros(len(parts), sum(a + b for a, b in sizes) * LANES, dtype=torch.float32)
    head = (xl.data_ptr(), len(xl), S, arrays[0], int(xl.shape[2]), int(xl.shape[3]), arrays[1], arrays[2],
            lin[0], lin[1], K)
    return dict(xl=xl, ys=ys, keep=keep, arrays=arrays, tan_lin=tan_lin, affine=affine, sizes=sizes, parts=parts,
                acc=acc, head=head, channels=channels)


def _call(fn, r: dict, tail) -> None:
    """fn(images, n, s0, s1, stages..., *tail(part index)) for every thread's range; errors named."""
    h = r["head"]
    codes = build.run(r["parts"], lambda s0, s1: fn(h[0], h[1], s0, s1, *h[2:], *tail(r["parts"].index((s0, s1)))))
    if any(codes):
        raise RuntimeError(f"fused CNN kernel rejected the sizes: channels {r['channels']}, image "
                           f"{h[4]}x{h[5]}, K = {h[10]}")


def hvp(steps, weights: list, tangents: list, x: torch.Tensor, y: torch.Tensor,
        threads: int | None = None) -> list:
    """H v of the summed cross-entropy over (x, y) at one weight set, for the tangent v given per step like the
    weights (``tangents[k]`` = (V, c)): per affine step (H v of W, H v of b), float32 (b's None if the step has
    no bias). Exact (Pearlmutter's R-op); every call runs the forward pass again (nothing is kept)."""
    fn = _function("conv_pool_ce_hvp")
    r = _reduction(steps, weights, x, y, tangents, threads)
    a, t = r["arrays"], r["tan_lin"]
    _call(fn, r, lambda i: (a[3], a[4], t[0], t[1], r["ys"].data_ptr(), r["acc"][i].data_ptr(), None))
    return _per_step(r["acc"], weights, r["affine"], r["sizes"])


def _per_step(acc: torch.Tensor, weights: list, affine: list, sizes: list) -> list:
    """The threads' lane sums (threads, n_values x 8) -> per affine step (sum for W, sum for b or None)."""
    summed = acc.view(acc.shape[0], -1, LANES).sum((0, 2))          # over threads and lanes
    out, at = [], 0
    for k, (nw, nb) in zip(affine, sizes):
        W, b = weights[k]
        out.append((summed[at:at + nw].view_as(W), None if b is None else summed[at + nw:at + nw + nb]))
        at += nw + nb
    return out


def gradient(steps, weights: list, x: torch.Tensor, y: torch.Tensor,
             threads: int | None = None) -> tuple[list, float]:
    """(per affine step (gradient of W, of b or None), loss) of the summed cross-entropy over (x, y) at one weight
    set: one forward and one backward pass per image in cache, eight images per register (float32)."""
    fn = _function("conv_pool_ce_grad")
    r = _reduction(steps, weights, x, y, None, threads)
    losses = torch.zeros(len(r["parts"]), LANES, dtype=torch.float32)
    _call(fn, r, lambda i: (r["ys"].data_ptr(), r["acc"][i].data_ptr(), losses[i].data_ptr()))
    return _per_step(r["acc"], weights, r["affine"], r["sizes"]), float(losses.sum())
