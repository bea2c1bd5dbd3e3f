"""Costs of the core kernels as ratios measured in one run (issue 16, deliverables 1-3).

1. one Hessian-vector product / one forward pass over the same N (mlp2 and the CNN; target <= 3), with the
   operator's kept per-chunk state built beforehand, and the old rebuild-per-product engine beside it;
2. the CNN's forward pass / mlp2's forward pass over the same N (target <= 2; the CNN has ~1/3 of mlp2's FLOPs),
   with the layer-by-layer torch forward beside it;
3. ``delta_curve`` seconds per theta / one forward pass (mlp1, mlp2, CNN; target <= 1.0);
4. informational: the insertion-order sums of one block of thetas (R = 50 orders), torch's operations against the
   C kernel (``lib.core.native.order_sums``);
5. informational, beside each HVP row: the same ratio in multiply-adds (``lib.core.training.models.hvp_multiply_adds``),
   what an exact product costs when it runs as fast per multiply-add as the forward and skips no unit (the trained
   mlp2's product skips the ReLU units inactive on a whole chunk, so it can measure below it).

A "forward pass" is ``model(x)`` over all N samples without autograd, in eval mode (the CNN runs its conv-pool
kernels in blocks of ``lib.core.training.models.FUSED_CHUNK`` samples itself). Every ratio is the median over repeats of
interleaved pairs (forward, then the measured call), so a busy machine slows both alike.

    python -m bench.cost_bench            # N = 10,000 MNIST images
    python -m bench.cost_bench --quick    # N = 2,000, fewer repeats
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.core import hessian  # noqa: E402
from lib.core.landscape.delta import OrderSums, delta_curve  # noqa: E402
from lib.core.landscape.sampling import Gaussian  # noqa: E402
from lib.core.landscape.subspace import random_basis  # noqa: E402
from lib.core.native import fused_cnn, order_sums  # noqa: E402
from lib.core.training import models  # noqa: E402

TARGET_HVP_IN_FORWARDS = 3.0
TARGET_CNN_FORWARD_IN_MLP2 = 2.0
TARGET_THETA_IN_FORWARDS = 1.0


def forward(model, x) -> float:
    """Seconds of one forward pass ``model(x)`` (eval mode, no autograd)."""
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0


def timed_call(f) -> tuple[float, object]:
    """(wall seconds of ``f()``, its output)."""
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def timed(f) -> float:
    """Wall seconds of ``f()``."""
    return timed_call(f)[0]


def paired(base, other, repeats: int) -> dict:
    """Median of other/base over ``repeats`` interleaved pairs (base, other, base: the smaller base is used),
    after one warm-up of each; medians of both."""
    base(), other()
    ratios, b, o = [], [], []
    for _ in range(repeats):
        b0 = base()
        t = other()
        b1 = base()
        ratios.append(t / min(b0, b1))
        b.append(min(b0, b1))
        o.append(t)
    return {"value": statistics.median(ratios), "ratios": ratios, "base_seconds": statistics.median(b),
            "seconds": statistics.median(o), "repeats": repeats}


def hvp_cost(model, x, y, repeats: int = 5, name: str = "", rebuild_repeats: int = 2) -> dict:
    """One Hessian-vector product over (x, y) in forward passes over x: the default operator (kept state built by
    the warm-up product) and the rebuild-per-product engine."""
    op = hessian.HessianOperator(model, x, y)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(0))
    t_build = timed(lambda: op.hvp(v))
    row = paired(lambda: forward(model, x), lambda: timed(lambda: op.hvp(v)), repeats)
    old = hessian.HessianOperator(model, x, y, engine="rebuild")
    rebuild = paired(lambda: forward(model, x), lambda: timed(lambda: old.hvp(v)), rebuild_repeats)
    row.update({"measure": f"one HVP / one forward, {name} (N={len(x)})", "target": TARGET_HVP_IN_FORWARDS,
                "kind": "max", "engine": op.engine, "chunk_size": op.chunk_size, "kept_mib": op.kept_bytes / 2 ** 20,
                "first_product_seconds": t_build, "rebuild_in_forwards": rebuild["value"],
                "rebuild_seconds": rebuild["seconds"], "N": len(x), "model": name,
                "arithmetic": models.hvp_multiply_adds(model, x[:1])})
    if op.engine == "fused":          # the structured engine (torch's operations) beside the fused kernel
        st = hessian.HessianOperator(model, x, y, engine="structured")
        st.hvp(v)
        structured = paired(lambda: forward(model, x), lambda: timed(lambda: st.hvp(v)), rebuild_repeats)
        row.update({"structured_in_forwards": structured["value"], "structured_seconds": structured["seconds"]})
    return row


def cnn_forward_cost(x, repeats: int = 7) -> dict:
    """The CNN's forward over x in mlp2 forwards over x (both seed 0), and the layer-by-layer torch forward of the
    same CNN (in chunks of ``CONV_CHUNK``, as before the conv-pool kernels) beside it."""
    cnn, mlp2 = models.build("cnn", 0).eval(), models.build("mlp2", 0).eval()
    row = paired(lambda: forward(mlp2, x), lambda: forward(cnn, x), repeats)

    def layers():
        with torch.no_grad():
            t0 = time.perf_counter()
            for i in range(0, len(x), models.CONV_CHUNK):
                torch.nn.Sequential.forward(cnn, x[i:i + models.CONV_CHUNK])
            return time.perf_counter() - t0

    def torch_kernels():                  # the conv-pool matrix-product kernels, as before the fused kernel
        with torch.no_grad():
            t0 = time.perf_counter()
            models.plan_forward(models.plan(cnn), x)
            return time.perf_counter() - t0

    ref = paired(lambda: forward(mlp2, x), layers, max(2, repeats // 2))
    plan_row = paired(lambda: forward(mlp2, x), torch_kernels, max(2, repeats // 2))
    with torch.no_grad():
        diff = float((cnn(x[:500]) - torch.nn.Sequential.forward(cnn, x[:500])).abs().max())
    row.update({"measure": f"cnn forward / mlp2 forward (N={len(x)})", "target": TARGET_CNN_FORWARD_IN_MLP2,
                "kind": "max", "layer_by_layer_in_mlp2": ref["value"], "layer_by_layer_seconds": ref["seconds"],
                "plan_forward_in_mlp2": plan_row["value"], "plan_forward_seconds": plan_row["seconds"],
                "fused_kernel": fused_cnn.available(), "max_abs_logit_difference": diff, "N": len(x)})
    return row


def theta_cost(model, x, y, name: str, n_thetas: int = 64, repeats: int = 3, D: int = 10,
               sigma: float = 0.1) -> dict:
    """``delta_curve`` seconds per theta (all of its time / n_thetas, set-up included) in forward passes."""
    basis = random_basis(models.n_params(model), D, seed=0, dtype=next(model.parameters()).dtype)
    delta_curve(model, x[:256], y[:256], basis, Gaussian(sigma), 2, progress=False)          # warm-up
    seeds = iter(range(1000))
    row = paired(lambda: forward(model, x),
                 lambda: delta_curve(model, x, y, basis, Gaussian(sigma), n_thetas, seed=next(seeds),
                                     progress=False).seconds / n_thetas, repeats)
    row.update({"measure": f"delta_curve s per theta / forward, {name} (T={n_thetas}, D={D})",
                "target": TARGET_THETA_IN_FORWARDS, "kind": "max", "seconds_per_theta": row["seconds"],
                "forward_seconds": row["base_seconds"], "n_thetas": n_thetas, "D": D, "N": len(x)})
    return row


def order_sums_cost(N: int, n_orders: int = 50, B: int = 16, repeats: int = 3) -> dict:
    """The insertion-order sums of one block of B thetas (``OrderSums.add``, R orders over N samples): torch's
    operations against the C kernel, ms per theta (informational: the kernel replaced the torch path)."""
    L = torch.rand(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def per_theta(engine):
        acc = OrderSums(N, n_orders, 1, "cpu", engine=engine)
        acc.add(L)                                                     # warm-up
        return min(timed(lambda: acc.add(L)) for _ in range(repeats)) / B

    torch_s = per_theta("torch")
    row = {"measure": f"insertion-order sums torch / C kernel, per theta (R={n_orders}, N={N})", "target": None,
           "kind": None, "torch_ms_per_theta": 1e3 * torch_s, "native": order_sums.available()}
    if order_sums.available():
        native_s = per_theta("native")
        row.update({"value": torch_s / native_s, "native_ms_per_theta": 1e3 * native_s})
    else:
        row.update({"value": None, "native_ms_per_theta": None})
    return row


def run(trained_mlp2, x, y, quick: bool = False, log=None) -> list[dict]:
    """Rows of deliverables 1-3 (dicts with measure / value / target / kind and details). ``trained_mlp2`` is used
    for mlp2's rows, seed-0 initialisations for mlp1 and the CNN (costs do not depend on training)."""
    repeats = 3 if quick else 5
    nets = {"mlp1": models.build("mlp1", 0), "mlp2": trained_mlp2, "cnn": models.build("cnn", 0)}
    rows = []
    for name in ("mlp2", "cnn"):
        rows.append(hvp_cost(nets[name], x, y, repeats, name, rebuild_repeats=1 if quick else 2))
        if log:
            r = rows[-1]
            log(f"  HVP {name}: {r['value']:.2f} forwards ({r['engine']}, kept {r['kept_mib']:.0f} MiB; rebuild "
                f"{r['rebuild_in_forwards']:.2f}"
                + (f"; structured {r['structured_in_forwards']:.2f}" if "structured_in_forwards" in r else "")
                + f"; multiply-adds: {r['arithmetic']['kept_in_forwards']:.2f} kept, "
                  f"{r['arithmetic']['recompute_in_forwards']:.2f} recomputed)")
    rows.append(cnn_forward_cost(x, repeats + 2))
    if log:
        log(f"  cnn forward: {rows[-1]['value']:.2f} mlp2 forwards (plan_forward "
            f"{rows[-1]['plan_forward_in_mlp2']:.2f}, layer by layer "
            f"{rows[-1]['layer_by_layer_in_mlp2']:.2f})")
    for name in ("mlp1", "mlp2", "cnn"):
        rows.append(theta_cost(nets[name], x, y, name, n_thetas=16 if quick else 64, repeats=3))
        if log:
            log(f"  delta_curve {name}: {rows[-1]['value']:.2f} forwards per theta")
    rows.append(order_sums_cost(len(x)))
    if log:
        r = rows[-1]
        log(f"  insertion-order sums: torch {r['torch_ms_per_theta']:.2f} ms per theta, C kernel "
            + (f"{r['native_ms_per_theta']:.3f} ms" if r["native"] else "not built"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    args = parser.parse_args(argv)
    from lib.infra import data

    n = args.n or (2000 if args.quick else 10_000)
    x, y = data.training_subset("mnist", n, 0)
    print(f"N = {n}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    for r in run(models.build("mlp2", 0), x, y, args.quick, log=print):
        print(f"{r['measure']}: {r['value']:.2f} (target {r['target']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
