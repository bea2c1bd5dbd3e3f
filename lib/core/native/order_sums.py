"""The insertion-order sums of ``lib.core.landscape.delta.OrderSums`` in C (``order_sums.c``, AVX2, float64).

Every Monte-Carlo curve with R random insertion orders adds, for each theta and order, the squared increments
d_k^2 of the permuted losses to a running (R, N-1) sum. With torch's operations that is seven passes over an
(R, N) float64 buffer per theta (1.4 ms at R = 50, N = 10,000: half of mlp1's whole loss evaluation);
``order_sums.c`` makes one pass per order with the thetas in the register lanes (0.16 ms per theta,
``make bench``).

* ``available()``: built by ``lib.core.native.build`` (x86-64 with AVX2, a C compiler, neither ``LIB_NATIVE`` nor
  ``LIB_ORDER_SUMS`` set to 0; ``lib.core.native.status()["order_sums"]`` says why not); elsewhere ``OrderSums``
  uses torch's operations, with the same sums to a few units in the last place (tested).
* ``add(order_sum, L, perms, inv)``: ``order_sum[r, k-1] += sum_b d_k(L[b][perms[r]])^2``, orders split over
  ``torch.get_num_threads()`` threads.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from lib.core.native import build

__all__ = ["available", "add"]

SOURCE = Path(__file__).with_suffix(".c")


_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_library = build.kernel(SOURCE, "LIB_ORDER_SUMS", {"order_sums_add": [_P, _I64, _I, _P, _I, _I, _P, _P]})


def available() -> bool:
    """Whether the kernel is built and usable here."""
    return _library()[0] is not None



def add(order_sum: torch.Tensor, L: torch.Tensor, perms: torch.Tensor, inv: torch.Tensor,
        threads: int | None = None) -> None:
    """In place: ``order_sum`` (R, N-1) float64 += the squared increments of every row of ``L`` (B, N) in every
    order of ``perms`` (R, N) int64; ``inv`` (N+1,) float64 holds 1/k at k (``inv[0]`` unused). CPU tensors."""
    lib, reason = _library()
    if lib is None:
        raise RuntimeError(f"the order-sums kernel is not available: {reason}")
    B, N = L.shape
    if B == 0:
        return
    bp = -(-B // 4) * 4
    lt = torch.zeros(N, bp, dtype=torch.float64)
    lt[:, :B] = L.T
    for t in (order_sum, perms, inv):
        if not t.is_contiguous():
            raise ValueError("order_sum, perms and inv must be contiguous")
    R = perms.shape[0]
    codes = build.run(build.split(R, threads), lambda r0, r1: lib.order_sums_add(
        lt.data_ptr(), N, bp, perms.data_ptr(), r0, r1, inv.data_ptr(), order_sum.data_ptr()))
    if any(codes):
        raise RuntimeError(f"order-sums kernel rejected the sizes: N = {N}, B = {B}")
