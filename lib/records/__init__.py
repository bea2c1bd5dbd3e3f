"""Records: what every stage saves and how to read it back, imported by the stages and the outputs alike.

``REGISTRY`` names each stage, the notebook that runs it, the result folders it writes and the module whose
``run(store, common, section)`` is its entry point, in the order the runner runs them (06_figures, which reads
every other stage's results, last: after 07_your_model). Adding a stage is one line here. The modules of this
package hold, per stage, its result folders, run names, specs (``CurveSpec``) and loaders; ``runs`` holds what
they share (``load``, ``run_name``, the trained model of a run).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    name: str          # profile section and module name
    notebook: str      # notebooks/<notebook>.py
    folders: tuple     # result folders under results/<profile>/ written by this stage
    module: str = ""   # the module with run(store, common, section); "" = lib.stages.<name>

    @property
    def entry(self) -> str:
        """The dotted module whose ``run`` is the stage's entry point."""
        return self.module or f"lib.stages.{self.name}"


REGISTRY: dict[str, StageInfo] = {s.name: s for s in (
    StageInfo("train", "01_train", ("train",)),
    StageInfo("spectrum", "02_spectrum", ("spectrum", "solvers")),
    StageInfo("projection", "03_projection", ("projection",)),
    StageInfo("monte_carlo", "04_monte_carlo", ("curves", "terms", "plan", "scales", "full_space", "speed")),
    StageInfo("convergence", "05_convergence", ("analysis", "learning_curve", "r0", "pilots", "cnn_bound", "seeds")),
    StageInfo("your_model", "07_your_model", ("your_model",)),
    StageInfo("prediction", "08_prediction", ("prediction",)),
    # reads every stage's results and writes the paper's outputs: the runner runs it last
    StageInfo("figures", "06_figures", (), module="lib.outputs.registry"),
)}


def folder(stage: str, name: str) -> str:
    """The result folder ``name`` of ``stage`` (KeyError-free check that the registry declares it)."""
    if name not in REGISTRY[stage].folders:
        raise ValueError(f"stage {stage!r} does not write the result folder {name!r}; "
                         f"it writes {list(REGISTRY[stage].folders)} (lib/records/__init__.py)")
    return name


def writer_of(result_folder: str) -> StageInfo:
    """The stage that writes ``result_folder``."""
    for info in REGISTRY.values():
        if result_folder in info.folders:
            return info
    raise ValueError(f"no stage writes the result folder {result_folder!r}")
