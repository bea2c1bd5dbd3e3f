"""All benchmarks in one run, ending with one table of measured ratios against their targets.

    python -m bench            # N = 10,000 MNIST images (make bench): 7 min on this 2-core CPU, 12 min under load
    python -m bench --quick    # N = 1,000, k = 1 and 4, small memory run: a smoke run of the code, 30 s (6 min
                               # under load); its ratios are printed but not judged (small N: overheads dominate)
    python -m bench --threads 1 --skip solvers,memory    # what to leave out; torch intra-op threads

Rows (one table, ``measured / target`` and whether it is met; ``target`` is an upper bound for costs and a lower
bound for speed-ups):

* issue 16, deliverables 1-4 (``bench.cost_bench``, ``bench.pyhessian_bench``): one Hessian-vector product in
  forward passes (mlp2, CNN; <= 3), the CNN's forward in mlp2 forwards (<= 2), ``delta_curve`` seconds per theta in
  forward passes (mlp1, mlp2, CNN; <= 1), PyHessian 0.1's wall time over ours for the top-10 eigenpairs at max
  residual <= 1e-3 (>= 10); beside each product row, the product's multiply-adds with every forward value
  kept, in forward passes (``lib.core.training.models.hvp_multiply_adds``), and the measured product over that
  count (<= 1.25: the product runs at the forward's speed per multiply-add, within 25 %);
* the solver comparison (``bench.hessian_bench``: power / Lanczos products at equal residual, one product in
  gradients) and the Monte-Carlo memory and closed-form rows (``bench.montecarlo_bench``);
* training (``bench.train_bench``, informational: no target): ``lib.core.training.recipe``'s fused-Adam, channels-last
  trainer over the textbook loop, and two one-thread trainings side by side (``common.workers = 2``) over one
  two-thread training, for the CNN and mlp2;
* the trace (``bench.trace_bench``, informational): error per product (sd over seeds x sqrt(products)) of
  Hutchinson, Hutch++ and deflation by the solvers section's top-32 eigenpairs, 30 products each, on mlp2;
* the public operator (``bench.large_model``, each model in a fresh process so its peak memory is its own): one
  product of ``BatchedHessianOperator`` with the engine "auto" picks, in full-data gradients (<= 2), next to its
  other engines and curvlinops 3.0.1 when importable (``make bench-curvlinops``), on the 11.4M-parameter MLP (2,000
  MNIST images, batches of 250), the study's CNN and a TinyViT (dim 128); and the MLP's top-10 eigenpairs by
  the thick-restart Lanczos (``top_eigenpairs(method="thick-restart")``) in seconds (<= 751 / 3) and their peak
  memory growth in float64 vectors of n_params (<= 2k + 4 plus the kept state).

mlp2 is the paper's trained network (``results/paper/train/mnist_mlp2_s0`` when present with the same N, else
trained here with the paper recipe, 10 epochs; 1 epoch with ``--quick``); mlp1 and the CNN are seed-0
initialisations (training barely moves their costs; mlp2's product skips the trained network's ReLU units that are
inactive on a whole chunk). Every ratio is measured within this run (interleaved repeats,
medians), so a busy machine slows both sides alike; the load average before and after is recorded. On a shared
machine 2-thread timings of many small operations (the CNN) are erratic: idle OpenMP threads spin and take the core
the other thread needs (load average 5: CNN forward 10x mlp2's instead of 3x); ``OMP_WAIT_POLICY=PASSIVE`` cures
that under load but costs ~2x on a quiet machine (thread wake-ups), so the bench leaves torch's defaults alone.
The rows, their details and the run's parameters go to ``results/bench/bench/{full,quick}.json``
(``ResultStore("bench")``, with provenance) for the paper to read.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from bench import (
    cost_bench,
    hessian_bench,
    large_model,
    montecarlo_bench,
    pyhessian_bench,
    trace_bench,
    train_bench,
)
from lib.infra import data
from lib.infra.results import ResultStore

#: one exact product's time over its kept-state multiply-adds, both in the pipeline's forward passes (issue 31)
TARGET_HVP_OVER_ARITHMETIC = 1.25
SECTIONS = ("costs", "pyhessian", "solvers", "trace", "montecarlo", "memory", "training", "api")


def _row(measure: str, value, target, kind: str | None, details: dict | None = None) -> dict:
    """One summary row; ``kind`` "max" (value <= target), "min" (value >= target) or None (informational)."""
    if kind is None or value is None:
        ok, ratio = None, None
    else:
        ratio = value / target
        ok = value <= target if kind == "max" else value >= target
    return {"measure": measure, "value": value, "target": target, "kind": kind, "ratio": ratio, "ok": ok,
            **(details or {})}


def summary_rows(costs: list[dict], pyh: dict | None, hess: list[dict], mc: list[dict],
                 judged: bool = True, training: list[dict] | None = None,
                 trace: list[dict] | None = None) -> list[dict]:
    """The summary table's rows; ``judged=False`` (quick runs) keeps measured / target but leaves "met" empty."""
    rows = _summary_rows(costs, pyh, hess, mc) + [_row(r["measure"], r["value"], r.get("target"), r.get("kind"))
                                                  for r in training or []]
    rows += [_row(r["measure"], r["value"], None, None) for r in trace_bench.summary_rows(trace or [])]
    if not judged:
        for r in rows:
            r["ok"] = None
    return rows


