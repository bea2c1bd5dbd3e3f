"""Teacher-student classification tasks with unlimited data and a known Bayes accuracy.

A random teacher network (d inputs, ``width`` tanh units, C classes, weights N(0, 1/fan_in)) gives logits f(x);
labels are drawn from softmax(beta f(x)). ``beta`` sets the difficulty (small beta: noisy labels, low Bayes
accuracy), ``width`` the complexity of the decision boundary. Inputs are standard Gaussian in d dimensions or,
``structured``, Gaussian on a ``rank``-dimensional subspace plus isotropic noise of scale 0.1 (data on a
low-dimensional manifold). The Bayes accuracy is E_x max_c softmax(beta f(x))_c, estimated on the drawn test inputs
(its Monte-Carlo error is that of a mean of values in [1/C, 1] over the test set).
"""
from __future__ import annotations

import torch

from lib.core.checks import check_choice, check_int, check_positive

__all__ = ["INPUTS", "teacher_task"]

INPUTS = ("gaussian", "structured")


def teacher_task(n_train: int, n_test: int, *, d: int = 20, width: int = 16, n_classes: int = 4,
                 beta: float = 4.0, inputs: str = "gaussian", rank: int = 5, seed: int = 0) -> dict:
    """Draw a teacher from ``seed`` and ``n_train`` + ``n_test`` labelled samples; returns {'x', 'y', 'x_test',
    'y_test', 'bayes_accuracy'} (x float32 (n, d), y int64)."""
    check_int("n_train", n_train)
    check_int("n_test", n_test)
    check_int("d", d, 2)
    check_int("width", width)
    check_int("n_classes", n_classes, 2)
    check_positive("beta", beta)
    check_choice("inputs", inputs, INPUTS)
    check_int("rank", rank, 1, d)
    g = torch.Generator().manual_seed(int(seed))
    w1 = torch.randn(d, width, generator=g, dtype=torch.float64) / d ** 0.5
    b1 = 0.5 * torch.randn(width, generator=g, dtype=torch.float64)
    w2 = torch.randn(width, n_classes, generator=g, dtype=torch.float64) / width ** 0.5
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))[0]

    def draw(n):
        if inputs == "gaussian":
            x = torch.randn(n, d, generator=g, dtype=torch.float64)
        else:
            x = torch.randn(n, rank, generator=g, dtype=torch.float64) @ basis.T * (d / rank) ** 0.5 \
                + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
        probs = torch.softmax(beta * (torch.tanh(x @ w1 + b1) @ w2) * n_classes ** 0.5, dim=1)
        y = torch.multinomial(probs, 1, generator=g).squeeze(1)
        return x.float(), y, probs

    x, y, _ = draw(n_train)
    xt, yt, pt = draw(n_test)
    return {"x": x, "y": y, "x_test": xt, "y_test": yt, "bayes_accuracy": float(pt.max(dim=1).values.mean())}
