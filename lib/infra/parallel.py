"""Independent, cached computations side by side in worker processes (``common.workers``).

``run_tasks(fn, tasks, workers)`` calls ``fn(**task)`` for every task and returns the results in order: in this
process when ``workers`` is 1 (or there is at most one task), else in ``workers`` spawned processes. The tasks of
the pipeline are cached result writers (a training, a pilot): each fixes its own intra-op thread count from its
parameters, so a result does not depend on ``workers``, and each writes its result atomically under its own name.
On the 2-core machine two one-thread trainings side by side ran 1.3-1.7x the steps per second of one two-thread
training (docs/benchmarks.md); Hessian-vector products and Monte-Carlo forward passes use both threads well and
stay in the parent process.

``fn`` must be importable (a module-level function) and the tasks picklable (plain values, a ``ResultStore``).
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
from tqdm import tqdm

__all__ = ["run_tasks"]


def _start_worker() -> None:
    torch.set_num_threads(1)          # a task sets its own count; this keeps an idle worker from spinning two


def run_tasks(fn: Callable[..., Any], tasks: list[dict], workers: int = 1, *, progress: bool = False,
              desc: str = "tasks") -> list[Any]:
    """``[fn(**t) for t in tasks]``, with ``workers`` processes when there are at least two tasks. A task that
    raises stops the run: the first error is raised here once the running tasks have finished."""
    if workers <= 1 or len(tasks) <= 1:
        return [fn(**t) for t in tqdm(tasks, desc=desc, disable=not progress, leave=False)]
    results: list[Any] = [None] * len(tasks)
    context = multiprocessing.get_context("spawn")       # no fork of a process that holds torch's thread pools
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context,
                             initializer=_start_worker) as pool:
        futures = {pool.submit(fn, **t): i for i, t in enumerate(tasks)}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not progress,
                               leave=False):
                results[futures[future]] = future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
