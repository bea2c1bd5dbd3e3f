"""A result is never silently replaced by one with other parameters: outside the runner, a profile that has a
configs/<profile>.yaml refuses (naming the parameters that differ and the fix) before anything is computed; the
runner (an edited profile, ``--set``) and an explicit ``overwrite=True`` replace. A missing upstream result names
the command that makes it with the parameters of the current run."""
import json
import os

import pytest

from lib.infra import runner
from lib.infra.results import (
    RUNNER_ENV,
    MissingResultError,
    ResultConflictError,
    ResultStore,
    cpu_info,
    param_differences,
)
from lib.records.runs import load, rerun_command
from lib.stages.base import cached

PAPER = {"dataset": "mnist", "model": "mlp2", "seed": 0, "n_train": 10000, "epochs": 10, "lr": 0.001}
SMOKE = {**PAPER, "n_train": 1000, "epochs": 1}


@pytest.fixture(autouse=True)
def outside_runner(monkeypatch):
    monkeypatch.delenv(RUNNER_ENV, raising=False)


@pytest.fixture
def paper_store(tmp_path):
    """A store of the profile 'paper' (which has configs/paper.yaml) in a temporary folder."""
    store = ResultStore("paper", root=tmp_path / "paper")
    store.save("train", "mnist_mlp2_s0", {"w": 1}, PAPER)
    return store


def test_other_parameters_are_refused_with_the_differences_and_the_fix(paper_store):
    with pytest.raises(ResultConflictError) as err:
        paper_store.save("train", "mnist_mlp2_s0", {"w": 2}, SMOKE)
    msg = str(err.value)
    assert "epochs: 10 stored, 1 now" in msg and "n_train: 10000 stored, 1000 now" in msg
    assert "lr" not in msg.split("(", 1)[1].split(")")[0]      # only the parameters that differ are listed
    assert "configs/paper.yaml" in msg and "profile = 'scratch'" in msg and "overwrite=True" in msg
    assert paper_store.load("train", "mnist_mlp2_s0").payload == {"w": 1}     # untouched


def test_same_parameters_rewrite_and_explicit_overwrite_replaces(paper_store, tmp_path):
    paper_store.save("train", "mnist_mlp2_s0", {"w": 3}, PAPER)                 # identical identity: fine
    paper_store.save("train", "mnist_mlp2_s0", {"w": 4}, SMOKE, overwrite=True)  # this call says so
    assert paper_store.meta("train", "mnist_mlp2_s0")["params"] == SMOKE
    store = ResultStore("paper", root=paper_store.root, overwrite=True)          # the store says so
    store.save("train", "mnist_mlp2_s0", {"w": 5}, PAPER)
    assert store.load("train", "mnist_mlp2_s0").payload == {"w": 5}
    strict = ResultStore("scratch", root=tmp_path / "scratch", overwrite=False)
    strict.save("s", "r", {}, {"a": 1})
    with pytest.raises(ResultConflictError, match="a: 1 stored, 2 now"):
        strict.save("s", "r", {}, {"a": 2})


def test_profiles_without_a_profile_file_replace_freely(tmp_path):
    store = ResultStore("scratch", root=tmp_path / "scratch")     # no configs/scratch.yaml: an experiment
    store.save("train", "r", {"w": 1}, PAPER)
    store.save("train", "r", {"w": 2}, SMOKE)
    assert store.meta("train", "r")["params"] == SMOKE


def test_inside_the_runner_a_changed_parameter_recomputes(paper_store, monkeypatch):
    monkeypatch.setenv(RUNNER_ENV, json.dumps({"profile": "paper", "set": ["train.epochs=1"]}))
    paper_store.save("train", "mnist_mlp2_s0", {"w": 2}, SMOKE)
    assert paper_store.meta("train", "mnist_mlp2_s0")["params"] == SMOKE


def test_cached_stops_before_computing_and_names_the_notebook(paper_store):
    calls = []

    def compute():
        calls.append(1)
        return {"w": 9}, {}

    with pytest.raises(ResultConflictError, match="make stage STAGE=01_train PROFILE=paper"):
        cached(paper_store, "train", "mnist_mlp2_s0", SMOKE, compute, ext="json")
    assert calls == []
    summary, skipped = cached(paper_store, "train", "mnist_mlp2_s0", PAPER, compute, ext="json")
    assert skipped and calls == []


