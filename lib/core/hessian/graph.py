"""The graph engine: each chunk's gradient kept with its autograd graph (``create_graph=True``) and differentiated
again per product; works for any model and the class-index cross-entropy."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lib.core.tensors import unflatten


def loss_sum(model: nn.Module, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the chunk (x, y) at the flat weights ``w`` (``functional_call``: the model's own
    parameters are not touched)."""
    return F.cross_entropy(functional_call(model, unflatten(model, w), (x,)), y, reduction="sum")


class SavedBytes:
    """Bytes of the tensors autograd saves inside ``counting()`` (storages counted once; the data set's own
    storage, which is not held for the graph, is not counted)."""

    def __init__(self, data: torch.Tensor | None):
        self.total = 0
        self._seen: set = set()
        self._data = (data.untyped_storage().data_ptr() if torch.is_tensor(data) and data.device.type != "meta"
                      else None)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen and key != self._data:
            self._seen.add(key)
            self.total += storage.nbytes()
        return t

    def counting(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)


@dataclass(eq=False)
class GraphState:
    """A chunk's gradient g(w) with its autograd graph (``create_graph=True``) and the leaf w it was taken at."""
    w: torch.Tensor
    g: torch.Tensor
    nbytes: int


class GraphEngine:
    """Products from each chunk's kept gradient graph: H v (loss sum) = d(g . v)/dw by ``autograd.grad`` with
    ``retain_graph=True``, so the graph serves every later product while the weights are unchanged.

    ``data``: the data set whose storage the kept bytes do not count (None: count everything); ``loss(w, x, y)``:
    the chunk's summed loss at flat weights w (None: ``loss_sum``, the class-index cross-entropy)."""

    name = "graph"
    #: the per-chunk states are kept between products (within the operator's budget)
    keeps = True

    def __init__(self, model: nn.Module, data: torch.Tensor | None, loss=None):
        self.model, self.data = model, data
        self.loss = loss or (lambda w, x, y: loss_sum(model, w, x, y))

    def start(self, v: torch.Tensor, w0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tangent v, zero accumulator) for one product."""
        return v, torch.zeros_like(w0)

    def build(self, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, count: bool = True) -> GraphState:
        """The chunk's gradient graph at the flat weights ``w0`` (``count``: measure the bytes autograd saves)."""
        w = w0.clone().requires_grad_(True)
        sizes = SavedBytes(self.data)
        with sizes.counting() if count else contextlib.nullcontext():
            (g,) = torch.autograd.grad(self.loss(w, x, y), w, create_graph=True)
        return GraphState(w, g, sizes.total + g.numel() * g.element_size())

    def apply(self, state: GraphState, tangents: torch.Tensor, out: torch.Tensor) -> None:
        """Add the chunk's H v (loss sum) to the flat ``out``."""
        if state.g.requires_grad:                 # else piecewise-linear in w on this chunk: zero curvature
            out += torch.autograd.grad(state.g, state.w, grad_outputs=tangents, retain_graph=True)[0]

    def finish(self, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The summed product (already flat)."""
        return out

    def drop(self) -> None:
        """Nothing beyond the states (which the operator holds)."""
