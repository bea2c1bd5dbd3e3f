"""Scale benchmark: top-k Hessian eigenpairs and a Hutchinson trace of a >10M-parameter MLP on this CPU, data streamed.

The model is ``lib.core.training.models.mlp((3000, 3000))`` (784-3000-3000-10, 11,388,010 parameters), trained for one
epoch by the study's recipe on the first N = 2,000 MNIST images of the fixed insertion order
(``lib.infra.data.training_subset``). The Hessian of the mean cross-entropy is applied by

* ``batched`` (default): ``lib.core.hessian.batched.BatchedHessianOperator`` over a ``DataLoader(shuffle=False)`` of
  ``--batch-size`` images: every product streams the batches (double backward per batch, nothing kept between
  products); the records of the Lanczos Ritz step are capped at 1 GiB;
* ``structured``: ``lib.core.hessian.HessianOperator`` (the study's engine) with ``chunk_size = --batch-size``; it
  keeps per-chunk activations between products and records every Lanczos product (up to ``MAX_RECORDS``).

For each, ``top_eigenpairs(op, k, tol)`` (Lanczos) and ``trace(op, n_probes)`` are timed and the peak resident
memory of each phase is measured (the kernel's high-water mark ``VmHWM``, reset before each phase through
``/proc/self/clear_refs``; without it, ``resource.getrusage`` of the whole process). Memory is also given in
float64 vectors of length n_params (8 n bytes): Lanczos keeps ncv = 2k + 1 of them in ARPACK, so O(k n).

    nice -n 10 python -m bench.large_model                       # the row quoted in docs/benchmarks.md
    python -m bench.large_model --quick                          # 784-300-300-10 on 200 images: a smoke run
    python -m bench.large_model --engines batched structured     # both operators

The row is printed in the style of ``bench`` and saved to ``results/bench/bench/large_model*.json``
(``ResultStore("bench")``).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.core import hessian, train  # noqa: E402
from lib.core.hessian.batched import BatchedHessianOperator  # noqa: E402
from lib.core.training import models
from lib.infra import data  # noqa: E402
from lib.infra.results import ResultStore  # noqa: E402

ENGINES = ("batched", "structured")
MIB = 2 ** 20


# ----------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak resident memory of a block: VmHWM after resetting it (``/proc/self/clear_refs``), else ru_maxrss."""

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kernel = _status_kib("VmHWM") is not None
        except OSError:
            self.kernel = False
        self.before = (_status_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.kernel:
            self.peak = _status_kib("VmHWM") * 1024
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.method = "VmHWM (reset per phase)" if self.kernel else "ru_maxrss (process peak)"
        return False


# ----------------------------------------------------------------------------------------------- run
def build_operator(engine: str, model, x, y, batch_size: int):
    if engine == "batched":
        return BatchedHessianOperator(model, DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False))
    return hessian.HessianOperator(model, x, y, chunk_size=batch_size)


def run_engine(engine: str, model, x, y, k: int, tol: float, probes: int, batch_size: int, seed: int,
               log=print) -> dict:
    """Top-k eigenpairs and a trace with one operator: seconds, products and the peak memory of each phase."""
    op = build_operator(engine, model, x, y, batch_size)
    n = op.n_params
    with PeakMemory() as mem_top:
        top = hessian.top_eigenpairs(op, k, tol=tol, seed=seed)
    log(f"  {engine}: top-{k} in {top.seconds:.0f} s, {top.hvp_count} products, max residual "
        f"{float(top.residuals.max()):.1e}, peak RSS {mem_top.peak / MIB:.0f} MiB")
    del top.eigenvectors
    with PeakMemory() as mem_tr:
        tr = hessian.trace(op, n_probes=probes, seed=seed)
    log(f"  {engine}: trace {tr.estimate:.4g} +- {tr.stderr:.2g} in {tr.seconds:.0f} s, peak RSS "
        f"{mem_tr.peak / MIB:.0f} MiB")
    products = top.hvp_count + tr.hvp_count
    return {
        "engine": engine, "n_params": n, "N": len(x), "batch_size": batch_size, "k": k, "tol": tol,
        "eigenvalues": top.eigenvalues.tolist(), "max_residual": float(top.residuals.max()),
        "top_hvps": top.hvp_count, "top_seconds": top.seconds,
        "trace": tr.estimate, "trace_stderr": tr.stderr, "trace_probes": probes, "trace_seconds": tr.seconds,
        "seconds_per_product": (top.seconds + tr.seconds) / products,
        "rss_before_mib": mem_top.before / MIB, "top_peak_mib": mem_top.peak / MIB,
        "top_growth_mib": (mem_top.peak - mem_top.before) / MIB,
        "top_growth_vectors": (mem_top.peak - mem_top.before) / (8 * n),
        "trace_peak_mib": mem_tr.peak / MIB, "trace_growth_mib": (mem_tr.peak - mem_tr.before) / MIB,
        "peak_method": mem_top.method, "torch_threads": torch.get_num_threads(),
    }


