"""Trace estimators at equal products on the bench's mlp2 operator: the error per product of Hutchinson, Hutch++
and deflation by the top-k eigenpairs that the solvers section already computed (informational rows).

Each estimator spends the same ``products`` products (30: the paper profile's ``spectrum.trace_probes``) per
estimate, once per seed 0 .. ``seeds`` - 1 on one ``HessianOperator``. The error per product is the empirical
standard deviation of the estimates over seeds x sqrt(products): the spread that one product would give, so a
ratio of two such numbers squared is the ratio of products needed for equal error. With few seeds that standard
deviation is rough (4 seeds: about +-40%), so the table also gives the same quantity from the reported standard
errors, sqrt(mean stderr^2) x sqrt(products), which pools every probe of every seed (the tests check both agree
on explicit Hessians). The deflated estimator reuses the Lanczos top-k of ``bench.hessian_bench`` (k = 32, or 4
with ``--quick``): their products are not counted, as the spectrum stage computes them anyway; without them
(``--skip solvers``) they are computed here and their products are reported.

    python -m bench.trace_bench            # mlp2 trained on 10,000 MNIST images (or the paper's), 4 seeds
    python -m bench.trace_bench --quick    # N = 1,000, 1 epoch, k = 4, 3 seeds
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pyhessian_bench import trained_mlp2  # noqa: E402
from lib.core import hessian  # noqa: E402
from lib.infra import data  # noqa: E402

PRODUCTS = 30          # the paper profile's trace budget (spectrum.trace_probes)
SEEDS, QUICK_SEEDS = 4, 3      # 4 x 3 x 30 = 360 products: ~50 s on this 2-core CPU when quiet
K, QUICK_K = 32, 4     # the eigenpairs deflated when they have to be computed here


def run(model, inputs, targets, eigenpairs=None, k: int = K, products: int = PRODUCTS, seeds: int = SEEDS,
        log=None) -> list[dict]:
    """One row per estimator: estimates over seeds, their spread and the error per product (over seeds, and from
    the reported standard errors). ``eigenpairs``: the top-k ``Eigenpairs`` to deflate (None: computed here by
    Lanczos at tol 1e-3, their products reported in the deflated row)."""
    op = hessian.HessianOperator(model, inputs, targets)
    eig_products, source = 0, "reused (solvers section)"
    if eigenpairs is None:
        eigenpairs = hessian.top_eigenpairs(op, k, tol=1e-3)
        eig_products, source = eigenpairs.hvp_count, "computed here"
    k = len(eigenpairs.eigenvalues)
    methods = {"Hutchinson": lambda s: hessian.trace(op, n_probes=products, seed=s),
               "Hutch++": lambda s: hessian.hutchpp(op, n_products=products, seed=s),
               f"deflated (k = {k})": lambda s: hessian.deflated_trace(op, eigenpairs, n_probes=products, seed=s)}
    rows = []
    for name, f in methods.items():
        t0 = time.perf_counter()
        est = [f(s) for s in range(seeds)]
        values = np.array([e.estimate for e in est])
        rows.append({"estimator": name, "products": products, "seeds": seeds, "mean": float(values.mean()),
                     "sd": float(values.std(ddof=1)), "error_per_product": hessian.error_per_product(est),
                     "stderr_per_product": float(np.sqrt(np.mean([e.stderr ** 2 for e in est]) * products)),
                     "estimates": values.tolist(), "stderrs": [e.stderr for e in est],
                     "exact_parts": [e.exact_part for e in est], "seconds": time.perf_counter() - t0})
        if name.startswith("deflated"):
            rows[-1].update({"k": k, "eigenpairs": source, "eigenpair_products": eig_products,
                             "eigenvalue_sum": float(eigenpairs.eigenvalues.sum())})
        if log:
            log(f"  trace {name}: {seeds} seeds x {products} products in {rows[-1]['seconds']:.1f} s, "
                f"mean {rows[-1]['mean']:.4g}, sd {rows[-1]['sd']:.3g}")
    for r in rows:
        r["ratio_to_hutchinson"] = r["error_per_product"] / rows[0]["error_per_product"]
        r["stderr_ratio_to_hutchinson"] = r["stderr_per_product"] / rows[0]["stderr_per_product"]
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """(measure, value) of the informational summary rows: each estimator's error per product over seeds, and
    for Hutch++ and deflation the ratio to Hutchinson's from the pooled standard errors (the steadier number)."""
    out = [{"measure": f"trace error per product, {r['estimator']} ({r['products']} products, sd over "
                       f"{r['seeds']} seeds x sqrt(products), mlp2)", "value": r["error_per_product"]} for r in rows]
    out += [{"measure": f"trace error per product, {r['estimator']} / Hutchinson, from the pooled standard errors",
             "value": r["stderr_ratio_to_hutchinson"]} for r in rows[1:]]
    return out


def format_table(rows: list[dict]) -> str:
    """Plain text table of ``run``'s rows."""
    head = (f"{'estimator':<18} {'products':>8} {'seeds':>5} {'mean':>9} {'sd':>8} {'err/product':>11} "
            f"{'ratio':>6} | {'from stderr':>11} {'ratio':>6}")
    lines = ["Trace of the mlp2 Hessian at equal products: error per product = sd over seeds x sqrt(products)",
             head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['estimator']:<18} {r['products']:>8} {r['seeds']:>5} {r['mean']:>9.4g} {r['sd']:>8.3g} "
                     f"{r['error_per_product']:>11.3g} {r['ratio_to_hutchinson']:>6.2f} | "
                     f"{r['stderr_per_product']:>11.3g} {r['stderr_ratio_to_hutchinson']:>6.2f}")
    defl = rows[-1]
    lines.append(f"deflated: sum of the k = {defl['k']} eigenvalues {defl['eigenvalue_sum']:.4g}, eigenpairs "
                 f"{defl['eigenpairs']} ({defl['eigenpair_products']} products counted here); 'from stderr' = "
                 "sqrt(mean stderr^2) x sqrt(products), every probe pooled; ratio = / Hutchinson's (its square: "
                 "the share of Hutchinson's products for equal error)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--products", type=int, default=PRODUCTS)
    args = parser.parse_args(argv)
    n = args.n or (1000 if args.quick else 10_000)
    x, y = data.training_subset("mnist", n, 0)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    model, source = trained_mlp2(x, y, n, args.quick, log)
    print(f"N = {n} MNIST images; mlp2: {source}", flush=True)
    rows = run(model, x, y, k=QUICK_K if args.quick else K, products=args.products,
               seeds=args.seeds or (QUICK_SEEDS if args.quick else SEEDS), log=log)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
