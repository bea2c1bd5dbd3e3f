"""The papermill runner: parameters reach the notebook, a failing cell stops the run with its error."""
import json

import pytest

from lib import runner

GOOD = '''# %% tags=["parameters"]
profile = "x"
epochs = 1

# %%
import json, pathlib
pathlib.Path(OUT).write_text(json.dumps({"profile": profile, "epochs": epochs}))
'''

BAD = '''# %% tags=["parameters"]
profile = "x"

# %%
raise RuntimeError("cell exploded on purpose")
'''


@pytest.fixture
def notebook_dir(tmp_path, monkeypatch):
    books = tmp_path / "notebooks"
    books.mkdir()
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", books)
    monkeypatch.setattr(runner, "RESULTS_ROOT", tmp_path / "results")
    return books


def test_parameters_are_injected(notebook_dir, tmp_path):
    out = tmp_path / "out.json"
    (notebook_dir / "01_train.py").write_text(GOOD.replace("OUT", repr(str(out))))
    assert runner.main(["--profile", "smoke", "--set", "train.epochs=3"]) == 0
    assert json.loads(out.read_text()) == {"profile": "smoke", "epochs": 3}
    executed = tmp_path / "results" / "smoke" / "notebooks" / "01_train.ipynb"
    assert executed.is_file()
    timings = json.loads((tmp_path / "results" / "smoke" / "timings.json").read_text())
    assert timings["01_train"] > 0


def test_failing_cell_stops_with_its_error(notebook_dir, tmp_path, capsys):
    (notebook_dir / "01_train.py").write_text(BAD)
    (notebook_dir / "02_spectrum.py").write_text(GOOD.replace("OUT", repr(str(tmp_path / "never.json"))))
    assert runner.main(["--profile", "smoke"]) == 1
    err = capsys.readouterr().err
    assert "01_train.py failed" in err and "cell exploded on purpose" in err
    assert not (tmp_path / "never.json").exists()
