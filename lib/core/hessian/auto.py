"""The engine choice of ``HessianOperator``: ``engine="auto"`` takes the fused kernel where it applies, else the
structured R-op where ``lib.core.training.models.plan`` reads the model, else the kept autograd graphs; a named
engine is
checked against the model and data."""
from __future__ import annotations

import torch
from torch import nn

from lib.core.checks import ParameterError, check_choice
from lib.core.hessian.fused import FusedEngine, applies
from lib.core.hessian.graph import GraphEngine
from lib.core.hessian.rebuild import RebuildEngine
from lib.core.hessian.structured import Structured
from lib.core.native import status
from lib.core.training.models import plan, plan_accepts

ENGINES = ("auto", "fused", "structured", "graph", "rebuild")


def engine_for(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, engine: str, dtype: torch.dtype):
    """The engine object (its ``name``: "fused", "structured", "graph" or "rebuild") for ``engine`` on this model
    and data. "fused" and "structured" need a model that ``plan`` reads and accepts with these inputs and
    class-index targets ("fused" also ``fused_cnn.applies``); "auto" falls back as the module docstring says."""
    engine = check_choice("engine", engine, ENGINES)
    steps = plan(model) if engine in ("auto", "structured", "fused") and not targets.is_floating_point() else None
    if steps is not None and not plan_accepts(steps, inputs[:1].to(dtype)):
        steps = None
    if engine == "structured" and steps is None:
        raise ParameterError("engine", engine, "a model that lib.core.training.models.plan reads (Flatten, Linear, "
                             "ReLU, conv-pool stages) with inputs it accepts and class-index targets",
                             hint="use engine='auto' or 'graph'")
    fusable = applies(steps, model, targets)
    if engine == "fused" and not fusable:
        raise ParameterError("engine", engine, "a float32 CPU model of conv-pool stages and one Linear "
                             f"(lib.core.native.fused_cnn.supports) and a kernel built here "
                             f"({status()['fused_cnn']['reason'] or 'it is'})", hint="use engine='auto'")
    if engine in ("auto", "fused") and fusable:
        return FusedEngine(Structured(model, steps, inputs), inputs, targets)
    if steps is not None:
        return Structured(model, steps, inputs)
    return GraphEngine(model, inputs) if engine in ("auto", "graph") else RebuildEngine(model, inputs)
