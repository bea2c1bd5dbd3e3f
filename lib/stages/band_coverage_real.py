"""Measured simultaneous coverage of the band over k on real Delta_k curves (MLP-1 on the first N MNIST samples).

The synthetic study (``lib.core.sample_size.band_coverage``) draws values with a known mean. Here the values are the
real d_k(theta)^2 = (L_{k+1} - L_k)^2 (w* + P^T theta) of a trained network: MLP-1 trained by the recipe on the first
N samples of the insertion order, P its top-D Hessian eigenvectors there, theta ~ N(0, sigma^2 I_D) at sigma = 1 and
at the loss-gap sigma (where the mean training loss rise equals test loss - training loss).

R replicate curves, each from T fresh thetas in B batches of T / B (``replicate``: the batch means of d_k^2 for
k = 1..N-1 in the given insertion order, their sum over thetas, and the raw values at a few k; nothing else is kept).
The truth is unknown, so each replicate is checked against a leave-one-out reference (``leave_one_out``): for
replicate r the mean of d_k^2 over the other R - 1 replicates' thetas ((R - 1) T thetas, drawn independently of
replicate r's). Replicate r is covered by a construction when its upper edge mean_k + c SE_k is >= the reference at
every k at once (``coverage_cell``). Next to it the tail of d_k^2 over theta at a few k (``tail_statistics``: excess
kurtosis and Hill's index from the top 5 %), set against the synthetic distributions of the table
(``synthetic_tails``). ``python -m lib.stages.band_coverage_real`` prints both tables (docs/sample_size.md, "Real
curves") and writes the result as JSON.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from lib.core.checks import check_choice, check_int, check_number
from lib.core.hessian import HessianOperator, top_eigenpairs
from lib.core.landscape.delta import loss_differences
from lib.core.landscape.sampling import make_sampler
from lib.core.landscape.subspace import SubspaceLosses
from lib.core.sample_size.band_coverage import DISTRIBUTIONS
from lib.core.sample_size.sufficient import BAND_METHODS, GAP_REL_TOL, loss_gap_scale, simultaneous_multiplier
from lib.core.tensors import torch_threads
from lib.core.training import models
from lib.core.training.recipe import evaluate, train
from lib.infra import data
from lib.infra.results import atomic_write_json, provenance

#: the k whose raw d_k^2 are kept for the tail statistics
TAIL_K = (10, 100, 1000)
#: share of the largest order statistics that Hill's estimator uses
HILL_TOP = 0.05
#: offset of the loss-gap search's common draws from the run's seed (as ``lib.stages.monte_carlo.loss_gap_sigma``)
GAP_SEED_OFFSET = 7919


# ------------------------------------------------------------------------------------------ the trained run
def trained_subspace(n_train: int, D: int, *, model: str = "mlp1", dataset: str = "mnist", seed: int = 0,
                     data_seed: int = 0, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3,
                     tol: float = 1e-3) -> dict:
    """``model`` trained by the recipe on the first ``n_train`` samples of the insertion order (``data_seed``), the
    top-D eigenpairs of the Hessian of its training loss on those samples, and its training and test loss.
    Returns {'net', 'x', 'y', 'basis' (D, n_params), 'eigenvalues', 'train_loss', 'test_loss', 'test_accuracy',
    'hvp_count', 'seconds'}."""
    t0 = time.perf_counter()
    x, y = data.training_subset(dataset, n_train, data_seed)
    x_test, y_test = data.load(dataset, "test")
    net = models.build(model, seed)
    train(net, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=False)
    top = top_eigenpairs(HessianOperator(net, x, y), D, tol=tol, seed=seed)
    on_train, on_test = evaluate(net, x, y), evaluate(net, x_test, y_test)
    return {"net": net, "x": x, "y": y, "basis": top.eigenvectors, "eigenvalues": top.eigenvalues.double().numpy(),
            "train_loss": float(on_train["loss"]), "test_loss": float(on_test["loss"]),
            "test_accuracy": float(on_test["accuracy"]), "hvp_count": int(top.hvp_count),
            "seconds": time.perf_counter() - t0}


def loss_gap_sigma(losses: SubspaceLosses, gap: float, eigenvalues, *, n_thetas: int = 64, seed: int = 0,
                   rel_tol: float = GAP_REL_TOL) -> float:
    """The sigma at which the mean training loss rise E_theta L_N(w* + P^T sigma z) - L_N(w*), z ~ N(0, I_D), over
    ``n_thetas`` common draws equals ``gap``: bisection in log sigma from the quadratic guess sqrt(2 gap / sum
    lambda_d), as the pipeline's ``loss_gap_sigma`` (``lib.stages.monte_carlo``)."""
    gap = check_number("gap", gap, gt=0)
    z = make_sampler("gaussian", sigma=1.0).sample(check_int("n_thetas", n_thetas, 1), losses.D, seed=seed)
    base = float(losses(torch.zeros(1, losses.D, dtype=torch.float64)).double().mean())

    def rise(sigma: float) -> float:
        return float(losses(sigma * z).double().mean()) - base

    return loss_gap_scale(rise, gap, float(np.sum(eigenvalues)), rel_tol=rel_tol)


