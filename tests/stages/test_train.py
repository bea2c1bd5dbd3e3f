"""The train stage (``lib.stages.train``): its rows against evaluate on the reloaded model, a second run skips and
changes nothing; ``train_one`` saves and skips."""
import pytest
import torch
import torch.nn.functional as F

from lib.core.training.recipe import evaluate
from lib.infra import data
from lib.infra.config import Train
from lib.records.runs import load_trained
from lib.stages import train as train_stage
from tests.conftest import snapshot
from tests.stages.conftest import DS, MODEL, RUN, SEED, N

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_train_rows_equal_evaluate_on_the_reloaded_model(tiny_pipeline):
    store = tiny_pipeline.store
    (row,) = tiny_pipeline.out["train"]
    assert row["name"] == RUN and row["skipped"] is False and row["n_train"] == N
    assert row["n_params"] == 784 * 256 + 256 + 256 * 10 + 10 and len(row["epoch_loss"]) == 1
    net, meta = load_trained(store, DS, MODEL, SEED)
    common, section = tiny_pipeline.stage("train")
    assert meta["params"] == train_stage.training_params(DS, MODEL, SEED, N, 0, section)
    xt, yt = data.load(DS, "test")
    on_test = evaluate(net, xt, yt)
    assert row["test_accuracy"] == pytest.approx(on_test["accuracy"], abs=1e-12)
    assert row["test_loss"] == pytest.approx(on_test["loss"], rel=1e-6)
    with torch.no_grad():
        plain = (net(xt).argmax(1) == yt).double().mean().item()
        x, y = data.training_subset(DS, N, 0)
        train_loss = F.cross_entropy(net(x), y).item()
    assert row["test_accuracy"] == pytest.approx(plain, abs=1e-12) and 0.2 < plain < 1
    assert row["train_loss"] == pytest.approx(train_loss, rel=1e-5)


def test_train_second_run_skips_and_changes_nothing(tiny_pipeline, capsys):
    store = tiny_pipeline.store
    before = snapshot(store.root / "train")
    common, section = tiny_pipeline.stage("train")
    (again,) = train_stage.run(store, common, section)
    (first,) = tiny_pipeline.out["train"]
    assert again["skipped"] is True and again["test_accuracy"] == first["test_accuracy"]
    assert "skipped (already trained with identical parameters)" in capsys.readouterr().out
    assert snapshot(store.root / "train") == before and len(before) == 2   # payload + meta, untouched


def test_train_one_saves_and_skips(tmp_store):
    params = train_stage.training_params("mnist", "mlp1", 0, n_train=256, data_seed=0,
                                         recipe=Train(epochs=1, batch_size=64, lr=1e-3))
    row = train_stage.train_one(tmp_store, params, progress=False)
    assert not row["skipped"] and 0 <= row["test_accuracy"] <= 1
    meta = tmp_store.meta("train", "mnist_mlp1_s0")
    assert meta["params"] == params and meta["seed"] == 0
    assert meta["provenance"]["versions"]["torch"].startswith("2.14.1")
    assert len(meta["provenance"]["git"]["commit"]) >= 7
    again = train_stage.train_one(tmp_store, params, progress=False)
    assert again["skipped"] and again["test_accuracy"] == row["test_accuracy"]
    net, _ = load_trained(tmp_store, "mnist", "mlp1", 0)
    x, y = data.training_subset("mnist", 256, 0)
    assert evaluate(net, x, y)["accuracy"] == pytest.approx(row["train_accuracy"])
    changed = train_stage.train_one(tmp_store, {**params, "epochs": 2}, progress=False)
    assert not changed["skipped"]
