"""Scale benchmark: top-k Hessian eigenpairs and a Hutchinson trace of a >10M-parameter MLP on this CPU, data streamed.

The model is ``lib.core.training.models.mlp((3000, 3000))`` (784-3000-3000-10, 11,388,010 parameters), trained for one
epoch by the study's recipe on the first N = 2,000 MNIST images of the fixed insertion order
(``lib.infra.data.training_subset``). The Hessian of the mean cross-entropy is applied by

* ``batched`` (default): ``lib.core.hessian.batched.BatchedHessianOperator`` over a ``DataLoader(shuffle=False)`` of
  ``--batch-size`` images, engine "auto" (here the structured R-op): the first product keeps each batch's
  activations, ReLU masks and backward deltas (within ``keep_state_mb``), later products reuse them (with
  ``--method lanczos``, the records of ARPACK's Ritz step are capped at 1 GiB);
* ``rebuild``: the same operator with nothing kept (one double backward per batch and product: the operator before
  kept state, and curvlinops' way);
* ``structured``: ``lib.core.hessian.HessianOperator`` (the study's engine) with ``chunk_size = --batch-size``; it
  keeps per-chunk activations between products (and, with ``--method lanczos``, records every Lanczos product, up
  to ``MAX_RECORDS``).

For each, ``top_eigenpairs(op, k, tol, method=--method)`` and ``trace(op, n_probes)`` are timed and the peak resident
memory of each phase is measured (the kernel's high-water mark ``VmHWM``, reset before each phase through
``/proc/self/clear_refs``; without it, ``resource.getrusage`` of the whole process). Memory is also given in
float64 vectors of length n_params (8 n bytes), against the target 2k + 4 + kept (kept: the operator's kept state
in the same unit). ``--method thick-restart`` (default): ``lib.core.hessian.lanczos``, whose memory is its basis of
ncv + 1 = 2k + 2 vectors of the model's dtype (float32 here: k + 1 float64 vectors) and the product, at k more
products than ARPACK (its measured residuals); ``--method lanczos``: ARPACK (2k + 5 float64 vectors, its returned
vectors and the recorded products of its Ritz step: 94.6 float64 vectors at k = 10 on the 11.4M MLP).

    nice -n 10 python -m bench.large_model                       # the row quoted in docs/benchmarks.md
    python -m bench.large_model --quick                          # 784-300-300-10 on 200 images: a smoke run
    python -m bench.large_model --engines batched structured     # both operators
    python -m bench.large_model --method lanczos                 # ARPACK's top-k instead of thick-restart
    python -m bench.large_model --costs-only                     # the product-cost rows alone (make bench's)

``product_costs`` measures, in one process and interleaved rounds, one product of each ``BatchedHessianOperator``
engine (structured, graph, rebuild) and of curvlinops' ``HessianLinearOperator`` (when importable: ``make
bench-curvlinops`` installs it beside the project, not into it) in full-data gradients; ``make bench`` prints these
rows against ``TARGET_HVP_IN_GRADIENTS``.

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

from bench.cost_bench import timed, timed_call  # noqa: E402
from lib.api import SOLVERS  # noqa: E402
from lib.core import hessian  # noqa: E402
from lib.core.checks import ParameterError  # noqa: E402
from lib.core.hessian.batched import BatchedHessianOperator  # noqa: E402
from lib.core.training import models, recipe  # noqa: E402
from lib.core.training.task_models import build_task_model  # noqa: E402
from lib.infra import data  # noqa: E402
from lib.infra.results import ResultStore  # noqa: E402

ENGINES = ("batched", "rebuild", "structured")
#: top-k solver of the rows by default (the choices: ``lib.api.SOLVERS``, the ones ``analyze`` offers users)
DEFAULT_METHOD = "thick-restart"
#: models of the product-cost rows
COST_MODELS = ("mlp", "cnn", "vit")
MIB = 2 ** 20
#: engines of ``BatchedHessianOperator`` whose products ``product_costs`` times
COST_ENGINES = ("structured", "graph", "rebuild")
#: one product of the public operator with kept state, in full-data gradients (curvlinops 3.0.1: 2.97)
TARGET_HVP_IN_GRADIENTS = 2.0
#: the top-10 of the 11.4M MLP, in seconds: a third of the 751 s measured before per-batch state was kept
TARGET_TOP10_SECONDS = 751 / 3


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
    if engine in ("batched", "rebuild"):
        return BatchedHessianOperator(model, DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False),
                                      engine="auto" if engine == "batched" else "rebuild")
    return hessian.HessianOperator(model, x, y, chunk_size=batch_size)


def curvlinops_hessian(model, batches: list):
    """curvlinops' ``HessianLinearOperator`` of the mean cross-entropy over ``batches``, or None if curvlinops is
    not importable."""
    try:
        from curvlinops import HessianLinearOperator
    except ImportError:
        return None
    return HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), [p for p in model.parameters()], batches,
                                 check_deterministic=False)


def product_costs(model, x, y, batch_size: int, rounds: int = 2, seed: int = 0, log=print) -> dict:
    """One Hessian-vector product of each ``BatchedHessianOperator`` engine (``COST_ENGINES``, those that apply to
    the model; "auto" picks the first) and of curvlinops
    (when importable), in seconds and in full-data gradients, medians of ``rounds`` interleaved rounds on the same
    batches, after a first product that builds the kept state (timed apart); each product's largest deviation from
    the rebuilt one, relative to its largest entry."""
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    ops = {}
    for e in COST_ENGINES:
        try:
            ops[e] = BatchedHessianOperator(model, batches, engine=e)
        except ParameterError:          # "structured" on a model plan() does not read
            continue
    products = {f"ours ({e})": ops[e].hvp for e in ops}
    engines = {f"ours ({e})": e for e in ops}
    cl = curvlinops_hessian(model, batches)
    if cl is not None:
        products["curvlinops"] = lambda v: cl @ v
    v = torch.randn(ops["rebuild"].n_params, generator=torch.Generator().manual_seed(seed), dtype=ops["rebuild"].dtype)
    reference = ops["rebuild"].hvp(v)
    scale = float(reference.abs().max())
    first, error = {}, {}
    for name, fn in products.items():
        first[name], out = timed_call(lambda fn=fn: fn(v))
        error[name] = float((out.reshape(-1) - reference).abs().max()) / scale
    times = {name: [] for name in ["gradient", *products]}
    for r in range(rounds):
        times["gradient"].append(timed(ops["rebuild"].gradient))
        for name, fn in products.items():
            times[name].append(timed(lambda fn=fn: fn(v)))
        log(f"  costs round {r + 1}/{rounds}: " + ", ".join(f"{k} {t[-1]:.2f} s" for k, t in times.items()))
    med = {k: float(torch.tensor(t).median()) for k, t in times.items()}
    rows = [{"operator": name, "seconds": med[name], "in_gradients": med[name] / med["gradient"],
             "first_product_seconds": first[name], "max_rel_deviation": error[name],
             "engine": engines.get(name),
             "kept_mib": ops[engines[name]].kept_bytes / MIB if name in engines else None}
            for name in products]
    return {"n_params": ops["rebuild"].n_params, "N": len(x), "batch_size": batch_size, "rounds": rounds,
            "gradient_seconds": med["gradient"], "rows": rows, "curvlinops": cl is not None,
            "target_hvp_in_gradients": TARGET_HVP_IN_GRADIENTS}


def format_costs(costs: dict) -> str:
    head = f"{'operator':<18} | {'s/product':>9} {'gradients':>9} | {'first s':>7} | {'kept MiB':>8} | {'max dev':>8}"
    lines = [f"One Hessian-vector product, {costs['n_params']:,} parameters, N = {costs['N']}, batches of "
             f"{costs['batch_size']} (median of {costs['rounds']} interleaved rounds; one gradient "
             f"{costs['gradient_seconds']:.2f} s)", head, "-" * len(head)]
    for r in costs["rows"]:
        kept = "-" if r["kept_mib"] is None else f"{r['kept_mib']:.0f}"
        lines.append(f"{r['operator']:<18} | {r['seconds']:>9.2f} {r['in_gradients']:>9.2f} | "
                     f"{r['first_product_seconds']:>7.2f} | {kept:>8} | {r['max_rel_deviation']:>8.1e}")
    if not costs["curvlinops"]:
        lines.append("curvlinops not importable: `make bench-curvlinops` installs it beside the project and runs this")
    return "\n".join(lines)


def trained_large_mlp(n: int, widths: tuple, epochs: int, seed: int, log=print):
    """(model, x, y): ``models.mlp(widths)`` trained ``epochs`` by the study's recipe on the first n MNIST images."""
    x, y = data.training_subset("mnist", n, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.mlp(widths)
    t0 = time.perf_counter()
    recipe.train(model, x, y, epochs=epochs, seed=seed, progress=False)
    log(f"mlp 784-{'-'.join(map(str, widths))}-10 ({models.n_params(model):,} parameters) trained "
        f"{epochs} epoch(s) on {n} MNIST images in {time.perf_counter() - t0:.0f} s")
    return model, x, y


def run_engine(engine: str, model, x, y, k: int, tol: float, probes: int, batch_size: int, seed: int,
               log=print, method: str = DEFAULT_METHOD) -> dict:
    """Top-k eigenpairs (``top_eigenpairs(method=method)``) and a trace with one operator: seconds, products and
    the peak memory of each phase."""
    op = build_operator(engine, model, x, y, batch_size)
    n = op.n_params
    with PeakMemory() as mem_top:
        top = hessian.top_eigenpairs(op, k, tol=tol, seed=seed, method=method)
    log(f"  {engine}: top-{k} ({method}) in {top.seconds:.0f} s, {top.hvp_count} products, max residual "
        f"{float(top.residuals.max()):.1e}, peak RSS {mem_top.peak / MIB:.0f} MiB")
    del top.eigenvectors
    with PeakMemory() as mem_tr:
        tr = hessian.trace(op, n_probes=probes, seed=seed)
    log(f"  {engine}: trace {tr.estimate:.4g} +- {tr.stderr:.2g} in {tr.seconds:.0f} s, peak RSS "
        f"{mem_tr.peak / MIB:.0f} MiB")
    products = top.hvp_count + tr.hvp_count
    return {
        "engine": engine, "method": method, "n_params": n, "N": len(x), "batch_size": batch_size, "k": k, "tol": tol,
        "eigenvalues": top.eigenvalues.tolist(), "max_residual": float(top.residuals.max()),
        "top_hvps": top.hvp_count, "top_seconds": top.seconds,
        "trace": tr.estimate, "trace_stderr": tr.stderr, "trace_probes": probes, "trace_seconds": tr.seconds,
        "seconds_per_product": (top.seconds + tr.seconds) / products,
        "rss_before_mib": mem_top.before / MIB, "top_peak_mib": mem_top.peak / MIB,
        "top_growth_mib": (mem_top.peak - mem_top.before) / MIB,
        "top_growth_vectors": (mem_top.peak - mem_top.before) / (8 * n),
        "trace_peak_mib": mem_tr.peak / MIB, "trace_growth_mib": (mem_tr.peak - mem_tr.before) / MIB,
        "peak_method": mem_top.method, "torch_threads": torch.get_num_threads(),
        "kept_mib": getattr(op, "kept_bytes", 0) / MIB, "engine_used": op.engine,
    }


def format_rows(rows: list[dict]) -> str:
    head = (f"{'engine':<10} {'method':<13} | {'n_params':>10} {'N':>5} | {'top-k':>5} {'hvps':>5} {'s':>7} {'res':>8} "
            f"| {'trace':>9} {'s':>6} | {'s/hvp':>6} | {'peak MiB':>8} {'growth':>7} {'(8n)':>5} {'target':>6}")
    lines = ["Hessian engine at scale (top-k by the method, Hutchinson trace; peak = resident memory of the top-k "
             "phase, growth over the RSS before it, also in float64 vectors of length n_params, target 2k + 4 + kept)",
             head, "-" * len(head)]
    for r in rows:
        target = 2 * r["k"] + 4 + r["kept_mib"] * MIB / (8 * r["n_params"])
        lines.append(
            f"{r['engine']:<10} {r['method']:<13} | {r['n_params']:>10,} {r['N']:>5} | {r['k']:>5} "
            f"{r['top_hvps']:>5} "
            f"{r['top_seconds']:>7.0f} {r['max_residual']:>8.1e} | {r['trace']:>9.4g} {r['trace_seconds']:>6.0f} | "
            f"{r['seconds_per_product']:>6.1f} | {r['top_peak_mib']:>8.0f} {r['top_growth_mib']:>7.0f} "
            f"{r['top_growth_vectors']:>5.1f} {target:>6.1f}")
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
    parser.add_argument("--method", choices=SOLVERS, default=DEFAULT_METHOD,
                        help="top-k solver of every engine's row: thick-restart (lib.core.hessian.lanczos, memory "
                             "O(k) vectors of the model's dtype; default) or lanczos (ARPACK)")
    parser.add_argument("--costs-only", action="store_true", help="only the product-cost rows (product_costs)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the product-cost rows")
    parser.add_argument("--model", choices=COST_MODELS, default="mlp",
                        help="mlp: the MLP of --widths, trained; cnn: the study's CNN and vit: a TinyViT (dim 128, "
                             "4 heads), seed-0 initialisations, for the product-cost rows")
    args = parser.parse_args(argv)
    n = args.n or (200 if args.quick else 2000)
    widths = tuple(args.widths or ((300, 300) if args.quick else (3000, 3000)))
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.model == "mlp":
        model, x, y = trained_large_mlp(n, widths, args.epochs, args.seed, log=print)
    else:
        model, x, y = cost_model(args.model, n, args.seed)
    rows = [] if args.costs_only or args.model != "mlp" else [
        run_engine(e, model, x, y, args.k, args.tol, args.probes, args.batch_size, args.seed, log=log,
                   method=args.method)
        for e in args.engines]
    if rows:
        print(format_rows(rows), flush=True)
    # after the solver rows: their memory is measured in a process that has not yet held the cost rows' operators
    costs = product_costs(model, x, y, args.batch_size, rounds=args.rounds, seed=args.seed, log=log)
    costs["model"] = args.model
    print(format_costs(costs), flush=True)
    params = {"n": n, "widths": list(widths), "k": args.k, "tol": args.tol, "probes": args.probes,
              "batch_size": args.batch_size, "epochs": args.epochs, "seed": args.seed, "engines": args.engines,
              "rounds": args.rounds, "costs_only": args.costs_only, "model": args.model, "method": args.method}
    ResultStore("bench").save("bench", result_name(args.model, args.quick, args.costs_only),
                              {"rows": rows, "costs": costs}, params, ext="json", overwrite=True,
                              seconds=sum(r["top_seconds"] + r["trace_seconds"] for r in rows))
    return 0


def result_name(model: str, quick: bool = False, costs_only: bool = False) -> str:
    """The name under ``results/bench/bench/`` of one run of this module."""
    return ("large_model" + ("" if model == "mlp" else f"_{model}") + ("_quick" if quick else "")
            + ("_costs" if costs_only or model != "mlp" else ""))


def cost_model(kind: str, n: int, seed: int):
    """(model, x, y) of the cost rows: the study's CNN or a TinyViT (dim 128, 4 heads, patches of 7) at its seed-0
    initialisation, on the first n MNIST images."""
    x, y = data.training_subset("mnist", n, seed)
    if kind == "cnn":
        return models.build("cnn", seed), x, y
    return build_task_model("vit", (1, 28, 28), 10, seed, dim=128, heads=4), x.reshape(-1, 1, 28, 28), y


if __name__ == "__main__":
    raise SystemExit(main())
