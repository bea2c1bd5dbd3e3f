"""The records of notebook 05 (``lib.records.convergence``): every table loads back as the stage returned it."""
import json

import pytest

from lib.infra.results import json_bytes
from lib.records import convergence as convergence_records

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_convergence_saves_every_table_as_returned(tiny_pipeline):
    store = tiny_pipeline.store
    out = tiny_pipeline.out["convergence"]
    assert list(out) == list(convergence_records.TABLES)
    assert store.names("analysis") == sorted(convergence_records.TABLES)
    has_cnn = "cnn" in tiny_pipeline.profile.common.models
    for table, rows in out.items():
        assert bool(rows) == (table != "cnn_bound" or has_cnn), f"table {table}: {len(rows)} rows"
        assert convergence_records.load_table(store, table) == json.loads(json_bytes(rows))
    assert json.loads((store.root / "summary.json").read_text()) == json.loads(json_bytes(out["summary"]))
