"""The native C kernels, fenced in one package: what is built here and why not (``status``), and the switches.

* ``fused_cnn``: conv-pool CNN losses at many weight sets, Hessian-vector products, the no-grad forward and the
  training gradients (``fused_cnn.c``); ``order_sums``: the insertion-order sums of the Monte Carlo
  (``order_sums.c``); ``build``: the compiler call, the library cache and the thread pool they share.
* ``status()``: per kernel ``{"built", "reason", "switch", "compiler", "compiler_version", "flags"}``, the record
  every result's provenance keeps (``lib.infra.results.provenance``). Building happens on the first call.
* Switches (read when a kernel is first used; ``refresh()`` reads them again): ``LIB_NATIVE=0`` turns every kernel
  off, ``LIB_FUSED_CNN=0`` / ``LIB_ORDER_SUMS=0`` one of them, ``CC`` names the C compiler (default ``cc``). Off,
  the callers use torch's operations: the same results to float rounding (docs/reproducibility.md gives the
  measured effect on a trained CNN's findings).
"""
from __future__ import annotations

from lib.core.native import build, fused_cnn, order_sums
from lib.core.native.build import FLAGS, KERNELS, refresh

__all__ = ["build", "fused_cnn", "order_sums", "FLAGS", "SWITCHES", "status", "refresh"]

#: the environment variables that turn kernels off (set to 0): all of them, then each kernel's own
SWITCHES = ("LIB_NATIVE",) + tuple(var for _, var in KERNELS.values())


def status() -> dict:
    """``{kernel: {"built": bool, "reason": why not built (None when built), "switch": its own variable,
    "compiler": the command, "compiler_version": first line of its --version (None: not found), "flags": [...]}}``
    for every kernel of the package (building the missing ones)."""
    compiler, version = build.compiler_command(), build.compiler_version()
    out = {}
    for name, (library, switch) in sorted(KERNELS.items()):
        lib, reason = library()
        out[name] = {"built": lib is not None, "reason": reason, "switch": switch, "compiler": compiler,
                     "compiler_version": version, "flags": list(FLAGS)}
    return out
