"""The papermill runner: parameters reach the notebook, a failing cell stops the run with its error."""
import json

import pytest

from lib.infra import runner

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


def test_only_declared_parameters_are_passed(notebook_dir, tmp_path):
    out = tmp_path / "out.json"
    (notebook_dir / "01_train.py").write_text(GOOD.replace("OUT", repr(str(out))))
    assert runner.main(["--profile", "smoke"]) == 0
    executed = (tmp_path / "results" / "smoke" / "notebooks" / "01_train.ipynb").read_text()
    assert "spectrum_max_seeds" not in executed and "n_train" not in executed   # not declared by this notebook
    assert "epochs = 1" in executed


@pytest.mark.parametrize("path", runner.notebooks(), ids=lambda p: p.stem)
def test_shipped_notebooks_declare_their_parameters(path):
    """Every notebook's parameters cell names all of `common` it needs and all of its stage's section, so the
    runner (which passes declared names only) never drops a profile value."""
    import jupytext

    from lib.infra.config import COMMON_USED_BY, SCHEMA

    stage = runner.stage_of(path)
    declared = runner.declared_parameters(jupytext.read(path))
    needed = {k for k in SCHEMA["common"] if stage in COMMON_USED_BY.get(k, (stage,))} | set(SCHEMA[stage])
    assert needed <= declared, f"{path.name} lacks {sorted(needed - declared)}"
    assert declared <= set(SCHEMA["common"]) | set(SCHEMA[stage]), f"{path.name} declares unknown parameters"
