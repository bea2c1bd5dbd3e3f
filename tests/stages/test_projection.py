"""The projection stage (``lib.stages.projection``) on the tiny pipeline: its loss surfaces are prefix means of plain
per-sample losses on both planes; a small k outside the samples is refused."""
import dataclasses

import numpy as np
import pytest

from lib.core.landscape.subspace import filter_normalized_directions
from lib.infra import data
from lib.records import projection as projection_records
from lib.records import spectrum as spectrum_records
from lib.records.runs import load_trained
from lib.stages import projection as projection_stage
from tests.cases import explicit_losses
from tests.stages.conftest import DS, MODEL, SEED, N, _flat

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_projection_grids_are_prefix_means_of_plain_losses(tiny_pipeline):
    store = tiny_pipeline.store
    (row,) = tiny_pipeline.out["projection"]
    assert row["N"] == N and row["grid_points"] == 3 and row["skipped"] is False
    p = projection_records.load_projection(store, DS, MODEL, SEED)
    assert p["k"] == [10, 11, N - 1, N] and p["N"] == N
    net, _ = load_trained(store, DS, MODEL, SEED)
    x, y = data.training_subset(DS, N, 0)
    w0 = _flat(net)
    hess = spectrum_records.load_spectrum(store, DS, MODEL, SEED)["eigenvectors"][:2]
    planes = {"hessian": hess, "filter_normalized": filter_normalized_directions(net, n=2, seed=SEED)}
    for plane, directions in planes.items():
        g = p[plane]
        np.testing.assert_array_equal(g["axis"], [-1.0, 0.0, 1.0])
        for i, j in ((1, 1), (0, 2), (2, 0)):            # the minimum and two corners (a transpose would show)
            w = w0 + g["axis"][i] * directions[0] + g["axis"][j] * directions[1]
            losses = explicit_losses(net, x, y, w).double()
            for k in p["k"]:
                assert g[f"L_{k}"].shape == (3, 3)
                assert g[f"L_{k}"][i, j] == pytest.approx(losses[:k].mean().item(), rel=1e-5), (plane, i, j, k)
    assert p["hessian"]["L_10"][0, 2] != pytest.approx(p["hessian"]["L_10"][2, 0], rel=1e-3)


@pytest.mark.parametrize("k_small", [0, N - 1])
def test_a_small_k_outside_one_to_n_minus_two_is_refused(tiny_pipeline, k_small):
    _, section = tiny_pipeline.stage("projection")
    with pytest.raises(ValueError, match=rf"^projection.k_small={k_small} must be in \[1, N-2\] with N={N}$"):
        projection_stage.projection_one(tiny_pipeline.store, DS, MODEL, SEED,
                                        dataclasses.replace(section, k_small=k_small))