def format_rows(rows: list[dict]) -> str:
    head = (f"{'engine':<10} | {'n_params':>10} {'N':>5} | {'top-k':>5} {'hvps':>5} {'s':>7} {'res':>8} | "
            f"{'trace':>9} {'s':>6} | {'s/hvp':>6} | {'peak MiB':>8} {'growth':>7} {'(8n)':>5}")
    lines = ["Hessian engine at scale (Lanczos top-k, Hutchinson trace; peak = resident memory of the top-k phase, "
             "growth over the RSS before it, also in float64 vectors of length n_params)", head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['engine']:<10} | {r['n_params']:>10,} {r['N']:>5} | {r['k']:>5} {r['top_hvps']:>5} "
            f"{r['top_seconds']:>7.0f} {r['max_residual']:>8.1e} | {r['trace']:>9.4g} {r['trace_seconds']:>6.0f} | "
            f"{r['seconds_per_product']:>6.1f} | {r['top_peak_mib']:>8.0f} {r['top_growth_mib']:>7.0f} "
            f"{r['top_growth_vectors']:>5.1f}")
    r = rows[0]
    lines.append(f"lambda_1..3 = {', '.join(f'{v:.4g}' for v in r['eigenvalues'][:3])}; trace +- "
                 f"{r['trace_stderr']:.2g} ({r['trace_probes']} probes); memory by {r['peak_method']}; "
                 f"torch threads {r['torch_threads']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="784-300-300-10 on 200 images (a smoke run)")
    parser.add_argument("--n", type=int, default=None, help="MNIST training images (default 2000)")
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="hidden widths (default 3000 3000)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["batched"])
    args = parser.parse_args(argv)
    n = args.n or (200 if args.quick else 2000)
    widths = tuple(args.widths or ((300, 300) if args.quick else (3000, 3000)))
    x, y = data.training_subset("mnist", n, args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = models.mlp(widths)
    t0 = time.perf_counter()
    train.train(model, x, y, epochs=args.epochs, seed=args.seed, progress=False)
    print(f"mlp 784-{'-'.join(map(str, widths))}-10 ({models.n_params(model):,} parameters) trained "
          f"{args.epochs} epoch(s) on {n} MNIST images in {time.perf_counter() - t0:.0f} s", flush=True)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    rows = [run_engine(e, model, x, y, args.k, args.tol, args.probes, args.batch_size, args.seed, log=log)
            for e in args.engines]
    print(format_rows(rows), flush=True)
    params = {"n": n, "widths": list(widths), "k": args.k, "tol": args.tol, "probes": args.probes,
              "batch_size": args.batch_size, "epochs": args.epochs, "seed": args.seed, "engines": args.engines}
    name = "large_model_quick" if args.quick else "large_model"
    ResultStore("bench").save("bench", name, {"rows": rows}, params, ext="json",
                              seconds=sum(r["top_seconds"] + r["trace_seconds"] for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
