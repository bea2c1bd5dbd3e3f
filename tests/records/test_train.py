"""The records of notebook 01 (``lib.records.train``): the recipe a trained run was trained with, read back from its
saved parameters."""
from lib.infra.config import Train
from lib.records import train as train_records
from lib.records.runs import run_name
from lib.stages.train import training_params


def test_recipe_of_a_run_is_the_recipe_it_was_saved_with(tmp_store):
    recipe = Train(epochs=3, batch_size=32, lr=0.01, threads=2)
    params = training_params("mnist", "mlp1", 4, 200, 1, recipe)
    tmp_store.save(train_records.FOLDER, run_name("mnist", "mlp1", 4), {"model": "mlp1"}, params)
    assert train_records.recipe_of(tmp_store, "mnist", "mlp1", 4) == ({"n_train": 200, "data_seed": 1}, recipe)
