"""Stage of notebook 08: the prediction benchmark. Does a landscape pilot predict the sample size a task needs?

For each task of ``prediction.tasks`` (``lib.infra.tasks``), one cached record (``results/<profile>/prediction/
<task>.json``): the learning curve on the fine size grid (every size x seed trained at once), its target n*(eps)
with a bootstrap interval over seeds (or why it is unresolved), and per pilot size n0 the pilot's own learning
curve (validated inside the n0), its power-law predictions with bootstrap intervals and its landscape features
(``lib.core.sample_size.pilot``). Then one ``scores`` result: every predictor's point and interval per task and the
scores
table per (n0, eps) (``lib.core.sample_size.predictors``), the pre-registered decision, and the calibration that
``lib.api.predict_sample_size`` ships. Tasks run ``common.workers`` at a time, one line each as it finishes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from lib.core.sample_size.pilot import learning_curve, pilot_estimates
from lib.core.sample_size.prediction import size_grid, target
from lib.core.sample_size.predictors import decide, fit_shipped_calibration, predict_tasks
from lib.core.tensors import torch_threads
from lib.core.training.task_models import build_task_model
from lib.infra.config import Common, Prediction
from lib.infra.results import ResultStore
from lib.infra.tasks import TASKS, task_data
from lib.records.prediction import FOLDER, SCORES, load_task
from lib.stages.base import cached, run_missing

#: the training recipe and record layout of this stage (part of every record's parameters)
RECIPE = "many-models/adam/minibatches-with-replacement/fixed-steps/v2"
#: the version of the predictors and scores (``lib.core.sample_size.predictors``; part of the scores result's
#: parameters)
SCORING = "v2"


def task_params(name: str, section: Prediction, data_seed: int) -> dict:
    """What defines one task's record (its identity in the result store)."""
    s = dataclasses.asdict(section)
    keep = ("steps", "batch_size", "lr", "grid_ratio", "n_min", "max_pool", "plateau_factor", "eps",
            "pilot_sizes", "pilot_folds", "pilot_ratio", "pilot_n_min", "D", "sigma", "n_thetas", "gap_thetas",
            "n_boot", "level", "threads")
    return {"task": TASKS[name].params(), "data_seed": data_seed, "recipe": RECIPE, "seeds": section.n_seeds,
            **{k: s[k] for k in keep}}


