"""The teacher task (``lib.core.training.teacher``): its Bayes accuracy rises with beta, draws are seeded, structured
inputs lie near a low-dimensional subspace."""
import torch

from lib.core.training.teacher import teacher_task


def test_teacher_bayes_accuracy_rises_with_beta_and_is_seeded():
    low = teacher_task(10, 20_000, beta=1.0, seed=3)["bayes_accuracy"]
    high = teacher_task(10, 20_000, beta=8.0, seed=3)["bayes_accuracy"]
    assert 0.25 < low < high < 1.0
    a, b = teacher_task(50, 10, seed=5), teacher_task(50, 10, seed=5)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    s = teacher_task(2000, 10, inputs="structured", rank=3, seed=5)["x"].double()
    ev = torch.linalg.eigvalsh(torch.cov(s.T))
    assert float(ev[-3:].sum() / ev.sum()) > 0.95          # the data lie near a 3-dimensional subspace
