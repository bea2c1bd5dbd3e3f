"""A real pilot reads nothing beyond its first n0 samples: changing samples n0+1..N leaves it identical."""
import pytest
import torch

from lib.infra import data
from lib.infra.config import Train
from lib.stages.convergence.experiments import pilot_estimate

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(x, y, xt, yt):
    payload, summary = pilot_estimate(x, y, 64, "mlp1", 0, Train(epochs=1, batch_size=32), 2, 0.3, 4, xt, yt,
                                      gap_thetas=2)
    summary = {k: v for k, v in summary.items() if k != "cost"}
    return payload, summary


def test_pilot_ignores_samples_beyond_n0():
    x, y = data.training_subset("mnist", 96, 0)
    xt, yt = data.load("mnist", "test")
    xt, yt = xt[:200], yt[:200]
    p1, s1 = _run(x, y, xt, yt)
    x2, y2 = x.clone(), y.clone()
    x2[64:] = torch.randn_like(x2[64:]) * 5          # samples n0+1..N replaced by noise and relabelled
    y2[64:] = (y2[64:] + 3) % 10
    p2, s2 = _run(x2, y2, xt, yt)
    assert s1 == s2
    assert all(torch.equal(p1["state_dict"][k], p2["state_dict"][k]) for k in p1["state_dict"])
    assert torch.equal(p1["eigenvalues"], p2["eigenvalues"])
    # and the pilot does depend on its own n0 samples
    x3 = x.clone()
    x3[:8] = torch.randn_like(x3[:8])
    _, s3 = _run(x3, y, xt, yt)
    assert s3["vbar_sigma"] != s1["vbar_sigma"]