def pilot_sizes_for(n_max: int, section_or_params) -> dict:
    """{requested n0: effective n0}: each capped at n_max / plateau_factor (small tasks get smaller pilots)."""
    p = section_or_params if isinstance(section_or_params, dict) else dataclasses.asdict(section_or_params)
    return {int(n0): int(min(n0, n_max // p["plateau_factor"])) for n0 in p["pilot_sizes"]}


def _triples(boot: dict) -> dict:
    return {str(eps): list(v) for eps, v in boot["predictions"].items()}


def _pilot(factory, x, y, n0: int, n_max: int, p: dict, seed: int) -> dict:
    est = pilot_estimates(factory, x, y, n0, n_max, p["eps"], folds=p["pilot_folds"], ratio=p["pilot_ratio"],
                          n_min=p["pilot_n_min"], steps=p["steps"], batch_size=p["batch_size"], lr=p["lr"],
                          n_boot=p["n_boot"], level=p["level"], D=p["D"], sigma=p["sigma"], n_thetas=p["n_thetas"],
                          gap_thetas=p["gap_thetas"], seed=seed)
    pc, pl, lf = est["curve"], est["power_law"], est["landscape"]
    return {"n0": n0, "sizes": list(pc["sizes"]), "accuracy": pc["accuracy"].tolist(), "loss": pc["loss"].tolist(),
            "error": est["error"].tolist(), "stderr": est["stderr"].tolist(), "power_law": _triples(pl),
            "power_law_fit": dataclasses.asdict(pl["law"]) if pl["law"] else None,
            "high_shot_power_law": _triples(est["high_shot_power_law"]), "landscape": lf,
            "cost": {"trainings": len(pc["sizes"]) * p["pilot_folds"], "steps_each": p["steps"],
                     "curve_seconds": pc["seconds"], "landscape_seconds": lf["seconds"]}}


def compute_task(p: dict) -> tuple[dict, dict]:
    """One task's record from its parameters (``task_params``): (payload, summary)."""
    spec = TASKS[p["task"]["name"]]
    d = task_data(spec, p["data_seed"])
    x, y = d["x"][:p["max_pool"]], d["y"][:p["max_pool"]]
    n_max = len(x)

    def factory(seed):
        return build_task_model(spec.model, d["input_shape"], d["n_classes"], seed, **spec.widths)

    sizes = size_grid(n_max, p["n_min"], p["grid_ratio"])
    lc = learning_curve(factory, x, y, d["x_test"], d["y_test"], sizes, p["seeds"], steps=p["steps"],
                        batch_size=p["batch_size"], lr=p["lr"])
    targets = {str(eps): dataclasses.asdict(target(sizes, lc["accuracy"], eps, p["plateau_factor"]))
               for eps in p["eps"]}
    pilots = {str(n0): _pilot(factory, x, y, eff, n_max, p, seed=k)
              for k, (n0, eff) in enumerate(pilot_sizes_for(n_max, p).items())}
    payload = {"name": spec.name, "family": spec.family, "model": spec.model, "source": spec.source,
               "n_max": n_max, "n_test": len(d["y_test"]), "n_classes": d["n_classes"],
               "bayes_accuracy": d["bayes_accuracy"], "grid": sizes.tolist(),
               "accuracy": lc["accuracy"].tolist(), "loss": lc["loss"].tolist(), "targets": targets,
               "pilots": pilots, "curve_seconds": lc["seconds"]}
    summary = {"task": spec.name, "family": spec.family, "model": spec.model, "n_max": n_max,
               "plateau": targets[str(p["eps"][0])]["plateau"],
               **{f"target_{eps}": targets[str(eps)]["n"] for eps in p["eps"]},
               **{f"status_{eps}": targets[str(eps)]["status"] for eps in p["eps"]}}
    return payload, summary


def task_one(store: ResultStore, params: dict) -> dict:
    """One cached task record (computed with ``threads`` intra-op threads); returns its summary."""
    def compute():
        with torch_threads(params["threads"]):
            return compute_task(params)

    summary, skipped = cached(store, FOLDER, params["task"]["name"], params, compute, ext="json")
    if not skipped:                   # one line per task as it finishes (also from a worker process)
        print(f"task {summary['task']:<24} computed in {summary['seconds']:6.1f} s (n_max {summary['n_max']}, "
              f"targets {[summary[k] for k in summary if k.startswith('target_')]})", flush=True)
    return {**summary, "skipped": skipped}


def pilot_rows(records: list[dict], n0: int, eps: float) -> list[dict]:
    """The per-task rows ``lib.core.sample_size.predictors.predict_tasks`` takes, for one requested n0 and one eps."""
    rows = []
    for r in records:
        pilot = r["pilots"][str(n0)]
        lf = pilot["landscape"]
        rows.append({"name": r["name"], "family": r["family"], "grid": r["grid"], "n_max": r["n_max"],
                     "target": r["targets"][str(eps)]["n"], "power_law": pilot["power_law"][str(eps)],
                     "high_shot_power_law": pilot["high_shot_power_law"][str(eps)],
                     "vbar_sigma": lf["vbar_sigma"], "vbar_gap": lf["vbar_gap"], "N": lf["N"]})
    return rows


def compute_scores(records: list[dict], section: Prediction) -> dict:
    """Every predictor on every (n0, eps), the decision at (first n0, primary eps) and the shipped calibration."""
    tables, calibration = {}, {}
    for n0 in section.pilot_sizes:
        for eps in section.eps:
            rows = pilot_rows(records, n0, eps)
            key = f"n0={n0},eps={eps}"
            tables[key] = {"n0": n0, "eps": eps, **predict_tasks(rows, section.level)}
            calibration[key] = fit_shipped_calibration(rows, section.level)
    primary = tables[f"n0={section.pilot_sizes[0]},eps={section.primary_eps}"]
    return {"tables": tables, "decision": decide(primary["scores"]), "calibration": calibration, "level": section.level,
            "tasks": [r["name"] for r in records], "primary": {"n0": section.pilot_sizes[0],
                                                              "eps": section.primary_eps}}


def run(store: ResultStore, common: Common, section: Prediction) -> list[dict]:
    """Every task's record (missing ones ``common.workers`` at a time, the largest pools first), then the scores;
    returns one summary row per task."""
    params = [task_params(name, section, common.data_seed) for name in section.tasks]
    summaries = run_missing(store, [{"folder": FOLDER, "name": p["task"]["name"], "params": p,
                                     "kwargs": {"store": store, "params": p}} for p in params],
                            task_one, common.workers, cost=_cost, progress=common.progress,
                            desc="prediction tasks")
    records = [load_task(store, p["task"]["name"]) for p in params]
    # each record's identity is its parameters (its payload also holds wall times, which differ between runs)
    upstream = {r["name"]: hashlib.sha256(json.dumps(r["meta"]["params"], sort_keys=True).encode()).hexdigest()
                for r in records}
    scores_params = {"section": dataclasses.asdict(section), "upstream": upstream, "scoring": SCORING}
    cached(store, FOLDER, SCORES, scores_params, lambda: (compute_scores(records, section), {
        "tasks": len(records)}), ext="json")
    return summaries


def _cost(params: dict) -> float:
    """Rough relative cost of a task (its model family and pool) for the order in which tasks start."""
    task = params["task"]
    weight = {"cnn": 8.0, "vit": 6.0, "mlp": 1.0, "linear": 0.5}[task["model"]]
    return weight * (4.0 if task["side"] == 28 else 1.0) * min(task["pool"] or params["max_pool"], params["max_pool"])
