"""The records of notebook 03 (``lib.records.projection``): the runs that have a surface, read from the saved
parameters, and the loader."""
from lib.records import projection as proj
from lib.records.runs import run_name


def test_projected_runs_and_their_surfaces(tmp_store):
    assert proj.projected_runs(tmp_store) == []
    for ds, m, s in (("mnist", "mlp1", 0), ("fashion_mnist", "cnn", 2)):
        tmp_store.save(proj.FOLDER, run_name(ds, m, s), {"k": [10, 11, 199, 200], "N": 200},
                       {"dataset": ds, "model": m, "seed": s})
    assert proj.projected_runs(tmp_store) == [("fashion_mnist", "cnn", 2), ("mnist", "mlp1", 0)]   # by name
    assert proj.load_projection(tmp_store, "mnist", "mlp1", 0) == {"k": [10, 11, 199, 200], "N": 200}