# ------------------------------------------------------------------------------------------ one replicate
def replicate(losses: SubspaceLosses, thetas: torch.Tensor, n_batches: int, *, chunk: int = 128,
              keep_k=TAIL_K) -> dict:
    """One replicate curve from the (T, D) ``thetas``: per-sample losses in chunks of ``chunk`` thetas, d_k^2 of
    ``loss_differences`` (k = 1..N-1, the given order), of which only these are kept: 'batch_means' (n_batches,
    N-1), the means over consecutive batches of T / n_batches thetas; 'sum' (N-1,), the sum over all T thetas;
    'raw' (T, len(keep_k)), d_k^2 of every theta at the k of ``keep_k`` (those <= N-1)."""
    T = int(thetas.shape[0])
    n_batches = check_int("n_batches", n_batches, 1)
    if T % n_batches:
        raise ValueError(f"the number of thetas T={T} must be a multiple of n_batches={n_batches}")
    chunk = check_int("chunk", chunk, 1)
    per_batch = T // n_batches
    N = len(losses.inputs)
    keep = [k for k in keep_k if 1 <= k <= N - 1]
    columns = torch.as_tensor([k - 1 for k in keep], dtype=torch.long)
    batch_sum = torch.zeros(n_batches, N - 1, dtype=torch.float64)
    raw = torch.empty(T, len(keep), dtype=torch.float64)
    for start in range(0, T, chunk):
        th = thetas[start:start + chunk]
        d = loss_differences(losses(th).double().cpu())
        dsq = d.mul_(d)
        batch_sum.index_add_(0, torch.arange(start, start + len(th)) // per_batch, dsq)
        raw[start:start + len(th)] = dsq[:, columns]
        del d, dsq
    return {"batch_means": (batch_sum / per_batch).numpy(), "sum": batch_sum.sum(0).numpy(), "raw": raw.numpy(),
            "keep_k": keep}


def band(batch_means: np.ndarray, method: str, *, level: float = 0.95, n_boot: int = 1000,
         seed: int = 0) -> tuple[float, np.ndarray]:
    """(c, upper edge mean_k + c SE_k) of the band of ``method`` over the (B, M) batch means."""
    X = np.asarray(batch_means, dtype=np.float64)
    c = simultaneous_multiplier(X, level=level, n_boot=n_boot, seed=seed, method=method)
    return c, X.mean(axis=0) + c * X.std(axis=0, ddof=1) / math.sqrt(X.shape[0])


def leave_one_out(sums: np.ndarray, n_thetas: int) -> np.ndarray:
    """(R, M) leave-one-out references from the (R, M) per-replicate sums of d_k^2 over ``n_thetas`` thetas each:
    row r is the mean of d_k^2 over the thetas of every replicate but r."""
    S = np.asarray(sums, dtype=np.float64)
    R = check_int("number of replicates", S.shape[0], 2)
    return (S.sum(axis=0) - S) / ((R - 1) * check_int("n_thetas", n_thetas, 1))


def coverage_cell(uppers: np.ndarray, multipliers, references: np.ndarray) -> dict:
    """Coverage of R replicates: 'covered' (share of rows whose upper edge is >= the reference at every k), its
    binomial 'covered_se', 'median_c', 'median_max_ratio' and 'median_min_ratio' (medians over replicates of
    max_k and min_k of upper / reference; a replicate is covered exactly when its min ratio is >= 1) and the
    per-replicate 'hits', 'c' and 'worst_k' (the k of the min ratio; column j is k = j + 1)."""
    U, ref = np.asarray(uppers, dtype=np.float64), np.asarray(references, dtype=np.float64)
    hits = np.all(U >= ref, axis=1)
    R = len(hits)
    p = float(hits.mean())
    ratio = U / ref
    return {"reps": R, "covered": p, "covered_se": math.sqrt(p * (1 - p) / R),
            "median_c": float(np.median(multipliers)), "median_max_ratio": float(np.median(ratio.max(axis=1))),
            "median_min_ratio": float(np.median(ratio.min(axis=1))), "hits": hits.tolist(),
            "c": [float(c) for c in multipliers], "worst_k": (ratio.argmin(axis=1) + 1).tolist()}


# ------------------------------------------------------------------------------------------ tails
def excess_kurtosis(values) -> float:
    """Sample excess kurtosis m_4 / m_2^2 - 3 (moments about the mean, float64; 0 for Gaussian values)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    c = v - v.mean()
    m2 = float(np.mean(c * c))
    return float(np.mean(c ** 4) / (m2 * m2) - 3.0) if m2 > 0 else float("nan")


def hill_alpha(values, top: float = HILL_TOP) -> float:
    """Hill's tail index alpha from the largest ``top`` share of the values (m = max(2, floor(top n)) order
    statistics above X_(n-m)): 1 / alpha = mean_i log X_(n-i+1) - log X_(n-m). P(X > x) ~ x^-alpha: t(nu)^2 has
    alpha = nu / 2; light tails (Gaussian, chi-square, lognormal) have alpha = infinity, where the estimate is
    finite and grows with n."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = len(v)
    m = max(2, int(check_number("top", top, gt=0, le=0.5) * n))
    if m >= n or v[n - m - 1] <= 0:
        raise ValueError(f"Hill's estimator needs more than {m} values and a positive threshold; got n={n}")
    gamma = float(np.mean(np.log(v[n - m:])) - math.log(v[n - m - 1]))
    return 1.0 / gamma if gamma > 0 else float("inf")


