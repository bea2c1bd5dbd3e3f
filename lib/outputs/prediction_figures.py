"""Figures of the prediction benchmark (notebook 08): one task's curves, and every predictor against the targets."""
from __future__ import annotations

import numpy as np

from lib.core.sample_size.predictors import PREDICTORS
from lib.outputs import plotting

LABELS = {"constant": "constant", "power_law": "power law", "high_shot_power_law": "high-shot power law",
          "landscape_sigma": "landscape (sigma fixed)", "landscape_gap": "landscape (loss-gap sigma)",
          "power_law_recalibrated": "power law, recalibrated", "combination": "power law + landscape"}


def task_curve(task: dict, n0: int):
    """Left: the task's test accuracy against n (mean over seeds, each seed faint), the plateau and the target at
    each eps. Right: the pilot's validation error against n with the fitted power law and the pool size."""
    with plotting.style():
        fig, axes = plotting.figure(2, width=plotting.FULL_WIDTH, aspect=0.7)
        ax, bx = axes[0]
        grid = np.asarray(task["grid"])
        acc = np.asarray(task["accuracy"])
        for s in range(acc.shape[1]):
            ax.plot(grid, acc[:, s], color="0.7", lw=0.6)
        ax.plot(grid, acc.mean(axis=1), color=plotting.PALETTE[0], marker=".", ms=3, label="mean over seeds")
        for i, (eps, t) in enumerate(sorted(task["targets"].items(), key=lambda kv: float(kv[0]))):
            ax.axhline(t["plateau"] - float(eps), color=plotting.PALETTE[i + 1], lw=0.6, ls=":")
            if t["n"] is not None:
                ax.axvline(t["n"], color=plotting.PALETTE[i + 1], lw=0.8,
                           label=f"target, eps = {float(eps) * 100:g} pt: {t['n']:,}")
        ax.set(xscale="log", xlabel="training samples n", ylabel="test accuracy",
               title=f"{task['name']}: learning curve ({acc.shape[1]} seeds)")
        ax.legend(loc="lower right")
        pilot = task["pilots"][str(n0)]
        sizes = np.asarray(pilot["sizes"])
        bx.errorbar(sizes, pilot["error"], yerr=pilot["stderr"], fmt="o", ms=3, label="pilot (validation)")
        fit = pilot["power_law_fit"]
        if fit:
            n = np.geomspace(sizes[0], task["n_max"], 100)
            bx.plot(n, fit["a"] * n ** (-fit["b"]) + fit["c"], color=plotting.PALETTE[1], label="power law")
        bx.plot(grid, 1 - acc.mean(axis=1), color="0.5", lw=0.8, ls="--", label="task (test, not seen)")
        bx.set(xscale="log", yscale="log", xlabel="training samples n", ylabel="error",
               title=f"pilot on the first n0 = {pilot['n0']:,} samples")
        bx.legend(loc="upper right")
        fig.tight_layout()
    return fig


def predicted_vs_target(scores: dict, key: str, predictors=PREDICTORS):
    """Each predictor's point (snapped to the task grid) against the resolved target, log-log, with the 2x band;
    fallbacks (no prediction) are open markers."""
    table = scores["tables"][key]
    with plotting.style():
        cols = 4
        rows = (len(predictors) + cols - 1) // cols
        fig, axes = plotting.figure(cols, rows, width=plotting.FULL_WIDTH, aspect=1.0)
        targets = []
        for i, p in enumerate(predictors):
            ax = axes[i // cols][i % cols]
            pts = [(task_pred[p], t) for task_pred, t in zip(table["predictions"], _targets(scores, key))
                   if t is not None]
            x = np.array([t for _, t in pts], float)
            y = np.array([pp["point"] for pp, _ in pts], float)
            fb = np.array([pp["fallback"] for pp, _ in pts], bool)
            targets += list(x) + list(y)
            ax.loglog(x[~fb], y[~fb], "o", ms=3, color=plotting.PALETTE[i % 8])
            ax.loglog(x[fb], y[fb], "o", ms=3, mfc="none", color=plotting.PALETTE[i % 8])
            s = table["scores"][p]
            ax.set_title(f"{LABELS[p]}\nmedian |log2| {s['median_abs_log2']:.2f}", fontsize=7)
        lim = (min(targets) / 3, max(targets) * 3) if targets else (10, 1e5)
        for i in range(rows * cols):
            ax = axes[i // cols][i % cols]
            if i >= len(predictors):
                fig.delaxes(ax)
                continue
            ax.plot(lim, lim, color="0.3", lw=0.6)
            ax.fill_between(lim, [lim[0] / 2, lim[1] / 2], [lim[0] * 2, lim[1] * 2], color="0.85", lw=0)
            ax.set(xlim=lim, ylim=lim)
            ax.set_xlabel("target n*")
            if i % cols == 0:
                ax.set_ylabel("predicted n")
        fig.suptitle(f"{table['n_resolved']} resolved tasks, pilot n0 = {table['n0']:,}, eps = "
                     f"{100 * table['eps']:g} point(s); open markers: no prediction, scored at the pool size; "
                     "grey: within 2x", fontsize=8)
        fig.tight_layout()
    return fig


def _targets(scores: dict, key: str) -> list:
    return scores["tables"][key].get("targets", [None] * len(scores["tables"][key]["predictions"]))
