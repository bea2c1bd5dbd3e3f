"""The stage plumbing (``lib.stages.base``): ``cached`` skips identical work (a second run of the stages changes
no file), ``run_missing`` in worker processes writes what one process writes."""
import pytest
import torch

from lib.core.tensors import torch_threads
from lib.infra.config import Train
from lib.infra.results import ResultStore
from lib.stages import monte_carlo as mc_stage
from lib.stages import projection as projection_stage
from lib.stages import spectrum as spectrum_stage
from lib.stages import train as train_stage
from tests.stages.conftest import _files

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_spectrum_projection_and_curves_skip_on_a_second_run(tiny_pipeline):
    store = tiny_pipeline.store
    kept = {f: _files(store.root / f) for f in ("spectrum", "solvers", "projection", "curves", "terms", "scales",
                                                "full_space", "speed")}
    plan_payload = (store.root / "plan" / "monte_carlo.json").read_bytes()
    rows = [*spectrum_stage.run(store, *tiny_pipeline.stage("spectrum")),
            *projection_stage.run(store, *tiny_pipeline.stage("projection")),
            *mc_stage.run(store, *tiny_pipeline.stage("monte_carlo"))]
    assert len(rows) == 1 + 1 + 16 + 8 and all(r["skipped"] for r in rows)     # 8: the full_space comparisons
    assert {f: _files(store.root / f) for f in kept} == kept
    assert (store.root / "plan" / "monte_carlo.json").read_bytes() == plan_payload


def test_trainings_in_worker_processes_equal_those_in_this_process(tmp_path):
    """``run_missing`` with two worker processes writes the same weights, bit for bit, as one process: each
    training fixes its own thread count (``Train.threads``), so the results do not depend on ``workers``."""
    from lib.stages.base import run_missing
    recipe = Train(epochs=1, batch_size=64, lr=1e-3, threads=1)
    params = [train_stage.training_params("mnist", m, s, 256, 0, recipe) for m in ("mlp1", "cnn") for s in (0, 1)]
    one, two = ResultStore("w1", root=tmp_path / "w1"), ResultStore("w2", root=tmp_path / "w2")

    def rows(store, workers):
        tasks = [train_stage.training_task(store, p) for p in params]
        return run_missing(store, tasks, train_stage.train_one, workers, cost=lambda p: p["n_train"])

    with torch_threads(2):                                      # the parent's own count must not leak in
        rows1 = rows(one, 1)
    rows2 = rows(two, 2)
    names = ["mnist_mlp1_s0", "mnist_mlp1_s1", "mnist_cnn_s0", "mnist_cnn_s1"]
    assert [r["name"] for r in rows1] == [r["name"] for r in rows2] == names
    assert not any(r["skipped"] for r in rows1 + rows2)
    for r1, r2 in zip(rows1, rows2):
        a, b = one.load("train", r1["name"]).payload, two.load("train", r2["name"]).payload
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), r1["name"]
        assert r1["test_accuracy"] == r2["test_accuracy"]
    again = rows(two, 2)                                        # all cached now: nothing recomputed
    assert all(r["skipped"] for r in again) and [r["test_accuracy"] for r in again] == [
        r["test_accuracy"] for r in rows2]
