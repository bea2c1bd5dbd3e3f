"""The rebuild engine: the graph engine's products with nothing kept, each chunk's gradient graph built again for
every product (the least memory; the reference the kept engines are tested against)."""
from __future__ import annotations

from lib.core.hessian.graph import GraphEngine


class RebuildEngine(GraphEngine):
    """``GraphEngine`` whose chunk states are never kept: the operator builds each one (bytes not measured) for the
    product at hand and drops it."""

    name = "rebuild"
    keeps = False