def _summary_rows(costs, pyh, hess, mc) -> list[dict]:
    rows = []
    for r in costs:
        rows.append(_row(r["measure"], r["value"], r["target"], r["kind"]))
        if "arithmetic" in r:          # an exact product at the forward's speed per multiply-add, no unit skipped
            kept = r["arithmetic"]["kept_in_forwards"]
            rows.append(_row(f"one HVP / one forward in multiply-adds, {r['model']} (every forward value kept)",
                             kept, None, None))
            rows.append(_row(f"one HVP / its kept-state multiply-adds, in the pipeline's forwards, {r['model']}",
                             r["value"] / kept, TARGET_HVP_OVER_ARITHMETIC, "max"))
    if pyh is not None:
        rows.append(_row(pyh["measure"], pyh["value"], pyh["target"], "min" if pyh["ok_residuals"] else None))
    for r in hess:
        if r["k"] is None:
            rows.append(_row("one HVP in full-data gradients (mlp2)", r["hvp_in_gradients"],
                             hessian_bench.TARGET_HVP_IN_GRADIENTS, "max"))
        else:
            rows.append(_row(f"power / Lanczos products to residual 1e-3, k = {r['k']} (mlp2)", r["hvp_ratio"],
                             hessian_bench.TARGET_PRODUCT_RATIO if r["k"] >= 10 else None,
                             "min" if r["k"] >= 10 else None))
    for r in mc:
        if "in_mc_thetas" in r:
            rows.append(_row(f"{r['measure']} in MC thetas", r["in_mc_thetas"],
                             montecarlo_bench.TARGET_QK_IN_THETAS, "max"))
        elif "naive_TxN_float64_mib" in r:
            rows.append(_row(f"delta_curve peak RSS growth T={r['runs'][-1]['n_samples']} minus "
                             f"T={r['runs'][0]['n_samples']}, N={r['runs'][-1]['N']} (MiB)",
                             r["difference_mib"], 0.05 * r["naive_TxN_float64_mib"], "max"))
    return rows


class SectionClock:
    """Wall seconds of each section of one run (logged as they end, saved with the run)."""

    def __init__(self, log=print):
        self.log, self.seconds, self._t = log, {}, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._t
        self._t = now
        self.log(f"[bench] section {name}: {self.seconds[name]:.0f} s")


def api_runs(quick: bool, log=print) -> list[dict]:
    """``bench.large_model`` on the 11.4M MLP (product costs, top-10, memory), the study's CNN and a TinyViT (product
    costs), each in its own process (so its peak memory is its own); their saved payloads, with the model named."""
    runs = [("mlp", []), ("cnn", ["--model", "cnn"]), ("vit", ["--model", "vit"])]
    out = []
    for model, extra in runs:
        argv = [sys.executable, "-m", "bench.large_model", "--rounds", "3", "--probes", "2", *extra]
        if quick:
            argv += ["--quick"] if model == "mlp" else ["--n", "200"]
        log(f"api: {' '.join(argv[1:])}")
        subprocess.run(argv, check=True)
        res = ResultStore("bench").load("bench", large_model.result_name(model, quick and model == "mlp"))
        out.append({"model": model, **res.payload})
    return out


def api_rows(api: list[dict], judged: bool = True) -> list[dict]:
    """Summary rows of ``api_runs``: per model, each operator's product in gradients (the engine "auto" picks
    against ``large_model.TARGET_HVP_IN_GRADIENTS``, the others informational); the MLP's top-k seconds and memory."""
    rows = []
    for run in api:
        c = run["costs"]
        label = f"{c['n_params'] / 1e6:.1f}M MLP" if run["model"] == "mlp" else f"{run['model']}, {c['n_params']:,}"
        for i, r in enumerate(c["rows"]):
            rows.append(_row(f"public operator: one HVP in gradients, {label}, {r['operator']}", r["in_gradients"],
                             large_model.TARGET_HVP_IN_GRADIENTS if i == 0 else None, "max" if i == 0 else None))
        for r in run["rows"]:
            k, n = r["k"], r["n_params"]
            label_k = f"{label}, {r.get('method', 'lanczos')}"       # runs saved before the field were ARPACK's
            rows.append(_row(f"public operator: top-{k} seconds, {label_k}", r["top_seconds"],
                             large_model.TARGET_TOP10_SECONDS if k == 10 else None, "max" if k == 10 else None))
            kept = r.get("kept_mib", 0) * 2 ** 20 / (8 * n)
            rows.append(_row(f"public operator: top-{k} peak RSS growth in 8n-byte vectors (target 2k+4 + kept "
                             f"{kept:.1f}), {label_k}", r["top_growth_vectors"], 2 * k + 4 + kept, "max"))
    if not judged:
        for r in rows:
            r["ok"] = None
    return rows


