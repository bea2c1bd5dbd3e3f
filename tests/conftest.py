import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tmp_store(tmp_path):
    from lib.results import ResultStore

    return ResultStore("test", root=tmp_path / "results")
