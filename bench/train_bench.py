"""Training rows of ``make bench``: ``lib.core.training.recipe.train`` (fused Adam, channels-last convolutions)
against the
textbook loop (``textbook_train``), and two one-thread trainings side by side (``common.workers = 2``,
``lib.infra.parallel``) against one two-thread training.

Both are wall-time ratios measured in this run on the recipe's minibatches (batch 64, MNIST): the first as the
median over interleaved repeats, the second from two spawned workers that start their timed training at the same
instant (their start-up is not timed) against the same training with two threads in this process, measured just
before and after (the faster one is used).

The prediction benchmark's trainings (``lib.core.training.many_models``): M small models trained at once (stacked
parameters, one vmapped forward) against the same M trainings one at a time (``train_one``, the same minibatches),
in trainings per minute on one thread, for the benchmark's MLP and softmax regression on 14 x 14 MNIST
(target: >= ``TARGET_MANY_MLP`` for the MLP).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from lib.core.tensors import torch_threads
from lib.core.training import models
from lib.core.training.many_models import train_many, train_one
from lib.core.training.recipe import textbook_train, train
from lib.core.training.task_models import build_task_model
from lib.infra import data
from lib.infra.parallel import run_tasks

BATCH, LR = 64, 1e-3
#: stacked trainings of the benchmark's MLP: at least this many times the trainings per minute of one at a time
TARGET_MANY_MLP = 3.0


def _one_training(model: str, n: int, epochs: int, threads: int, textbook: bool = False,
                  start_at: float | None = None) -> float:
    """Seconds of one training of a seed-0 ``model`` on the first n MNIST images (``start_at``: a time.time() to
    wait for before starting the clock, so that workers run side by side)."""
    x, y = data.training_subset("mnist", n, 0)
    net = models.build(model, 0)
    with torch_threads(threads):
        if start_at is not None:
            time.sleep(max(0.0, start_at - time.time()))
        t0 = time.perf_counter()
        if textbook:
            textbook_train(net, x, y, epochs=epochs, batch_size=BATCH, lr=LR, seed=0)
        else:
            train(net, x, y, epochs=epochs, batch_size=BATCH, lr=LR, seed=0, progress=False)
        return time.perf_counter() - t0


def trainer_speedup(model: str, n: int, epochs: int, repeats: int = 3, threads: int = 2) -> dict:
    """Textbook-loop seconds over ``train`` seconds (medians of interleaved repeats, after one warm-up each)."""
    _one_training(model, min(n, 512), 1, threads, textbook=True)
    _one_training(model, min(n, 512), 1, threads)
    plain, fast = [], []
    for _ in range(repeats):
        plain.append(_one_training(model, n, epochs, threads, textbook=True))
        fast.append(_one_training(model, n, epochs, threads))
    value = statistics.median(plain) / statistics.median(fast)
    return {"measure": f"training step speed-up of lib.core.training.recipe over the textbook loop, {model}",
            "value": value, "textbook_seconds": plain, "train_seconds": fast, "n": n, "epochs": epochs,
            "threads": threads}


def side_by_side_gain(model: str, n: int, epochs: int, workers: int = 2) -> dict:
    """Throughput of ``workers`` one-thread trainings side by side over one ``workers``-thread training."""
    alone = [_one_training(model, n, epochs, workers)]
    start = time.time() + 15.0                     # spawned workers import torch and load the data first
    side = run_tasks(_one_training, [{"model": model, "n": n, "epochs": epochs, "threads": 1, "start_at": start}
                                     for _ in range(workers)], workers=workers)
    alone.append(_one_training(model, n, epochs, workers))
    value = (workers / max(side)) / (1 / min(alone))
    return {"measure": f"{workers} one-thread trainings side by side / one {workers}-thread training "
                       f"(throughput), {model}", "value": value, "side_by_side_seconds": side,
            "alone_seconds": alone, "n": n, "epochs": epochs}


def many_models_throughput(family: str, n_models: int, steps: int) -> dict:
    """Trainings per minute of ``n_models`` stacked trainings over the same trainings one at a time (one thread,
    14 x 14 MNIST, sizes 100..n of the first 5,000 images, the benchmark's recipe)."""
    x, y = data.training_subset("mnist", 5000, 0)
    x = F.avg_pool2d(x, 2)
    nets = [build_task_model(family, (1, 14, 14), 10, s % 3) for s in range(n_models)]
    subsets = [torch.arange(100 + (4900 * i) // max(n_models - 1, 1)) for i in range(n_models)]
    with torch_threads(1):
        t0 = time.perf_counter()
        train_many(nets, x, y, subsets, list(range(n_models)), steps=steps, batch_size=BATCH, lr=LR)
        stacked = time.perf_counter() - t0
        single = []
        for i in range(min(n_models, 8)):            # one at a time: 8 of them, scaled to n_models
            t0 = time.perf_counter()
            train_one(nets[i], x, y, subsets[i], i, steps=steps, batch_size=BATCH, lr=LR)
            single.append(time.perf_counter() - t0)
    per_minute_stacked = 60 * n_models / stacked
    per_minute_single = 60 / statistics.mean(single)
    return {"measure": f"stacked / one-at-a-time trainings per minute, {n_models} {family}s, 1 thread",
            "value": per_minute_stacked / per_minute_single, "stacked_per_minute": per_minute_stacked,
            "single_per_minute": per_minute_single, "steps": steps,
            "target": TARGET_MANY_MLP if family == "mlp" else None, "kind": "min" if family == "mlp" else None}


def run(quick: bool = False, log=None) -> list[dict]:
    n, epochs = (1000, 1) if quick else (5000, 2)
    rows = []
    for family in ("mlp", "linear"):
        if log:
            log(f"training: {family} x 64 stacked against one at a time")
        rows.append(many_models_throughput(family, 16 if quick else 64, 50 if quick else 200))
    for model in ("cnn", "mlp2"):
        if log:
            log(f"training: {model}, n = {n}, {epochs} epochs")
        rows.append(trainer_speedup(model, n, epochs, repeats=1 if quick else 3))
        rows.append(side_by_side_gain(model, n, epochs))
    return rows
