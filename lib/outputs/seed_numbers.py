"""The paper's numbers of the seed study (notebook 05's ``seed_study`` table): K's variance split into seed, order
and Monte Carlo, the new-seed interval and its leave-one-seed-out coverage next to a one-seed order range's, and
how well the loss-gap sigma is determined. ``seed_numbers(store)`` returns ``{macro: value string}``."""
from __future__ import annotations

from lib.outputs.latex import fmt, fmt_k, macro, pct
from lib.records.convergence import ANALYSIS, load_table

#: the study's two scales and their macro tags
SCALE_TAGS = {"sigma": "Fixed", "gap": "Gap"}


def seed_numbers(store) -> dict:
    """Macros ``\\Seed...`` and ``\\GapSigma...`` (percentages without the sign); empty when the table is absent
    (an older results folder)."""
    rows = load_table(store, "seed_study") if store.meta(ANALYSIS, "seed_study") else []
    out: dict[str, str] = {}
    if not rows:
        return out
    for r in [r for r in rows if r["scale"] in SCALE_TAGS]:
        tag = SCALE_TAGS[r["scale"]]
        out[macro("seed", "study", "seeds")] = fmt(int(r["n_seeds"]))
        out[macro("seed", "study", "orders")] = fmt(int(r["n_orders"]))
        out[macro("seed", "study", "N")] = fmt(int(r["N"]))
        out[macro("seed", "study", "thetas")] = fmt(int(r["thetas"]))
        out[macro("seed", "study", "k", "ref")] = fmt(int(r["k_ref"]))
        out[macro("seed", "study", "level")] = pct(r["level"])
        out[macro("seed", "threshold", tag)] = fmt(r["threshold"], 2)
        out[macro("seed", "K", "median", tag)] = fmt_k(r["K_median"])
        out[macro("seed", "censored", tag)] = fmt(int(r["censored"]))
        for part in ("order", "seed", "mc"):
            key = "monte_carlo" if part == "mc" else part
            out[macro("seed", "share", part, tag)] = pct(r[f"share_{key}"])
        out[macro("seed", "sd", "total", tag)] = fmt(r["var_total"] ** 0.5, 2)
        out[macro("seed", "interval", "low", tag)] = fmt_k(r["interval_low"])
        out[macro("seed", "interval", "high", tag)] = fmt_k(r["interval_high"])
        out[macro("seed", "loso", "new", tag)] = pct(r["loso_new_seed"])
        out[macro("seed", "loso", "order", tag)] = pct(r["loso_order_range"])
    gap = next((r for r in rows if r["scale"] == "gap_sigma"), None)
    if gap:
        out[macro("gap", "sigma", "draws")] = fmt(int(gap["gap_thetas"]))
        out[macro("gap", "sigma", "repeats")] = fmt(int(gap["repeats"]))
        out[macro("gap", "sigma", "rel", "se", "median")] = pct(gap["rel_se_median"])
        out[macro("gap", "sigma", "rel", "se", "max")] = pct(gap["rel_se_max"])
        out[macro("gap", "sigma", "larger", "draws")] = fmt(int(gap["larger_draws"]))
        out[macro("gap", "sigma", "reference", "draws")] = fmt(int(gap["reference_draws"]))
        out[macro("gap", "sigma", "rel", "se", "larger", "median")] = pct(gap["rel_se_larger_median"])
        out[macro("gap", "sigma", "vs", "reference", "max")] = pct(gap["pipeline_vs_reference_max"])
        out[macro("gap", "sigma", "K", "change", "median")] = pct(gap["k_change_at_1se_median"])
        out[macro("gap", "sigma", "K", "change", "max")] = pct(gap["k_change_at_1se_max"])
        out[macro("gap", "sigma", "seed", "cv")] = pct(gap["sigma_gap_between_seeds_cv"])
    return out
