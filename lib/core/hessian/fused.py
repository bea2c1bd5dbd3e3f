"""The fused engine: Hessian-vector products of conv-pool CNNs by the native kernel ``lib.core.native.fused_cnn.hvp``
(forward, tangent and backward pass per image in cache; nothing kept between products)."""
from __future__ import annotations

import torch
from torch import nn

from lib.core.hessian.structured import Structured
from lib.core.native import fused_cnn
from lib.core.tensors import unflatten
from lib.core.training.models import Step, step_weights


def applies(steps: list[Step] | None, model: nn.Module, targets: torch.Tensor) -> bool:
    """Whether the kernel runs this plan, model and targets (``lib.core.native.fused_cnn.applies``: a float32 CPU model
    of conv-pool stages and one Linear, class targets, a kernel built here)."""
    return fused_cnn.applies(steps, list(model.parameters()), targets)


class FusedEngine:
    """H v (loss sum over all samples) in one kernel call; the structured engine's plan supplies the layer order,
    the weights and the flat layout of the result."""

    name = "fused"

    def __init__(self, structured: Structured, inputs: torch.Tensor, targets: torch.Tensor):
        self.structured = structured
        self.x32 = inputs.to(torch.float32).contiguous()
        self.y64 = targets.to(torch.int64).contiguous()

    def hvp_sum(self, v: torch.Tensor) -> torch.Tensor:
        """H v of the loss sum (divide by N for the mean loss's) for the flat ``v``."""
        st = self.structured
        names = [n for n in st.param_names if n is not None]
        tangents = step_weights(unflatten(st.model, v), st.param_names)
        weights = [None if s.module is None else st.weights(k) for k, s in enumerate(st.steps)]
        parts = fused_cnn.hvp(st.steps, weights, tangents, self.x32, self.y64)
        out = {}
        for (wname, bname), (hw, hb) in zip(names, parts):
            out[wname] = hw
            if bname:
                out[bname] = hb
        return st.flat(out, v)

    def drop(self) -> None:
        """Nothing is kept."""
