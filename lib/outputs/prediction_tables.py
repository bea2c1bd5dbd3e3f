"""The prediction benchmark in the paper: its scores and task tables, its macros, and the calibration the package
ships (``lib/prediction_calibration.json``, read by ``lib.api.predict_sample_size``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lib import REPO_ROOT
from lib.core.sample_size.predictors import PREDICTORS
from lib.infra.results import ResultStore, atomic_write_bytes, provenance
from lib.outputs.latex import fmt, fmt_k, macro, pct, tabular, tex_text
from lib.records.prediction import load_scores, load_task, task_names

CALIBRATION_PATH = REPO_ROOT / "lib" / "prediction_calibration.json"
TEX_PREDICTORS = {"constant": "constant", "power_law": "power law", "high_shot_power_law": "high-shot power law",
                  "landscape_sigma": r"landscape, $\sigma$ fixed", "landscape_gap": r"landscape, loss-gap $\sigma$",
                  "power_law_recalibrated": "power law, recalibrated", "combination": "power law + landscape"}


def _primary(scores: dict) -> tuple[str, dict]:
    key = f"n0={scores['primary']['n0']},eps={scores['primary']['eps']}"
    return key, scores["tables"][key]


def _p(v) -> str:
    return "--" if v is None else (r"$<10^{-3}$" if v < 1e-3 else fmt(v, 2))


def scores_table(store: ResultStore) -> str:
    """Each predictor over the resolved tasks at the primary (n0, eps): median and 90th percentile of
    |log2(predicted / target)|, share within 2x, interval coverage, fallbacks, one-sided Wilcoxon p-values."""
    scores = load_scores(store)
    _, table = _primary(scores)
    rows = []
    for p in PREDICTORS:
        s = table["scores"].get(p)
        if s is None:
            continue
        rows.append([TEX_PREDICTORS[p], fmt(s["median_abs_log2"], 2), fmt(s["p90_abs_log2"], 2),
                     pct(s["within_2x"]), pct(s["coverage"]), str(s["fallbacks"]),
                     _p(s["wilcoxon_p"].get("constant")), _p(s["wilcoxon_p"].get("power_law"))])
    header = ["predictor", r"median $|\log_2|$", r"p90 $|\log_2|$", r"within $2\times$ (\%)", r"coverage (\%)",
              "fallbacks", r"$p$ vs const.", r"$p$ vs PL"]
    return tabular(header, rows, "l" + "r" * 7)


def tasks_table(store: ResultStore) -> str:
    """One row per task: family, model, pool, plateau, target at the primary eps with its bootstrap interval (or
    why it is unresolved), and the primary predictions of the constant, the power law and the landscape."""
    scores = load_scores(store)
    key, table = _primary(scores)
    eps = str(scores["primary"]["eps"])
    rows = []
    for i, name in enumerate(table["tasks"]):
        t = load_task(store, name)["targets"][eps]
        pred = table["predictions"][i]
        target = (f"{fmt_k(t['n'])} ({fmt_k(t['low'])}--{fmt_k(t['high'])})" if t["n"] is not None
                  else {"unresolved": r"$>n_{\max}/4$", "left-censored": r"$\le$ smallest"}[t["status"]])
        rows.append([tex_text(name), tex_text(table["task_families"][i]), fmt_k(load_task(store, name)["n_max"]),
                     pct(t["plateau"]), target, *[fmt_k(pred[p]["point"]) + ("*" if pred[p]["fallback"] else "")
                                                  for p in ("constant", "power_law", "landscape_gap")]])
    header = ["task", "family", r"$n_{\max}$", r"plateau (\%)", r"target $n^*$ (5--95\%)", "const.", "PL",
              "landscape"]
    return tabular(header, rows, "llrrlrrr")


def prediction_numbers(store: ResultStore) -> dict:
    """Macros of the benchmark: counts, the primary scores of every predictor, p-values, the decision."""
    scores = load_scores(store)
    key, table = _primary(scores)
    names = task_names(store)
    records = [load_task(store, n) for n in names]
    out = {macro("pred", "tasks"): str(len(table["tasks"])), macro("pred", "resolved"): str(table["n_resolved"]),
           macro("pred", "unresolved"): str(table["n_unresolved"]),
           macro("pred", "families"): str(len(set(table["task_families"]))),
           macro("pred", "primary", "n0"): fmt(int(scores["primary"]["n0"])),
           macro("pred", "primary", "eps"): fmt(100 * float(scores["primary"]["eps"]), 2),
           macro("pred", "seeds"): str(len(records[0]["accuracy"][0])) if records else "n/a",
           macro("pred", "models"): ", ".join(sorted({r["model"] for r in records}))}
    for p, s in table["scores"].items():
        out[macro("pred", p, "median")] = fmt(s["median_abs_log2"], 2)
        out[macro("pred", p, "ninety")] = fmt(s["p90_abs_log2"], 2)
        out[macro("pred", p, "within")] = pct(s["within_2x"])
        out[macro("pred", p, "coverage")] = pct(s["coverage"])
        for ref, v in s["wilcoxon_p"].items():
            out[macro("pred", p, "p", ref)] = _p(v)
    d = scores["decision"]
    out[macro("pred", "decision")] = ("the landscape beats both the constant and the power law" if d["landscape_helps"]
                                      else "the landscape does not beat both the constant and the power law")
    out[macro("pred", "combination", "decision")] = (
        "adds to the learning curve" if d["adds_to_learning_curves"] else "does not add to the learning curve")
    medians = {p: s["median_abs_log2"] for p, s in table["scores"].items()}
    # ties as printed (two decimals): errors on a grid of ratio 1.25 take few distinct values
    best = [p for p in PREDICTORS if p in medians and round(medians[p], 2) == round(min(medians.values()), 2)]
    out[macro("pred", "best")] = (" and ".join(f"the {TEX_PREDICTORS[p]}" for p in best)
                                  + (" (tied)" if len(best) > 1 else "")) if best else "n/a"
    g, r = table["scores"].get("landscape_gap"), table["scores"].get("power_law_recalibrated")
    p_control = g["wilcoxon_p"].get("power_law_recalibrated", 1.0) if g and r else 1.0
    out[macro("pred", "control", "verdict")] = (
        r"significant at the 5\,\% level" if g and r and g["median_abs_log2"] < r["median_abs_log2"]
        and p_control < 0.05 else r"not significant at the 5\,\% level")
    others = [k for k in scores["tables"] if k != key]
    wins = sum(1 for k in others if scores["tables"][k]["scores"] and _wins(scores["tables"][k]["scores"]))
    out[macro("pred", "secondary", "wins")] = f"{wins} of {len(others)}"
    return out


def _wins(s: dict) -> bool:
    g = s["landscape_gap"]
    return all(g["median_abs_log2"] < s[r]["median_abs_log2"] and g["wilcoxon_p"].get(r, 1) < 0.05
               for r in ("constant", "power_law"))


def write_calibration(store: ResultStore, path: Path = CALIBRATION_PATH) -> Path:
    """Write the calibration of ``store``'s benchmark (every resolved task, each (n0, eps)) with its provenance to
    the file ``lib.api.predict_sample_size`` reads by default."""
    scores = load_scores(store)
    cal = {"source": {"profile": store.profile, "tasks": scores["tasks"], **provenance()}, **scores["calibration"]}
    atomic_write_bytes(path, (json.dumps(cal, indent=1, sort_keys=True, default=_plain) + "\n").encode())
    return path


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