def format_summary(rows: list[dict], header: str = "") -> str:
    width = max(len(r["measure"]) for r in rows)
    head = f"{'measure':<{width}}  {'measured':>9}  {'target':>10}  {'measured/target':>15}  met"
    lines = ["", "Benchmark summary: every ratio measured in this run" + (f" ({header})" if header else ""), head,
             "-" * len(head)]
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.3g}"
        if r["target"] is None:
            target = "-"
        else:
            target = ("<= " if r["kind"] == "max" else ">= " if r["kind"] == "min" else "") + f"{r['target']:.3g}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        lines.append(f"{r['measure']:<{width}}  {value:>9}  {target:>10}  {ratio:>15}  {met}")
    lines.append("measured/target: <= 1 meets an upper bound (costs), >= 1 a lower bound (speed-ups); met '-': not "
                 "judged (no target, or a --quick run)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out: {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(SECTIONS):
        parser.error(f"unknown sections {sorted(skip - set(SECTIONS))}; choose from {list(SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    n = args.n or (1000 if args.quick else 10_000)
    x, y = data.training_subset("mnist", n, 0)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    model, source = pyhessian_bench.trained_mlp2(x, y, n, args.quick, log)
    print(f"N = {n} MNIST images; mlp2: {source}; torch threads {torch.get_num_threads()}; load average "
          f"{load_before[0]:.1f}", flush=True)
    clock = SectionClock(log)
    costs = [] if "costs" in skip else cost_bench.run(model, x, y, args.quick, log=log)
    clock.lap("costs")
    pyh = None if "pyhessian" in skip else pyhessian_bench.run(model, x, y, k=10, log=log)
    clock.lap("pyhessian")
    pairs = {}     # k -> the solvers section's Lanczos eigenpairs, deflated by the trace section
    hess = [] if "solvers" in skip else hessian_bench.run(model, x, y, ks=(1, 4) if args.quick else (1, 10, 32),
                                                          log=log, keep=pairs)
    clock.lap("solvers")
    if hess:
        print(hessian_bench.format_table(hess, 1e-3), flush=True)
    trace = [] if "trace" in skip else trace_bench.run(
        model, x, y, pairs.get(max(pairs)) if pairs else None, k=trace_bench.QUICK_K if args.quick else trace_bench.K,
        seeds=trace_bench.QUICK_SEEDS if args.quick else trace_bench.SEEDS, log=log)
    clock.lap("trace")
    if trace:
        print(trace_bench.format_table(trace), flush=True)
    mc = []
    if "montecarlo" not in skip:
        theta = next((r for r in costs if r["measure"].startswith("delta_curve") and ", mlp2 " in r["measure"]),
                     None)
        seconds = theta["seconds_per_theta"] if theta else None
        mc.append(montecarlo_bench.quadratic_cost(model, x, y, 10, 0.1, "auto", seconds))
        if seconds is None:
            mc[-1].pop("ok", None)
    if "memory" not in skip:
        memory = {"n": 5000, "samples": (8, 32)} if args.quick else {}
        mc.append(montecarlo_bench.memory_scaling(log=log, **memory))
    clock.lap("montecarlo and memory")
    if mc:
        print(montecarlo_bench.format_table(mc), flush=True)
    training = [] if "training" in skip else train_bench.run(args.quick, log=log)
    clock.lap("training")
    api = [] if "api" in skip else api_runs(args.quick, log=log)
    clock.lap("api")
    rows = summary_rows(costs, pyh, hess, mc, judged=not args.quick, training=training, trace=trace) + api_rows(
        api, judged=not args.quick)
    load_after = os.getloadavg()
    minutes = (time.perf_counter() - t_start) / 60
    print(format_summary(rows, f"N = {n}, {torch.get_num_threads()} torch threads, OMP_WAIT_POLICY="
                               f"{os.environ.get('OMP_WAIT_POLICY')}, load average {load_before[0]:.1f} -> "
                               f"{load_after[0]:.1f}, {minutes:.1f} min"))
    params = {"n": n, "quick": args.quick, "threads": torch.get_num_threads(), "skip": sorted(skip),
              "mlp2": source, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    # a run that skipped sections is kept apart: it must not replace the one-run table of a complete run
    name = ("quick" if args.quick else "full") + ("_skip_" + "_".join(sorted(skip)) if skip else "")
    ResultStore("bench").save("bench", name,
                              {"summary": rows, "costs": costs, "pyhessian": pyh, "hessian": hess, "mc": mc,
                               "training": training, "trace": trace, "api": api,
                               "load_average": [load_before, load_after], "minutes": minutes,
                               "section_seconds": clock.seconds},
                              params, ext="json", seconds=minutes * 60, overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
