"""All benchmarks in one run, ending with one table of measured ratios against their targets.

    python -m bench            # mlp2 trained on 10,000 MNIST images (make bench)
    python -m bench --quick    # small sizes: a smoke run of the benchmark code

Rows are also written to results/bench/bench.json (with provenance) so the paper can quote them.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from bench import hessian_bench, montecarlo_bench


def summary_rows(hess: list[dict], mc: list[dict]) -> list[dict]:
    rows = []
    for r in hess:
        if r["k"] is None:
            rows.append({"measure": "one Hessian-vector product, in gradients", "value": r["hvp_in_gradients"],
                         "target": f"<= {hessian_bench.TARGET_HVP_IN_GRADIENTS:g}",
                         "ok": r["hvp_in_gradients"] <= hessian_bench.TARGET_HVP_IN_GRADIENTS})
        else:
            rows.append({"measure": f"power / Lanczos products to residual, k = {r['k']}", "value": r["hvp_ratio"],
                         "target": f">= {hessian_bench.TARGET_PRODUCT_RATIO:g}" if r["k"] >= 10 else "-",
                         "ok": r["hvp_ratio"] >= hessian_bench.TARGET_PRODUCT_RATIO if r["k"] >= 10 else None})
    for r in mc:
        rows.append({"measure": r["measure"], "value": r["value"], "target": r.get("target", "-"), "ok": r.get("ok")})
    return rows


def format_summary(rows: list[dict]) -> str:
    def val(v):
        return " vs ".join(f"{u:.1f}" for u in v) if isinstance(v, (list, tuple)) else f"{v:.2f}"
    width = max(len(r["measure"]) for r in rows)
    lines = ["", "Benchmark summary (all ratios measured in this run)", f"{'measure':<{width}}  {'measured':>14}  "
             f"{'target':<28} met", "-" * (width + 52)]
    for r in rows:
        met = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        lines.append(f"{r['measure']:<{width}}  {val(r['value']):>14}  {str(r['target'])[:28]:<28} {met}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    args = parser.parse_args(argv)
    from lib.core import models, train
    from lib.infra import data
    from lib.infra.results import ResultStore

    n = args.n or (1000 if args.quick else 10_000)
    x, y = data.training_subset("mnist", n, 0)
    model = models.build("mlp2", 0)
    t0 = time.perf_counter()
    train.train(model, x, y, epochs=1 if args.quick else 10, seed=0, progress=False)
    print(f"mlp2 trained on {n} MNIST images in {time.perf_counter() - t0:.0f} s; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    hess = hessian_bench.run(model, x, y, ks=(1, 4) if args.quick else (1, 10, 32), log=log)
    print(hessian_bench.format_table(hess, 1e-3), flush=True)
    memory = {"n": 5000, "samples": (8, 32)} if args.quick else {}
    mc = montecarlo_bench.run(model, x, y, n_thetas=8 if args.quick else 32, memory=memory, log=log)
    print(montecarlo_bench.format_table(mc), flush=True)
    rows = summary_rows(hess, mc)
    print(format_summary(rows))
    ResultStore("bench").save("bench", "quick" if args.quick else "full", {"summary": rows, "hessian": hess, "mc": mc},
                              {"n": n, "quick": args.quick}, ext="json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
