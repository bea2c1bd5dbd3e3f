"""The records of notebook 08 (``lib.records.prediction``): task records and the scores result told apart, each task
with its meta record, a missing one naming notebook 08."""
import pytest

from lib.infra.results import MissingResultError
from lib.records import prediction as pred


def test_task_records_and_the_scores_are_told_apart(tmp_store):
    assert pred.task_names(tmp_store) == []
    tmp_store.save(pred.FOLDER, "mnist2b_mlp", {"targets": {"0.01": {"n": 400}}}, {"task": "mnist2b_mlp"},
                   summary={"n_max": 1200})
    tmp_store.save(pred.FOLDER, "digits_linear", {"targets": {}}, {"task": "digits_linear"})
    tmp_store.save(pred.FOLDER, pred.SCORES, {"tables": {}, "primary": {"n0": 160}}, {"tasks": 2})
    assert pred.task_names(tmp_store) == ["digits_linear", "mnist2b_mlp"]
    task = pred.load_task(tmp_store, "mnist2b_mlp")
    assert task["targets"] == {"0.01": {"n": 400}} and task["meta"]["name"] == "mnist2b_mlp"
    assert task["meta"]["params"] == {"task": "mnist2b_mlp"} and task["meta"]["summary"] == {"n_max": 1200}
    assert pred.load_scores(tmp_store) == {"tables": {}, "primary": {"n0": 160}}
    with pytest.raises(MissingResultError, match=r"run notebook notebooks/08_prediction.py first"):
        pred.load_task(tmp_store, "absent")
