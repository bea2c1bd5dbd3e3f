import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


#: test modules that execute notebooks, the runner, nbval, several processes or a browser: slow as a whole
SLOW_MODULES = {"test_browser", "test_distributed", "test_jupyter", "test_nbval", "test_notebook_figures",
                "test_reproducibility", "test_runner"}


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that uses the tiny pipeline (all stages in-process, about a minute on first use) and
    every test of ``SLOW_MODULES``; ``make pytest FAST=1`` runs ``-m "not slow and not paper"``."""
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "")
        if "tiny_pipeline" in getattr(item, "fixturenames", ()) or module.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def tmp_store(tmp_path):
    from lib.infra.results import ResultStore

    return ResultStore("test", root=tmp_path / "results")


@pytest.fixture
def notebook_dir(tmp_path, monkeypatch):
    """An empty notebooks folder and results root patched into ``lib.infra.runner`` (its tests write notebooks
    there and run them)."""
    from lib.infra import runner

    books = tmp_path / "notebooks"
    books.mkdir()
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", books)
    monkeypatch.setattr(runner, "RESULTS_ROOT", tmp_path / "results")
    return books


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy second core."""
    from lib.core.tensors import torch_threads

    with torch_threads(1):
        yield


# ------------------------------------------------------------------------------------------ tiny pipeline
#: a profile small enough to run all six stages in-process in well under a minute (one model, N = 200).
#: sweep_samples is 8, not 4: the Sobol estimator needs a multiple of its 8 scrambled replicates; spectrum.tol is
#: 1e-2 (the smallest eigenvalue takes 3x fewer products than at 1e-4; Ritz values stay accurate to ~1e-4).
TINY_PROFILE = {
    "common": {"profile": "pipeline_test", "datasets": ["mnist"], "models": ["mlp1"], "seeds": [0],
               "n_train": 200, "data_seed": 0},
    "train": {"epochs": 1},
    "spectrum": {"k_top": 4, "n_vectors": 2, "trace_probes": 4, "slq_iter": 8, "tol": 0.01, "solver_k": 2,
                 "solver_models": ["mlp1"]},
    "projection": {"grid_points": 3, "k_small": 10},
    "monte_carlo": {"D": 2, "n_samples": 8, "n_orders": 2, "sweep_datasets": ["mnist"], "sweep_models": ["mlp1"],
                    "sigmas": [0.1, 1.0], "dims": [1, 2], "sweep_samples": 8, "theory_max_D": 2,
                    "gap_thetas": 4, "full_space_models": ["mlp1"], "full_space_samples": 4},
    "convergence": {"delta_grid": [0.01, 0.001], "pilot_sizes": [50, 100], "pilot_samples": 4,
                    "learning_sizes": [25, 50, 100, 200], "learning_models": ["mlp1"], "r0_n_train": 100,
                    "r0_architectures": [[8]], "r0_orders": 2, "r0_hessian_samples": 1, "seed_study_seeds": 3,
                    "seed_study_n": 100, "seed_study_thetas": 8, "seed_study_orders": 4,
                    "seed_study_gap_repeats": 2},
    "prediction": {"tasks": ["mnist2b_mlp", "fashion2a_linear", "teacher_g8_b8_mlp", "teacher_s8_b4_mlp",
                             "digits_linear"], "n_seeds": 2, "steps": 60, "max_pool": 1200, "n_min": 40,
                   "pilot_sizes": [160], "pilot_n_min": 16, "D": 2, "n_thetas": 8, "gap_thetas": 4, "n_boot": 20},
}
#: stage timings the figures stage reads (as the runner writes them) and turns into \Time... numbers
TINY_TIMINGS = {"01_train": 60.0, "04_monte_carlo": 90.0}


def snapshot(*folders: Path) -> dict:
    """(mtime_ns, size) of every file under ``folders`` (missing folders: nothing)."""
    out = {}
    for folder in folders:
        if folder.is_dir():
            for p in folder.rglob("*"):
                if p.is_file():
                    st = p.stat()
                    out[str(p)] = (st.st_mtime_ns, st.st_size)
    return out


@dataclass
class Pipeline:
    """The six stages run once into a temporary store: what each ``run`` returned, and where 06 wrote."""
    profile: object                    # lib.infra.config.Profile
    store: object                      # lib.infra.results.ResultStore (root = results_root / profile)
    results_root: Path                 # the results root of the run
    figures_dir: Path                  # where 06 wrote the figures: latex.FIGURES (patched) / profile
    generated_dir: Path                # where 06 wrote numbers and tables: latex.GENERATED (patched) / profile
    out: dict                          # stage name -> the value its run() returned
    seconds: dict                      # stage name -> wall seconds
    repo_before: dict = field(default_factory=dict)   # snapshot of paper/{figures,generated}, results/
    repo_after: dict = field(default_factory=dict)    # ... and after
    repo_folders: tuple = ()

    def stage(self, name: str):
        return self.profile.stage(name)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """Every stage entry point, in order, on ``TINY_PROFILE`` into a temporary ResultStore; notebook 06's
    output folders (``latex.FIGURES``/``GENERATED``) and the timings root are temporary folders too, so that
    nothing under the repository's paper/ or results/ is touched (the snapshots let a test check it)."""
    import importlib
    import json
    import time

    from lib import REPO_ROOT
    from lib.core.tensors import torch_threads
    from lib.infra import config
    from lib.infra import results as results_module
    from lib.infra.results import ResultStore
    from lib.outputs import latex
    from lib.records import REGISTRY

    base = tmp_path_factory.mktemp("pipeline")
    profile = config.validate(TINY_PROFILE, source="tests/conftest.py TINY_PROFILE")
    name = profile.common.profile
    results_root = base / "results"
    store = ResultStore(name, root=results_root / name)
    (results_root / name).mkdir(parents=True)
    (results_root / name / "timings.json").write_text(json.dumps(TINY_TIMINGS))
    figures_root, generated_root = base / "paper" / "figures", base / "paper" / "generated"
    figures_dir, generated_dir = figures_root / name, generated_root / name
    # where notebook 06 writes by default and the results root; paper/'s LaTeX sources are edited by hand
    repo_folders = (REPO_ROOT / "paper" / "figures", REPO_ROOT / "paper" / "generated",
                    Path(results_module.RESULTS_ROOT))
    pipe = Pipeline(profile, store, results_root, figures_dir, generated_dir, {}, {}, repo_folders=repo_folders)
    pipe.repo_before = snapshot(*repo_folders)
    with torch_threads(1), pytest.MonkeyPatch.context() as mp:
        mp.setattr(latex, "FIGURES", figures_root)
        mp.setattr(latex, "GENERATED", generated_root)
        for stage in REGISTRY:
            common, section = profile.stage(stage)
            t0 = time.perf_counter()
            pipe.out[stage] = importlib.import_module(REGISTRY[stage].entry).run(store, common, section)
            pipe.seconds[stage] = time.perf_counter() - t0
    pipe.repo_after = snapshot(*repo_folders)
    return pipe