def tail_statistics(values: np.ndarray, top: float = HILL_TOP) -> dict:
    """Excess kurtosis and Hill's alpha of (R, T) values: 'pooled' over all R T values, and 'median' over the R
    rows of T values each (the sample of one replicate curve)."""
    V = np.asarray(values, dtype=np.float64)
    return {"n_pooled": int(V.size), "n_row": int(V.shape[1]),
            "kurtosis_pooled": excess_kurtosis(V), "hill_pooled": hill_alpha(V, top),
            "kurtosis_median": float(np.median([excess_kurtosis(row) for row in V])),
            "hill_median": float(np.median([hill_alpha(row, top) for row in V]))}


def synthetic_tails(reps: int, n_thetas: int, *, seed: int = 0, top: float = HILL_TOP) -> dict:
    """``tail_statistics`` of (reps, n_thetas) draws of every distribution of the synthetic table."""
    rng = np.random.default_rng(seed)
    return {name: tail_statistics(draw(rng, (reps, n_thetas)), top) for name, (draw, _) in DISTRIBUTIONS.items()}


# ------------------------------------------------------------------------------------------ one scale
def measure(losses: SubspaceLosses, sigma: float, *, reps: int = 100, n_thetas: int = 1024, n_batches: int = 32,
            chunk: int = 128, methods=BAND_METHODS, level: float = 0.95, n_boot: int = 1000, seed: int = 0,
            keep_k=TAIL_K, progress: bool = True) -> dict:
    """Simultaneous coverage of each band ``method`` at one sigma: ``reps`` replicates of ``n_thetas`` thetas
    (replicate r draws N(0, sigma^2 I_D) with seed ``seed + 1 + r``; its multiplier's bootstrap uses ``seed + r``),
    each against its leave-one-out reference. Returns {'sigma', 'cells': {method: coverage_cell}, 'tails': {k:
    tail_statistics of the raw d_k^2}, 'reference' (the mean over all thetas), 'reference_rel_se' (its standard
    error over k from the spread of the R replicate means, relative to it: the precision of the references, which
    hold (R - 1) / R of the thetas), 'seconds'}; ``progress`` prints a line every 10 replicates."""
    for m in methods:
        check_choice("method", m, BAND_METHODS)
    reps = check_int("reps", reps, 2)
    sampler = make_sampler("gaussian", sigma=sigma)
    t0 = time.perf_counter()
    sums, raws, uppers, cs = [], [], {m: [] for m in methods}, {m: [] for m in methods}
    keep = list(keep_k)
    for r in range(reps):
        rep = replicate(losses, sampler.sample(n_thetas, losses.D, seed=seed + 1 + r), n_batches, chunk=chunk,
                        keep_k=keep_k)
        keep = rep["keep_k"]
        sums.append(rep["sum"])
        raws.append(rep["raw"])
        for m in methods:
            c, upper = band(rep["batch_means"], m, level=level, n_boot=n_boot, seed=seed + r)
            cs[m].append(c)
            uppers[m].append(upper)
        if progress and ((r + 1) % 10 == 0 or r + 1 == reps):
            print(f"sigma {sigma:.4g}: {r + 1}/{reps} replicates, {time.perf_counter() - t0:.0f} s", flush=True)
    S = np.stack(sums)
    references = leave_one_out(S, n_thetas)
    reference = S.sum(axis=0) / (reps * n_thetas)
    rel_se = (S / n_thetas).std(axis=0, ddof=1) / math.sqrt(reps) / reference
    raw = np.stack(raws)                                      # (R, T, len(keep))
    return {"sigma": float(sigma), "reps": reps, "n_thetas": n_thetas, "n_batches": n_batches, "level": level,
            "n_boot": n_boot, "cells": {m: coverage_cell(np.stack(uppers[m]), cs[m], references) for m in methods},
            "tails": {int(k): tail_statistics(raw[:, :, j]) for j, k in enumerate(keep)},
            "reference": reference, "reference_rel_se": rel_se, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------ tables
def coverage_table(results: list[dict]) -> str:
    """Markdown table: one row per construction and sigma."""
    lines = ["| construction | sigma | replicates | nominal | measured (+- SE) | median c | "
             "median max_k upper / reference |", "|---|---|---|---|---|---|---|"]
    for method in BAND_METHODS:
        for res in results:
            cell = res["cells"].get(method)
            if cell is None:
                continue
            lines.append(f"| {method} | {res['label']} | {cell['reps']} | {res['level']:.2f} | "
                         f"{cell['covered']:.3f} (+- {cell['covered_se']:.3f}) | {cell['median_c']:.2f} | "
                         f"{cell['median_max_ratio']:.2f} |")
    return "\n".join(lines)


def tail_table(results: list[dict], synthetic: dict) -> str:
    """Markdown table of the tail statistics: the real d_k^2 at each kept k and sigma, then the synthetic
    distributions at the same sample sizes."""
    first = next(iter(synthetic.values()))
    lines = [f"| values | excess kurtosis (T = {first['n_row']:,}, median) | excess kurtosis (pooled "
             f"{first['n_pooled']:,}) | Hill alpha (T = {first['n_row']:,}, median) | Hill alpha (pooled "
             f"{first['n_pooled']:,}) |", "|---|---|---|---|---|"]

    def row(name, t):
        return (f"| {name} | {t['kurtosis_median']:.1f} | {t['kurtosis_pooled']:.1f} | {t['hill_median']:.2f} | "
                f"{t['hill_pooled']:.2f} |")

    for res in results:
        for k, t in res["tails"].items():
            name = res["label"] if res.get("scale") == "loss_gap" else f"sigma {res['label']}"
            lines.append(row(f"real, {name}, k = {int(k):,}", t))
    for name, t in synthetic.items():
        lines.append(row(f"synthetic {name}", t))
    return "\n".join(lines)


def _sigma_arg(text: str) -> float | str:
    if text == "gap":
        return text
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a sigma must be > 0 or 'gap', got {text}")
    return value


def main(argv=None) -> dict:
    """Train the run, measure every sigma, print both tables and write the JSON result; returns it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100, help="replicate curves R per sigma")
    parser.add_argument("--thetas", type=int, default=1024, help="thetas T per replicate")
    parser.add_argument("--n", type=int, default=2000, help="training samples N (the first N of the order)")
    parser.add_argument("--D", type=int, default=10, help="top Hessian eigenvectors")
    parser.add_argument("--sigmas", type=_sigma_arg, nargs="+", default=[1.0, "gap"],
                        help="sigmas: numbers and/or 'gap' (the loss-gap sigma)")
    parser.add_argument("--n-batches", type=int, default=32, help="B batch means per replicate")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="model, training, Hessian and theta seed")
    parser.add_argument("--epochs", type=int, default=10, help="recipe epochs (the paper profile's 10)")
    parser.add_argument("--tol", type=float, default=1e-3, help="eigen-solver tolerance")
    parser.add_argument("--gap-thetas", type=int, default=64, help="common draws of the loss-gap sigma search")
    parser.add_argument("--chunk", type=int, default=128, help="thetas per forward chunk")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default="results/band_coverage_real.json", help="JSON result path")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    with torch_threads(args.threads):
        run = trained_subspace(args.n, args.D, seed=args.seed, epochs=args.epochs, tol=args.tol)
        gap = run["test_loss"] - run["train_loss"]
        losses = SubspaceLosses(run["net"], run["x"], run["y"], run["basis"])
        print(f"mlp1 on the first {args.n:,} MNIST samples: train loss {run['train_loss']:.4f}, test loss "
              f"{run['test_loss']:.4f} (accuracy {run['test_accuracy']:.4f}), lambda_1..{args.D} "
              f"{run['eigenvalues'][0]:.3g}..{run['eigenvalues'][-1]:.3g}, {run['seconds']:.0f} s", flush=True)
        results = []
        for s in args.sigmas:
            sigma = (loss_gap_sigma(losses, gap, run["eigenvalues"], n_thetas=args.gap_thetas,
                                    seed=args.seed + GAP_SEED_OFFSET) if s == "gap" else s)
            label = f"loss gap {sigma:.3g}" if s == "gap" else f"{sigma:g}"
            print(f"sigma {label}", flush=True)
            res = measure(losses, sigma, reps=args.reps, n_thetas=args.thetas, n_batches=args.n_batches,
                          n_boot=args.n_boot, level=args.level, seed=args.seed, chunk=args.chunk)
            results.append({"label": label, "scale": "loss_gap" if s == "gap" else "sigma", **res})
        synthetic = synthetic_tails(args.reps, args.thetas, seed=args.seed)
    seconds = time.perf_counter() - t0
    print(f"\nmlp1, N = {args.n:,}, D = {args.D}, R = {args.reps} replicates x T = {args.thetas:,} thetas "
          f"(B = {args.n_batches}), n_boot {args.n_boot}, seed {args.seed}, {seconds:.0f} s in all\n")
    print(coverage_table(results) + "\n")
    for res in results:
        rel, worst = res["reference_rel_se"], {m: c["worst_k"] for m, c in res["cells"].items()}
        print(f"sigma {res['label']}: reference relative SE median {np.median(rel):.4f}, max {np.max(rel):.4f} "
              f"over k; median k of the lowest upper / reference " +
              ", ".join(f"{m} {np.median(w):.0f}" for m, w in worst.items()))
    print()
    print(tail_table(results, synthetic))
    out = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "seconds": seconds,
           "run": {k: run[k] for k in ("train_loss", "test_loss", "test_accuracy", "eigenvalues", "hvp_count",
                                       "seconds")},
           "gap": gap, "results": results, "synthetic_tails": synthetic, "provenance": provenance()}
    atomic_write_json(args.out, out)
    print(f"\nwritten {args.out}")
    return out


if __name__ == "__main__":
    main()
