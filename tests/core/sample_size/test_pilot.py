"""The benchmark's pilots and learning curves (``lib.core.sample_size.pilot``): pilots read only their n0 samples,
V-bar of the landscape features against a plain loop, learning-curve shapes."""
import math

import numpy as np
import pytest
import torch

from lib.core.sample_size.pilot import landscape_features, learning_curve, pilot_curve
from lib.core.sample_size.prediction import size_grid
from lib.core.training.task_models import build_task_model
from lib.core.training.teacher import teacher_task


def _factory(seed):
    return build_task_model("mlp", (6,), 3, seed, width=8)


def test_pilot_never_reads_past_n0():
    t = teacher_task(400, 10, d=6, n_classes=3, seed=0)
    x, y = t["x"].clone(), t["y"].clone()
    x[120:] = float("nan")                      # anything read past the pilot would poison its numbers
    y[120:] = 99
    p = pilot_curve(_factory, x, y, 120, folds=4, ratio=1.5, n_min=10, steps=30, batch_size=16)
    assert np.isfinite(p["accuracy"]).all() and p["sizes"][-1] == 90
    assert int(p["train_index"].max()) < 120 and set(p["val_index"].tolist()) == set(range(30))
    lf = landscape_features(p["model"], x[:120][p["train_index"]], y[:120][p["train_index"]],
                            x[:120][p["val_index"]], y[:120][p["val_index"]], D=3, sigma=0.5, n_thetas=8)
    assert lf["N"] == 90 and lf["vbar_sigma"] > 0 and math.isfinite(lf["vbar_sigma"])
    assert lf["hessian_products"] > 0 and len(lf["eigenvalues"]) == 3
    if lf["gap"] > 0 and lf["sigma_gap"] is not None:
        assert lf["vbar_gap"] > 0


def test_landscape_features_vbar_against_a_plain_loop():
    t = teacher_task(200, 50, d=6, n_classes=3, seed=1)
    net = _factory(0)
    lf = landscape_features(net, t["x"], t["y"], t["x_test"], t["y_test"], D=2, sigma=0.3, n_thetas=16, seed=4)
    # recompute V-bar with explicit weights w* + P^T theta from the returned subspace's own draws
    from lib.core.hessian import HessianOperator, top_eigenpairs
    from lib.core.landscape.sampling import make_sampler
    top = top_eigenpairs(HessianOperator(net, t["x"], t["y"]), 2, tol=1e-3, seed=4)
    w0 = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    z = make_sampler("gaussian", sigma=1.0).sample(16, 2, seed=4)
    variances = []
    for th in 0.3 * z:
        w = w0 + (th.to(w0.dtype) @ top.eigenvectors.to(w0.dtype))
        clone = _factory(0)
        torch.nn.utils.vector_to_parameters(w, clone.parameters())
        with torch.no_grad():
            losses = torch.nn.functional.cross_entropy(clone(t["x"]), t["y"], reduction="none").double()
        variances.append(float(losses.var(unbiased=False)))
    assert lf["vbar_sigma"] == pytest.approx(np.mean(variances), rel=1e-4)


def test_learning_curve_shapes_and_seed_pairing():
    t = teacher_task(300, 200, d=6, n_classes=3, seed=2)
    sizes = size_grid(300, 40, 1.25)
    lc = learning_curve(_factory, t["x"], t["y"], t["x_test"], t["y_test"], sizes, 2, steps=20, batch_size=16)
    assert lc["accuracy"].shape == (len(sizes), 2) and ((lc["accuracy"] >= 0) & (lc["accuracy"] <= 1)).all()
