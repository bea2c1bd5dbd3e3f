"""Learning curves and pilots of the prediction benchmark, on tensors: what a practitioner can measure.

* ``learning_curve``: test accuracy of the recipe trained on the first n samples, for every size and seed (all
  trainings at once, ``lib.core.training.many_models``): the curve that defines a task's target;
* ``pilot_curve``: the same on the first ``n0`` samples only, with the accuracy measured inside them: ``folds``
  contiguous blocks of the n0 samples take turns as the validation set while the model trains on the first n of the
  other samples (in insertion order). Nothing beyond sample n0 is read;
* ``landscape_features``: at a pilot model's weights w*, the top-D Hessian eigenvectors of its own training loss,
  V-bar = E_theta[population variance of the per-sample losses at w* + P^T theta] at a fixed sigma and at the
  pilot's loss-gap sigma (the sigma at which the mean training loss rises by the pilot's validation-minus-training
  loss gap), with the Hessian products and forward passes they cost.

A ``factory(seed)`` returns a freshly initialised model; the recipe is ``steps`` Adam steps (``batch_size``,
``lr``) for every size.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from lib.core import hessian
from lib.core.checks import ParameterError, check_int
from lib.core.landscape.sampling import make_sampler
from lib.core.landscape.subspace import SubspaceLosses
from lib.core.sample_size.prediction import bootstrap_power_law, fold_curve, size_grid
from lib.core.sample_size.predictors import HIGH_SHOT
from lib.core.sample_size.sufficient import loss_gap_scale
from lib.core.training.many_models import evaluate_many, train_many

__all__ = ["learning_curve", "pilot_curve", "landscape_features", "pilot_estimates"]


def _chunk(model) -> int:
    n = sum(p.numel() for p in model.parameters())
    return 16 if n > 20_000 or any(isinstance(m, torch.nn.LayerNorm) for m in model.modules()) else 64


def learning_curve(factory, x, y, x_test, y_test, sizes, seeds: int, *, steps: int, batch_size: int = 64,
                   lr: float = 1e-3) -> dict:
    """{'sizes', 'accuracy' (n_sizes, seeds), 'loss' (n_sizes, seeds), 'seconds'}: seed s initialises every size's
    model alike (``factory(s)``) and draws its own minibatches."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.max() > len(x):
        raise ParameterError("sizes", int(sizes.max()), f"at most the pool size {len(x)}")
    t0 = time.perf_counter()
    inits = [factory(s) for s in range(seeds)]
    models, subsets, batch_seeds = [], [], []
    for i, n in enumerate(sizes):
        for s in range(seeds):
            models.append(inits[s])
            subsets.append(torch.arange(int(n)))
            batch_seeds.append(1_000_003 * s + i)
    stack = train_many(models, x, y, subsets, batch_seeds, steps=steps, batch_size=batch_size, lr=lr,
                       chunk=_chunk(inits[0]))
    ev = evaluate_many(stack, x_test, y_test)
    shape = (len(sizes), seeds)
    return {"sizes": sizes.tolist(), "accuracy": ev["accuracy"].reshape(shape).numpy(),
            "loss": ev["loss"].reshape(shape).numpy(), "seconds": time.perf_counter() - t0}


