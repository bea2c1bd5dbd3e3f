"""What every stage shares: cached computation in the result store, missing results run in parallel, and the
plain-text tables the notebooks print."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lib.infra.parallel import run_tasks
from lib.infra.results import ResultStore
from lib.records import writer_of


def cached(store: ResultStore, folder: str, name: str, params: dict, compute: Callable[[], tuple[Any, dict]], *,
           ext: str = "pt", force: bool = False) -> tuple[dict, bool]:
    """Return ``(summary, skipped)``: reuse an intact result with identical params, else run ``compute()``.

    ``compute`` returns ``(payload, summary)``; it is saved with its wall time and provenance.
    """
    if not force and store.is_done(folder, name, params):
        return store.meta(folder, name)["summary"], True
    # a result with other parameters is replaced only where the store allows it: stop before computing
    store.check_replace(folder, name, params, notebook=_notebook_of(folder))
    t0 = time.perf_counter()
    payload, summary = compute()
    seconds = time.perf_counter() - t0
    store.save(folder, name, payload, params, ext=ext, seconds=seconds, summary={**summary, "seconds": seconds})
    return {**summary, "seconds": seconds}, False


def run_missing(store: ResultStore, tasks: list[dict], fn: Callable[..., Any], workers: int = 1, *,
                cost: Callable[[dict], float] | None = None, report: Callable[[Any], None] | None = None,
                progress: bool = False, desc: str = "tasks") -> list:
    """``[fn(**t["kwargs"]) for t in tasks]`` for a cached result writer ``fn``; each task names its result
    (``folder``, ``name``, ``params``). With ``workers`` > 1 the tasks whose result is missing run that many at a
    time in spawned processes (``lib.infra.parallel``), the largest ``cost(params)`` first; the others are read
    here, in order. ``report(result)`` is called for each result in task order as soon as it is at hand."""
    todo = [i for i, t in enumerate(tasks) if not store.is_done(t["folder"], t["name"], t["params"])]
    computed = {}
    if workers > 1 and len(todo) > 1:
        if cost is not None:
            todo.sort(key=lambda i: -cost(tasks[i]["params"]))
        print(f"{desc}: {len(todo)} to compute, {min(workers, len(todo))} at a time", flush=True)
        computed = dict(zip(todo, run_tasks(fn, [tasks[i]["kwargs"] for i in todo], workers=workers,
                                            progress=progress, desc=desc)))
    out = []
    for i, t in enumerate(tasks):
        out.append(computed[i] if i in computed else fn(**t["kwargs"]))
        if report is not None:
            report(out[-1])
    return out


def _notebook_of(folder: str) -> str | None:
    try:
        return writer_of(folder).notebook
    except ValueError:      # a folder no stage declares (ad-hoc use of cached)
        return None


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (floats with 4 significant digits)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
