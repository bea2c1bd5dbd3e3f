"""Hessian solvers benchmark: Lanczos (eigsh) vs PyHessian power iteration at the same residual, and the cost of
one Hessian-vector product in gradients.

For each k, each method is run with a tolerance that is tightened tenfold until the largest residual
||Hv - lambda v|| / max|lambda| is <= target_residual; the products and seconds of that final successful run are
reported (``*_hvps``), together with the products spent over the whole tolerance search (``*_search_hvps``).

    python -m bench.hessian_bench            # mlp2 trained on 10,000 MNIST images, k = 1, 10, 32
    python -m bench.hessian_bench --quick    # small n, k = 1, 4: a smoke run in seconds
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.core import hessian  # noqa: E402

TARGET_PRODUCT_RATIO = 5.0      # Lanczos at least 5x fewer products than power at k = 10 and 32
TARGET_HVP_IN_GRADIENTS = 2.5   # one product costs at most 2.5 gradients
TOLS = {"lanczos": (1e-2, 1e-3, 1e-4, 1e-5, 1e-6), "power": (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)}


def solve_to_residual(model, inputs, targets, k: int, method: str, target_residual: float,
                      chunk_size: int, max_iter: int | None, max_search_hvps: int = 50_000,
                      log=None, keep: dict | None = None) -> dict:
    """Tighten tol until max residual <= target (or the search used ``max_search_hvps`` products); return the
    final run's numbers and the search totals (``keep``: a dict that receives the final run's ``Eigenpairs``
    under ``(k, method)``)."""
    search_hvps, search_seconds = 0, 0.0
    op = hessian.HessianOperator(model, inputs, targets, chunk_size)
    for tol in TOLS[method]:
        kw = {"max_iter": max_iter} if method == "power" else {}
        eig = hessian.top_eigenpairs(op, k=k, method=method, tol=tol, **kw)
        search_hvps += eig.hvp_count
        search_seconds += eig.seconds
        if log:
            log(f"  k={k} {method:7s} tol={tol:.0e}: {eig.hvp_count} products, {eig.seconds:.1f} s, "
                f"max residual {float(eig.residuals.max()):.1e}")
        if float(eig.residuals.max()) <= target_residual or search_hvps >= max_search_hvps:
            break
    if keep is not None:
        keep[(k, method)] = eig
    return {"tol": tol, "hvps": eig.hvp_count, "seconds": eig.seconds, "residual": float(eig.residuals.max()),
            "reached": float(eig.residuals.max()) <= target_residual, "search_hvps": search_hvps,
            "search_seconds": search_seconds, "eigenvalues": eig.eigenvalues.tolist()}


def product_cost(model, inputs, targets, chunk_size: int, repeats: int = 5) -> dict:
    """Seconds of one full-data gradient and one Hessian-vector product, timed in interleaved pairs after one
    warm-up; medians (robust to a busy machine) and the median of the per-pair ratios."""
    op = hessian.HessianOperator(model, inputs, targets, chunk_size)
    v = torch.randn(op.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op.gradient(), op.hvp(v)
    grad_s, hvp_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        op.gradient()
        t1 = time.perf_counter()
        op.hvp(v)
        hvp_s.append(time.perf_counter() - t1)
        grad_s.append(t1 - t0)
    ratios = [h / g for h, g in zip(hvp_s, grad_s, strict=True)]
    return {"gradient_seconds": statistics.median(grad_s), "hvp_seconds": statistics.median(hvp_s),
            "hvp_in_gradients": statistics.median(ratios), "repeats": repeats}


def run(model, inputs, targets, ks=(1, 10, 32), target_residual: float = 1e-3, chunk_size: int = 4096,
        power_max_iter: int = 1000, repeats: int = 5, log=None, keep: dict | None = None) -> list[dict]:
    """One row per k (Lanczos vs power at the same target residual) plus a final row with the product cost.
    ``log``: optional callable receiving one progress line per solver run; ``keep``: optional dict that receives
    each k's final Lanczos ``Eigenpairs`` under k (the trace bench deflates them)."""
    found = {}
    rows = []
    for k in ks:
        lan = solve_to_residual(model, inputs, targets, k, "lanczos", target_residual, chunk_size, None, log=log,
                                keep=found)
        pw = solve_to_residual(model, inputs, targets, k, "power", target_residual, chunk_size, power_max_iter,
                               log=log)
        row = {"k": k}
        row.update({f"lanczos_{key}": val for key, val in lan.items()})
        row.update({f"power_{key}": val for key, val in pw.items()})
        row["hvp_ratio"] = pw["hvps"] / lan["hvps"]
        row["time_ratio"] = pw["seconds"] / lan["seconds"]
        lan_vals, pw_vals = torch.tensor(lan["eigenvalues"]), torch.tensor(pw["eigenvalues"])
        row["eigenvalue_gap"] = float((lan_vals - pw_vals).abs().max() / lan_vals.abs().max())
        rows.append(row)
    rows.append({"k": None, **product_cost(model, inputs, targets, chunk_size, repeats)})
    if keep is not None:
        keep.update({k: eig for (k, _), eig in found.items()})
    return rows


