"""The papermill runner: parameters reach the notebook, a failing cell stops the run with its error."""
import json

import jupytext
import pytest

from lib.infra import config, runner

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


def test_parameters_are_injected(notebook_dir, tmp_path):
    out = tmp_path / "out.json"
    (notebook_dir / "01_train.py").write_text(GOOD.replace("OUT", repr(str(out))))
    assert runner.main(["--profile", "smoke", "--set", "train.epochs=3"]) == 0
    assert json.loads(out.read_text()) == {"profile": "smoke", "epochs": 3}
    executed = tmp_path / "results" / "smoke" / "notebooks" / "01_train.ipynb"
    assert executed.is_file()
    timings = json.loads((tmp_path / "results" / "smoke" / "timings.json").read_text())
    assert list(timings) == ["01_train"] and isinstance(timings["01_train"], float)
    assert "epochs = 3" in executed.read_text()   # the injected cell, after the declared default


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


def _parameters_cell(path):
    nb = jupytext.read(path)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {}
    exec(cell.source, {}, values)   # the cell is plain assignments of literals
    return values


@pytest.mark.parametrize("path", runner.notebooks(), ids=lambda p: p.stem)
def test_shipped_notebooks_declare_exactly_their_parameters_with_smoke_defaults(path):
    """Every notebook's parameters cell names exactly the `common` keys its stage reads and all of its section,
    and each default there equals the smoke profile's value (running a notebook by hand reproduces smoke)."""
    stage = runner.stage_of(path)
    declared = runner.declared_parameters(jupytext.read(path))
    needed = set(config.COMMON_KEYS[stage]) | set(config.fields_of(stage))
    assert declared == needed, f"{path.name}: lacks {sorted(needed - declared)}, extra {sorted(declared - needed)}"
    smoke = config.stage_parameters(config.load_profile("smoke"), stage)
    cell = _parameters_cell(path)
    differ = {k: (cell[k], smoke[k]) for k in needed if cell[k] != smoke[k]}
    assert not differ, f"{path.name}: defaults differ from the smoke profile (cell, smoke): {differ}"


def test_parameter_drift_is_detected(tmp_path):
    """The check above can fail: a cell whose default differs from smoke is reported."""
    path = runner.notebooks()[1]
    drifted = tmp_path / path.name
    drifted.write_text(path.read_text().replace("n_vectors = 4", "n_vectors = 10"))
    assert _parameters_cell(drifted)["n_vectors"] == 10
    with pytest.raises(AssertionError, match="n_vectors"):
        test_shipped_notebooks_declare_exactly_their_parameters_with_smoke_defaults(drifted)
