"""The records of notebook 07 (``lib.records.your_model``): a seed's payload with its meta, and the seeds that share
the lowest seed's settings (a run of other settings is not mixed in; none at all names notebook 07)."""
import pytest

from lib.infra.results import MissingResultError
from lib.records.runs import run_name
from lib.records.your_model import DATASET, FOLDER, MODEL, load_your_model, your_model_runs


def test_runs_that_share_the_lowest_seeds_settings(tmp_store):
    with pytest.raises(MissingResultError, match=r"run notebook notebooks/07_your_model.py first"):
        your_model_runs(tmp_store)
    for seed, sigma in ((5, 0.1), (0, 0.1), (3, 0.2), (1, 0.1)):
        tmp_store.save(FOLDER, run_name(DATASET, MODEL, seed), {"delta": [seed]},
                       {"dataset": DATASET, "model": MODEL, "seed": seed, "sigma": sigma, "D": 2},
                       summary={"slope": -2.0})
    assert your_model_runs(tmp_store) == [0, 1, 5]
    saved = load_your_model(tmp_store, 3)
    assert saved["delta"] == [3] and saved["meta"]["params"]["sigma"] == 0.2
    assert saved["meta"]["summary"] == {"slope": -2.0} and saved["meta"]["name"] == "digits_rescnn_s3"