def format_table(rows: list[dict], target_residual: float) -> str:
    """Plain text table of ``run``'s rows with the targets next to the measured values."""
    head = (f"{'k':>3} | {'lanczos hvps':>12} {'s':>7} {'res':>8} {'tol':>6} | {'power hvps':>10} {'s':>7} "
            f"{'res':>8} {'tol':>6} {'search':>7} | {'ratio':>6} {'target':>7} {'max|dl|':>8}")
    lines = [f"Hessian solvers at max residual <= {target_residual:g} (residual = ||Hv - lv|| / max|l|)", head,
             "-" * len(head)]
    for r in rows:
        if r["k"] is None:
            continue
        target = f">= {TARGET_PRODUCT_RATIO:g}" if r["k"] >= 10 else "-"
        flag = "" if r["lanczos_reached"] and r["power_reached"] else "  (target residual NOT reached)"
        lines.append(
            f"{r['k']:>3} | {r['lanczos_hvps']:>12} {r['lanczos_seconds']:>7.1f} {r['lanczos_residual']:>8.1e} "
            f"{r['lanczos_tol']:>6.0e} | {r['power_hvps']:>10} {r['power_seconds']:>7.1f} "
            f"{r['power_residual']:>8.1e} {r['power_tol']:>6.0e} {r['power_search_hvps']:>7} | "
            f"{r['hvp_ratio']:>6.1f} {target:>7} {r['eigenvalue_gap']:>8.1e}{flag}")
    cost = next(r for r in rows if r["k"] is None)
    lines.append(f"one Hessian-vector product = {cost['hvp_in_gradients']:.2f} gradients "
                 f"({cost['hvp_seconds']:.3f} s vs {cost['gradient_seconds']:.3f} s; "
                 f"target <= {TARGET_HVP_IN_GRADIENTS:g})")
    lines.append("power 'search' = products over all tolerances tried (tightened tenfold until the residual held); "
                 "max|dl| = largest eigenvalue difference between the methods / lambda_1")
    lines.append(f"lambda_1 = {rows[0]['lanczos_eigenvalues'][0]:.4g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="training images (default 10000; --quick: 1000)")
    parser.add_argument("--quick", action="store_true", help="small n, ks=(1, 4), 1 epoch: a smoke run")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-residual", type=float, default=1e-3)
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="eigenpair counts (default 1 10 32)")
    args = parser.parse_args(argv)
    from lib.core.training import models
    from lib.core.training import recipe as train
    from lib.infra import data

    n = args.n or (1000 if args.quick else 10_000)
    ks = tuple(args.ks) if args.ks else (1, 4) if args.quick else (1, 10, 32)
    x, y = data.training_subset(args.dataset, n, args.seed)
    model = models.build("mlp2", args.seed)
    t0 = time.perf_counter()
    train.train(model, x, y, epochs=1 if args.quick else 10, batch_size=64, lr=1e-3, seed=args.seed, progress=False)
    print(f"mlp2 on {n} {args.dataset} images, trained in {time.perf_counter() - t0:.0f} s, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    rows = run(model, x, y, ks=ks, target_residual=args.target_residual,
               log=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(rows, args.target_residual))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