def pilot_curve(factory, x, y, n0: int, *, folds: int = 4, ratio: float = 1.5, n_min: int = 24, steps: int,
                batch_size: int = 64, lr: float = 1e-3, seed: int = 0, train_fn=None) -> dict:
    """A pilot's own learning curve on the first ``n0`` samples of (x, y), validated inside them.

    ``train_fn(model, x, y, seed)``, if given, trains one model at a time (returning the trained model) instead of
    the recipe of ``lib.core.training.many_models`` (all trainings at once).

    Returns {'sizes', 'accuracy' (n_sizes, folds) on each fold's validation block, 'loss' (the same, mean
    cross-entropy), 'model' (the fold-0 model at the largest size), 'train_index', 'val_index' (its training and
    validation samples, indices < n0), 'seconds'}."""
    check_int("n0", n0, 2 * folds)
    check_int("folds", folds, 2)
    if n0 > len(x):
        raise ParameterError("n0", n0, f"at most the number of samples given ({len(x)})")
    t0 = time.perf_counter()
    xp, yp = x[:n0], y[:n0]                                    # the pilot never reads past sample n0
    bounds = np.linspace(0, n0, folds + 1).round().astype(int)
    val = [torch.arange(bounds[f], bounds[f + 1]) for f in range(folds)]
    train_pool = [torch.cat([torch.arange(0, bounds[f]), torch.arange(bounds[f + 1], n0)]) for f in range(folds)]
    sizes = size_grid(min(len(t) for t in train_pool), min(n_min, n0 // 2), ratio)
    inits = [factory(seed * 1000 + f) for f in range(folds)]
    models, subsets, batch_seeds = [], [], []
    for i, n in enumerate(sizes):
        for f in range(folds):
            models.append(inits[f])
            subsets.append(train_pool[f][:int(n)])
            batch_seeds.append(2_000_003 * (seed * 1000 + f) + i)
    acc = np.zeros((len(sizes), folds))
    loss = np.zeros((len(sizes), folds))
    last = (len(sizes) - 1) * folds                          # fold 0 at the largest size
    if train_fn is None:
        stack = train_many(models, xp, yp, subsets, batch_seeds, steps=steps, batch_size=batch_size, lr=lr,
                           chunk=_chunk(inits[0]))
        for f in range(folds):
            ev = evaluate_many(stack, xp[val[f]], yp[val[f]])
            acc[:, f] = ev["accuracy"].numpy().reshape(len(sizes), folds)[:, f]
            loss[:, f] = ev["loss"].numpy().reshape(len(sizes), folds)[:, f]
        model = stack.model(last)
    else:
        for m, (init, subset, bs) in enumerate(zip(models, subsets, batch_seeds)):
            i, f = divmod(m, folds)
            net = train_fn(copy.deepcopy(init), xp[subset], yp[subset], bs).eval()
            with torch.no_grad():
                logits = net(xp[val[f]])
            acc[i, f] = float((logits.argmax(1) == yp[val[f]]).double().mean())
            loss[i, f] = float(torch.nn.functional.cross_entropy(logits, yp[val[f]]))
            if m == last:
                model = net
    return {"sizes": sizes.tolist(), "accuracy": acc, "loss": loss, "model": model,
            "train_index": train_pool[0][:int(sizes[-1])], "val_index": val[0],
            "seconds": time.perf_counter() - t0}


def landscape_features(net, x, y, x_val, y_val, *, D: int, sigma: float, n_thetas: int = 32, gap_thetas: int = 8,
                       tol: float = 1e-3, seed: int = 0) -> dict:
    """Top-D Hessian subspace of ``net``'s mean loss on (x, y), V-bar there at ``sigma`` and at the loss-gap sigma
    (None where the validation loss is not above the training loss), the loss gap, lambda_1 and the costs."""
    t0 = time.perf_counter()
    op = hessian.HessianOperator(net, x, y)
    top = hessian.top_eigenpairs(op, D, tol=tol, seed=seed)
    losses = SubspaceLosses(net, x, y, top.eigenvectors)
    z = make_sampler("gaussian", sigma=1.0).sample(n_thetas, D, seed=seed)
    forward = [1]
    with torch.no_grad():
        base_losses = losses(torch.zeros(1, D, dtype=torch.float64)).double()
        train_loss = float(base_losses.mean())
        val_loss = float(torch.nn.functional.cross_entropy(net(x_val), y_val))

    def vbar_at(scale: float) -> float:
        forward[0] += n_thetas
        with torch.no_grad():
            return float(losses(scale * z).double().var(dim=1, unbiased=False).mean())

    zg = z[:gap_thetas]

    def rise(scale: float) -> float:
        forward[0] += len(zg)
        with torch.no_grad():
            return float(losses(scale * zg).double().mean()) - train_loss

    gap = val_loss - train_loss
    sigma_gap = None
    if gap > 0:
        try:
            sigma_gap = loss_gap_scale(rise, gap, float(top.eigenvalues.sum()))
        except ValueError:           # the rise never brackets the gap (a flat or non-monotone direction set)
            sigma_gap = None
    return {"N": int(len(x)), "D": D, "sigma": sigma, "vbar_sigma": vbar_at(sigma), "sigma_gap": sigma_gap,
            "vbar_gap": vbar_at(sigma_gap) if sigma_gap else None, "gap": gap, "train_loss": train_loss,
            "val_loss": val_loss, "lambda_1": float(top.eigenvalues[0]),
            "eigenvalues": [float(v) for v in top.eigenvalues], "hessian_products": int(top.hvp_count),
            "forward_passes": forward[0], "seconds": time.perf_counter() - t0}


def pilot_estimates(factory, x, y, n0: int, n_max: int, eps_list, *, folds: int = 4, ratio: float = 1.5,
                    n_min: int = 24, steps: int, batch_size: int = 64, lr: float = 1e-3, n_boot: int = 100,
                    level: float = 0.9, D: int, sigma: float, n_thetas: int = 32, gap_thetas: int = 8, seed: int = 0,
                    train_fn=None) -> dict:
    """Everything a pilot on the first ``n0`` samples measures, in the one sequence the benchmark and
    ``lib.api.predict_sample_size`` share: its own learning curve (``pilot_curve``), its error and standard error
    per size, the power law and its high-shot variant (sizes >= ``HIGH_SHOT`` of the largest) with bootstrap
    intervals for every eps of ``eps_list``, and the landscape features of its fold-0 model at the largest size.
    Returns {'curve', 'error', 'stderr', 'power_law', 'high_shot_power_law', 'landscape'}."""
    pc = pilot_curve(factory, x, y, n0, folds=folds, ratio=ratio, n_min=n_min, steps=steps, batch_size=batch_size,
                     lr=lr, seed=seed, train_fn=train_fn)
    sizes = np.asarray(pc["sizes"])
    err, se = fold_curve(pc["accuracy"])
    pl = bootstrap_power_law(sizes, err, se, eps_list, n_max, n_boot, seed=seed, level=level)
    high = sizes >= HIGH_SHOT * sizes[-1]
    hs = bootstrap_power_law(sizes[high], err[high], se[high], eps_list, n_max, n_boot, seed=seed + 1, level=level)
    xp, yp = x[:n0], y[:n0]
    lf = landscape_features(pc["model"], xp[pc["train_index"]], yp[pc["train_index"]], xp[pc["val_index"]],
                            yp[pc["val_index"]], D=D, sigma=sigma, n_thetas=n_thetas, gap_thetas=gap_thetas,
                            seed=seed)
    return {"curve": pc, "error": err, "stderr": se, "power_law": pl, "high_shot_power_law": hs, "landscape": lf}
