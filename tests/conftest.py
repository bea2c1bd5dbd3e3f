import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tmp_store(tmp_path):
    from lib.infra.results import ResultStore

    return ResultStore("test", root=tmp_path / "results")


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy second core."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
