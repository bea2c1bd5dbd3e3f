"""The CNN bound rows (``lib.stages.convergence.bounds``) on a tiny untrained CNN run equal the core comparison."""
import pytest
import torch

from lib.core.training import models
from lib.infra.results import ResultStore
from lib.stages.convergence import bounds as convergence_bounds


def test_cnn_bound_rows_save_the_measured_norms_of_a_cnn_run(tmp_path, monkeypatch, one_thread):
    """The CNN-bound stage on a (tiny, untrained) CNN run: every summary key the paper reads is saved and equals
    the core comparison on the same net and samples (the pipeline's tiny profile has no CNN to exercise it)."""
    from lib.core.landscape import bounds
    from lib.infra.config import validate
    from tests.conftest import TINY_PROFILE

    profile = validate({**TINY_PROFILE, "common": {**TINY_PROFILE["common"], "models": ["cnn"]},
                        "spectrum": {**TINY_PROFILE["spectrum"], "solver_models": ["cnn"]},
                        "monte_carlo": {**TINY_PROFILE["monte_carlo"], "sweep_models": ["cnn"],
                                        "full_space_models": ["cnn"]},
                        "convergence": {**TINY_PROFILE["convergence"], "learning_models": ["cnn"],
                                        "cnn_bound_samples": 2}}, source="test")
    common, section = profile.stage("convergence")
    net = models.build("cnn", 0).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 28, 28, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    monkeypatch.setattr(convergence_bounds, "trained_run", lambda *a, **k: (net, x, y, {"train/x": "0"}))
    store = ResultStore("cnn_bound_test", root=tmp_path / "cnn_bound_test")
    rows = convergence_bounds.cnn_bound_rows(store, common, section)
    assert len(rows) == 1
    ref = bounds.cnn_bound_comparison(net, x, y, 2, common.seeds[0])
    row = rows[0]
    assert row["outer_norms_max"] == pytest.approx(ref["outer_max"], rel=1e-6)
    assert row["full_norms_max"] == pytest.approx(ref["full_max"], rel=1e-6)
    assert row["outer_norms_median"] == pytest.approx(ref["outer_median"], rel=1e-6)
    assert row["bound"] == pytest.approx(ref["bound"], rel=1e-9) and row["bound"] >= row["outer_norms_max"]
