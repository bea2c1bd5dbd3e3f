"""Stages: one module per notebook, named like the notebook and its profile section.

Each stage module has one entry point ``run(store, common, section)`` that loops over the profile's runs, skips
what is already computed with identical parameters and saves with provenance; it also has the loaders later
stages use. ``REGISTRY`` says which notebook runs a stage and which result folders it writes, in the order the
runner runs them (06_figures, which reads every other stage's results, last: after 07_your_model).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    name: str          # profile section and module name
    notebook: str      # notebooks/<notebook>.py
    folders: tuple     # result folders under results/<profile>/ written by this stage


REGISTRY: dict[str, StageInfo] = {s.name: s for s in (
    StageInfo("train", "01_train", ("train",)),
    StageInfo("spectrum", "02_spectrum", ("spectrum", "solvers")),
    StageInfo("projection", "03_projection", ("projection",)),
    StageInfo("monte_carlo", "04_monte_carlo", ("curves", "terms", "plan", "scales", "full_space", "speed")),
    StageInfo("convergence", "05_convergence", ("analysis", "learning_curve", "r0", "pilots", "cnn_bound")),
    StageInfo("your_model", "07_your_model", ("your_model",)),
    StageInfo("figures", "06_figures", ()),   # reads every stage's results: the runner runs it last
)}


def folder(stage: str, name: str) -> str:
    """The result folder ``name`` of ``stage`` (KeyError-free check that the registry declares it)."""
    if name not in REGISTRY[stage].folders:
        raise ValueError(f"stage {stage!r} does not write the result folder {name!r}; "
                         f"it writes {list(REGISTRY[stage].folders)} (lib/stages/__init__.py)")
    return name


def writer_of(result_folder: str) -> StageInfo:
    """The stage that writes ``result_folder``."""
    for info in REGISTRY.values():
        if result_folder in info.folders:
            return info
    raise ValueError(f"no stage writes the result folder {result_folder!r}")
