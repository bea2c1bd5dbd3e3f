"""Every predictor of the prediction benchmark on one (n0, eps), its scores, and the pre-registered decision.

Input: one row per task with its family, size grid, pool size, resolved target (or None) and what its pilot
measured (``pilot_rows`` in ``lib.stages.prediction`` builds them). Predictors (all predict the same quantity: the
smallest grid size n with acc(n) >= acc(n_max) - eps; each point and interval is snapped up to the task's grid):

* ``constant``: the geometric mean of the other families' resolved targets;
* ``power_law``: the pilot's weighted power law a n^-b + c (interval: parametric bootstrap);
* ``high_shot_power_law``: the same fitted only to the pilot's upper sizes (>= n0 / 8 of its training pool), the
  high-shot regime of Jain et al.'s (2023) piecewise power law, without their meta-learned parameters;
* ``landscape_sigma`` / ``landscape_gap``: K(Delta*) of the pilot's own V-bar (at the fixed sigma / at the pilot's
  loss-gap sigma) in the closed form k (k + 1) = V-bar N / ((N - 1) Delta*), Delta* the geometric mean of the other
  families' calibration thresholds (the Delta at which each resolved task's own pilot gives its target);
* ``power_law_recalibrated``: log n* regressed on the power law's log n over the other families (the control
  for a combination);
* ``combination``: log n* regressed on the power law's log n and the landscape's log sqrt(V-bar_gap).

Calibrated predictors (constant, landscape, recalibrated, combination) are fitted leave-one-family-out on resolved
tasks only, with intervals from the calibration tasks' leave-one-out residuals. A predictor without a point for a
task (a failed fit, no loss gap) is scored at the pool size n_max with no interval (``fallback``).

``DECISION`` is the rule fixed before the paper-profile numbers were computed (docs/sample_size.md).
"""
from __future__ import annotations

import math

import numpy as np

from lib.core.sample_size.prediction import (
    apply_calibration,
    calibrated,
    delta_for_target,
    fit_calibration,
    k_closed,
    score,
    snap,
)

__all__ = ["PREDICTORS", "DECISION", "HIGH_SHOT", "predict_tasks", "decide", "fit_shipped_calibration", "landscape_n",
           "nearest_calibration", "apply_shipped_calibration"]

#: a pilot's high-shot regime: its sizes >= this fraction of its training pool
HIGH_SHOT = 1 / 8

PREDICTORS = ("constant", "power_law", "high_shot_power_law", "landscape_sigma", "landscape_gap",
              "power_law_recalibrated", "combination")

DECISION = ("The landscape helps if, at the primary eps and the first pilot size, over the resolved tasks with "
            "calibration held out by family, landscape_gap has a smaller median |log2(predicted / target)| than "
            "both constant and power_law, and a one-sided paired Wilcoxon signed-rank test of its errors gives "
            "p < 0.05 against each. It adds to learning curves if combination beats power_law_recalibrated by the "
            "same rule. Otherwise neither is claimed.")


def _log(v) -> float:
    return math.log(v) if v is not None and v > 0 else float("nan")


def landscape_n(vbar, N, delta_triple) -> tuple | None:
    """(point, low, high) sizes of K(Delta) for a (Delta, Delta_low, Delta_high) triple (a larger Delta gives a
    smaller K, so the interval's ends swap)."""
    if vbar is None or delta_triple is None:
        return None
    d, d_lo, d_hi = delta_triple
    return k_closed(vbar, N, d), k_closed(vbar, N, d_hi), k_closed(vbar, N, d_lo)


#: the calibrated landscape predictors and the V-bar each reads
LANDSCAPE = {"landscape_sigma": "vbar_sigma", "landscape_gap": "vbar_gap"}


def _calibration_features(rows: list[dict]) -> dict:
    """Per calibrated predictor, its log-scale features (n_rows, p): none for the constant and the landscape
    thresholds, the power law's log n, and that with log sqrt(V-bar_gap) for the combination."""
    pl = np.array([_log(r["power_law"][0]) for r in rows])
    gap = np.array([0.5 * _log(r["vbar_gap"]) for r in rows])
    none = np.empty((len(rows), 0))
    return {"constant": none, **{name: none for name in LANDSCAPE}, "power_law_recalibrated": pl[:, None],
            "combination": np.column_stack([pl, gap])}


def _calibration_targets(rows: list[dict]) -> dict:
    """Per calibrated predictor, what it is fitted to: log n* (NaN where unresolved), or for a landscape predictor
    log Delta*, the threshold at which the task's own pilot V-bar gives its target (NaN where either is missing)."""
    log_t = np.array([_log(r["target"]) for r in rows])
    out = {"constant": log_t, "power_law_recalibrated": log_t, "combination": log_t}
    for name, key in LANDSCAPE.items():
        out[name] = np.array([_log(delta_for_target(r[key], r["N"], r["target"]))
                              if r["target"] is not None and r[key] is not None else float("nan") for r in rows])
    return out


