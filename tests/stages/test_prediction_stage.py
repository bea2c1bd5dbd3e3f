"""Notebook 08's stage on the tiny pipeline: one record per task with target, interval or reason, every pilot's
predictions; the scores table; the paper's tables and macros; the README block; the calibration the API reads."""
import json

import pytest

from lib.core.sample_size.predictors import PREDICTORS
from lib.outputs import prediction_tables, readme
from lib.records.prediction import load_scores, load_task, task_names
from lib.stages.prediction import pilot_sizes_for


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    return tiny_pipeline


def test_one_record_per_task_with_target_or_reason(pipe):
    common, section = pipe.stage("prediction")
    assert sorted(task_names(pipe.store)) == sorted(section.tasks)
    for name in section.tasks:
        r = load_task(pipe.store, name)
        assert r["family"] and r["model"] and r["n_max"] == min(section.max_pool, r["n_max"])
        assert len(r["accuracy"]) == len(r["grid"]) and len(r["accuracy"][0]) == section.n_seeds
        for eps in section.eps:
            t = r["targets"][str(eps)]
            if t["status"] == "resolved":
                assert t["n"] in r["grid"] and t["n"] <= r["n_max"] / section.plateau_factor
                assert t["low"] <= t["high"]
            else:
                assert t["n"] is None and t["reason"]
        for n0, eff in pilot_sizes_for(r["n_max"], section).items():
            pilot = r["pilots"][str(n0)]
            assert pilot["n0"] == eff and max(pilot["sizes"]) < eff
            assert set(pilot["power_law"]) == {str(e) for e in section.eps}
            assert pilot["landscape"]["N"] == max(pilot["sizes"])


def test_scores_every_predictor_on_the_resolved_tasks(pipe):
    _, section = pipe.stage("prediction")
    scores = load_scores(pipe.store)
    assert set(scores["tables"]) == {f"n0={n0},eps={e}" for n0 in section.pilot_sizes for e in section.eps}
    for table in scores["tables"].values():
        resolved = [t for t in table["targets"] if t is not None]
        assert table["n_resolved"] == len(resolved) and table["n_resolved"] + table["n_unresolved"] == len(
            section.tasks)
        for task_pred in table["predictions"]:
            assert set(task_pred) == set(PREDICTORS)
        for s in table["scores"].values():
            assert s["n_tasks"] == len(resolved) and 0 <= s["coverage"] <= 1
    assert scores["decision"]["landscape_helps"] in (True, False, None) and "p < 0.05" in scores["decision"]["rule"]


def test_paper_outputs_readme_block_and_calibration(pipe, tmp_path):
    assert (pipe.generated_dir / "prediction_scores.tex").is_file()
    assert (pipe.generated_dir / "prediction_tasks.tex").is_file()
    numbers = json.loads((pipe.generated_dir / "numbers.json").read_text())
    _, section = pipe.stage("prediction")
    assert numbers["PredTasks"] == str(len(section.tasks)) and "landscape" in numbers["PredDecision"]
    block = readme.prediction_block(pipe.store.profile, pipe.store)
    assert block.startswith(readme.PRED_BEGIN.format(profile=pipe.store.profile)) and "| power_law |" in block
    path = prediction_tables.write_calibration(pipe.store, tmp_path / "calibration.json")
    cal = json.loads(path.read_text())
    assert cal["source"]["profile"] == pipe.store.profile and cal["source"]["git"]["commit"]
    assert set(load_scores(pipe.store)["calibration"]) <= set(cal)


def test_figures_show_every_resolved_target_and_the_worked_task(pipe):
    import matplotlib.pyplot as plt
    import numpy as np

    from lib.outputs import prediction_figures

    scores = load_scores(pipe.store)
    key = f"n0={scores['primary']['n0']},eps={scores['primary']['eps']}"
    fig = prediction_figures.predicted_vs_target(scores, key)
    panels = fig.axes
    assert len(panels) == len(PREDICTORS)
    n_resolved = scores["tables"][key]["n_resolved"]
    for ax in panels:                     # two marker series (predictions, fallbacks) + the diagonal
        points = sum(len(line.get_xdata()) for line in ax.lines if line.get_marker() == "o")
        assert points == n_resolved and "median |log2|" in ax.get_title()
    plt.close(fig)
    task = load_task(pipe.store, scores["tasks"][0])
    fig = prediction_figures.task_curve(task, scores["primary"]["n0"])
    left, right = fig.axes[:2]
    mean = next(line for line in left.lines if line.get_label() == "mean over seeds")
    assert np.allclose(mean.get_ydata(), np.asarray(task["accuracy"]).mean(axis=1))
    assert left.get_xlabel() == right.get_xlabel() == "training samples n" and right.get_yscale() == "log"
    plt.close(fig)
