"""What every record shares (``lib.records.runs``): a missing result names its notebook and command; a missing trained
model names notebook 01."""
import pytest

from lib.infra.results import MissingResultError, ResultStore
from lib.records import REGISTRY, writer_of
from lib.records.runs import load, load_trained


@pytest.mark.parametrize("result_folder", [f for info in REGISTRY.values() for f in info.folders])
def test_load_of_a_missing_result_names_the_notebook_and_the_command(tmp_path, monkeypatch, result_folder):
    monkeypatch.delenv("LANDSCAPE_RUNNER", raising=False)            # outside the runner: the make command
    store = ResultStore("nothing", root=tmp_path)
    info = writer_of(result_folder)
    with pytest.raises(MissingResultError) as err:
        load(store, result_folder, "absent")
    msg = str(err.value)
    assert f"result {result_folder}/absent of profile 'nothing' is missing" in msg
    assert f"run notebook notebooks/{info.notebook}.py first" in msg
    assert f"(make stage STAGE={info.notebook} PROFILE=nothing)" in msg


def test_missing_trained_model_names_the_notebook(tmp_store):
    from lib.infra.results import MissingResultError

    with pytest.raises(MissingResultError, match="run notebook notebooks/01_train.py"):
        load_trained(tmp_store, "mnist", "mlp2", 0)