def predict_tasks(rows: list[dict], level: float = 0.9) -> dict:
    """{'tasks', 'task_families', 'targets' (None: unresolved), 'predictions': per task {predictor: {point, low,
    high, raw, fallback}}, 'scores': per predictor (over the
    resolved tasks), 'families': per family {predictor: median |log2 error|}, 'n_resolved', 'n_unresolved'}."""
    resolved = np.array([r["target"] is not None for r in rows])
    fam = np.array([r["family"] for r in rows])
    targets, features = _calibration_targets(rows), _calibration_features(rows)
    raw: dict[str, list] = {p: calibrated(targets[p], features[p], fam, level) for p in targets}
    raw["power_law"] = [tuple(r["power_law"]) if r["power_law"][0] is not None else None for r in rows]
    raw["high_shot_power_law"] = [tuple(r["high_shot_power_law"]) if r["high_shot_power_law"][0] is not None
                                  else None for r in rows]
    for name, key in LANDSCAPE.items():        # calibrated thresholds Delta* -> K(Delta*) of each task's own V-bar
        raw[name] = [landscape_n(r[key], r["N"], d) for r, d in zip(rows, raw[name])]
    predictions = []
    for i, r in enumerate(rows):
        grid = r["grid"]
        one = {}
        for p in PREDICTORS:
            v = raw[p][i]
            if v is None or not all(math.isfinite(x) for x in v if x is not None):
                one[p] = {"point": int(r["n_max"]), "low": None, "high": None, "raw": None, "fallback": True}
            else:
                one[p] = {"point": snap(v[0], grid), "low": snap(v[1], grid), "high": snap(v[2], grid),
                          "raw": float(v[0]), "fallback": False}
        predictions.append(one)
    idx = np.flatnonzero(resolved)
    targets = [rows[i]["target"] for i in idx]
    scores = {}

    def errors(p):
        return np.abs(np.log2(np.array([predictions[i][p]["point"] for i in idx], float) / np.array(targets, float)))

    if len(idx):
        refs = {"constant": errors("constant"), "power_law": errors("power_law"),
                "power_law_recalibrated": errors("power_law_recalibrated")}
        for p in PREDICTORS:
            s = score([predictions[i][p]["point"] for i in idx], [predictions[i][p]["low"] for i in idx],
                      [predictions[i][p]["high"] for i in idx], targets,
                      {k: v for k, v in refs.items() if k != p})
            s["fallbacks"] = int(sum(predictions[i][p]["fallback"] for i in idx))
            scores[p] = s
    families = {}
    for fname in sorted(set(fam[idx].tolist())):
        members = [j for j, i in enumerate(idx) if fam[i] == fname]
        families[fname] = {"n_tasks": len(members), **{p: float(np.median(np.asarray(scores[p]["errors"])[members]))
                                                       for p in PREDICTORS}}
    return {"tasks": [r["name"] for r in rows], "task_families": fam.tolist(),
            "targets": [r["target"] for r in rows], "predictions": predictions, "scores": scores, "families": families,
            "n_resolved": int(resolved.sum()), "n_unresolved": int((~resolved).sum())}


def _wins(scores: dict, challenger: str, references: tuple) -> bool:
    s = scores[challenger]
    return all(s["median_abs_log2"] < scores[r]["median_abs_log2"] and s["wilcoxon_p"].get(r, 1.0) < 0.05
               for r in references)


def decide(scores: dict) -> dict:
    """The pre-registered decision (``DECISION``) from one (n0, eps) scores table."""
    if not scores:
        return {"landscape_helps": None, "adds_to_learning_curves": None, "rule": DECISION}
    return {"landscape_helps": bool(_wins(scores, "landscape_gap", ("constant", "power_law"))),
            "adds_to_learning_curves": bool(_wins(scores, "combination", ("power_law_recalibrated",))),
            "rule": DECISION}


def fit_shipped_calibration(rows: list[dict], level: float = 0.9) -> dict:
    """The calibration ``lib.api.predict_sample_size`` ships: every resolved task of the benchmark (no holdout)
    for the constant, both landscape thresholds, the recalibrated power law and the combination."""
    res = [r for r in rows if r["target"] is not None]
    targets, features = _calibration_targets(res), _calibration_features(res)
    out = {p: fit_calibration(targets[p], features[p], level) for p in targets}
    out["n_tasks"] = len(res)
    return out


def nearest_calibration(calibration: dict, n0: int, eps: float) -> tuple[str | None, list[str]]:
    """The key ``"n0=...,eps=..."`` of ``calibration`` with the same eps and the n0 nearest in log; notes on what
    differs (None when no entry has this eps)."""
    entries = []
    for key in calibration:
        if key.startswith("n0="):
            a, b = key.split(",")
            entries.append((key, int(a[3:]), float(b[4:])))
    same = [e for e in entries if math.isclose(e[2], eps, rel_tol=1e-9)]
    if not same:
        return None, [f"no shipped calibration for eps = {eps:g} (it has eps {sorted({e[2] for e in entries})}): "
                      "the calibrated predictors are None"]
    key, cal_n0, _ = min(same, key=lambda e: abs(math.log(e[1] / n0)))
    notes = [] if cal_n0 == n0 else [f"calibration fitted with pilots of n0 = {cal_n0}, this pilot has n0 = {n0}"]
    return key, notes


def apply_shipped_calibration(entry: dict | None, row: dict) -> dict:
    """Every predictor's {point, low, high} (sizes, unsnapped; None where unavailable) for one pilot ``row``
    (power_law and high_shot_power_law triples, vbar_sigma, vbar_gap, N) with one calibration entry."""
    def triple(v):
        return dict(zip(("point", "low", "high"), v)) if v is not None and v[0] is not None else \
            {"point": None, "low": None, "high": None}

    def exp3(r):
        return None if r is None else tuple(math.exp(v) for v in r)

    out = {"power_law": tuple(row["power_law"]), "high_shot_power_law": tuple(row["high_shot_power_law"])}
    entry = entry or {}
    x = {p: f[0] for p, f in _calibration_features([row]).items()}
    for p in x:
        out[p] = exp3(apply_calibration(entry.get(p), x[p]))
    for name, key in LANDSCAPE.items():        # the calibrated value is a threshold Delta*: K(Delta*) of this V-bar
        out[name] = landscape_n(row[key], row["N"], out[name])
    return {p: triple(v) for p, v in out.items()}
