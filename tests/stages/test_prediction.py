"""The prediction stage (``lib.stages.prediction``, notebook 08) on the tiny pipeline: one record per task with
target, interval or reason, every pilot's predictions; the scores table."""
import pytest

from lib.core.sample_size.predictors import PREDICTORS
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