def test_param_differences_are_dotted_and_complete():
    old = {"a": 1, "up": {"train/x": "aaa", "train/y": "b"}, "gone": 1}
    new = {"a": 1, "up": {"train/x": "ccc", "train/y": "b"}, "new": [1, 2]}
    assert param_differences(old, new) == ["gone: 1 stored, absent now",
                                           "new: absent in the stored result, [1, 2] now",
                                           "up.train/x: 'aaa' stored, 'ccc' now"]


def test_the_runner_marks_its_notebooks_and_restores_the_environment(tmp_path, monkeypatch):
    """A notebook run by the runner replaces a paper-profile result whose parameters changed (--set)."""
    books = tmp_path / "notebooks"
    books.mkdir()
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", books)
    monkeypatch.setattr(runner, "RESULTS_ROOT", tmp_path / "results")
    root = tmp_path / "store"
    ResultStore("paper", root=root).save("train", "r", {}, {"epochs": 10})
    (books / "01_train.py").write_text(
        '# %% tags=["parameters"]\nepochs = 1\n\n# %%\nimport torch\nfrom lib.infra.results import ResultStore\n'
        f'ResultStore("paper", root={str(root)!r}).save("train", "r", {{}}, {{"epochs": epochs}},\n'
        '    summary={"cap": torch.backends.cpu.get_cpu_capability()})\n')
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("NATIVE_NUMERICS", raising=False)
    assert runner.main(["--profile", "smoke", "--set", "train.epochs=3"]) == 0
    meta = ResultStore("paper", root=root).meta("train", "r")
    assert meta["params"] == {"epochs": 3}
    assert RUNNER_ENV not in os.environ and "ATEN_CPU_CAPABILITY" not in os.environ
    if "avx2" in cpu_info()["isa_flags"]:      # the kernel computed on the pinned AVX2 paths, and recorded it
        assert meta["summary"]["cap"] == "AVX2" and meta["provenance"]["numeric_env"]["MKL_CBWR"] == "AVX2"


def test_runner_pins_numerics_unless_set_or_turned_off(monkeypatch):
    for key in (*runner.PINNED_NUMERICS, "NATIVE_NUMERICS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    avx2 = "avx2" in cpu_info()["isa_flags"]
    with runner.marked_as_runner("smoke", []):
        assert os.environ["MKL_CBWR"] == "COMPATIBLE"                       # the caller's setting wins
        assert os.environ.get("ATEN_CPU_CAPABILITY") == ("avx2" if avx2 else None)
    assert "ATEN_CPU_CAPABILITY" not in os.environ and os.environ["MKL_CBWR"] == "COMPATIBLE"
    monkeypatch.setenv("NATIVE_NUMERICS", "1")
    with runner.marked_as_runner("smoke", []):
        assert "ATEN_CPU_CAPABILITY" not in os.environ


def test_missing_upstream_names_the_command_with_the_runs_parameters(tmp_path, monkeypatch):
    store = ResultStore("smoke", root=tmp_path / "smoke")
    with pytest.raises(MissingResultError, match=r"notebooks/01_train.py first \(make stage STAGE=01_train "
                                                 r"PROFILE=smoke\)"):
        load(store, "train", "mnist_mlp2_s0")
    monkeypatch.setenv(RUNNER_ENV, json.dumps({"profile": "smoke", "set": ["common.n_train=500",
                                                                          "common.seeds=[0, 1]"]}))
    expected = (".venv/bin/python -m lib --profile smoke --only 01_train --set common.n_train=500 "
                "--set 'common.seeds=[0, 1]'")
    assert rerun_command("01_train", "smoke") == expected
    with pytest.raises(MissingResultError) as err:
        load(store, "train", "mnist_mlp2_s0")
    assert expected in str(err.value)
    monkeypatch.setenv(RUNNER_ENV, json.dumps({"profile": "paper", "set": []}))
    assert rerun_command("02_spectrum", "paper") == "make stage STAGE=02_spectrum PROFILE=paper"
