"""The per-chunk state an engine keeps between Hessian-vector products (``ChunkStates``), within a byte budget and
valid while the model's weights are unchanged, and what an operator holding one reports about it (``KeptState``);
``HessianOperator`` and ``BatchedHessianOperator`` both build on them."""
from __future__ import annotations

from collections.abc import Callable

import torch


class ChunkStates:
    """Engine states of chunks 0, 1, ... of one pass over the data, kept while every parameter and buffer equals
    (``torch.equal``) the values they were built with and their bytes (``state.nbytes``) fit ``budget_bytes``;
    chunks past the budget get ``None`` and are built again at every product.

    Per product: ``accumulate`` (or by hand: ``begin()``, which drops everything after a weight change, then
    ``apply(i, build, engine, tangents, out)`` for each chunk in order and ``end_pass``). ``kept_chunks``,
    ``kept_bytes``, ``builds`` (state sets started) and ``complete`` (every chunk of the pass kept: the data need not
    be read) describe it."""

    def __init__(self, model: torch.nn.Module, budget_bytes: float):
        self.model, self.budget_bytes = model, budget_bytes
        self.states: list | None = None
        self.builds = 0
        self.n_chunks: int | None = None          # chunks in one pass (known after the first full pass)
        self._snapshot: list[torch.Tensor] | None = None

    @property
    def kept_chunks(self) -> int:
        """Chunks whose state is kept now (0 before the first product and after a weight change)."""
        return 0 if self.states is None else sum(s is not None for s in self.states)

    @property
    def kept_bytes(self) -> int:
        """Bytes of the kept states."""
        return 0 if self.states is None else sum(s.nbytes for s in self.states if s is not None)

    @property
    def complete(self) -> bool:
        """Whether every chunk of a pass is kept (valid after ``begin()``)."""
        return (self.states is not None and self.n_chunks is not None and len(self.states) == self.n_chunks
                and all(s is not None for s in self.states))

    def _weights(self) -> list[torch.Tensor]:
        return [t.detach() for t in (*self.model.parameters(), *self.model.buffers())]

    def _unchanged(self) -> bool:
        current = self._weights()
        return (self._snapshot is not None and len(current) == len(self._snapshot)
                and all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
                        for a, b in zip(current, self._snapshot)))

    def begin(self) -> None:
        """Start a product: keep the states if the weights are unchanged, else drop them (rebuilt lazily)."""
        if self.states is None or not self._unchanged():
            self.states = []
            self.n_chunks = None
            self._snapshot = [t.clone() for t in self._weights()]
            self.builds += 1

    def end_pass(self, n_chunks: int) -> None:
        """Record that one pass over the data had ``n_chunks`` chunks."""
        self.n_chunks = n_chunks

    def apply(self, i: int, build: Callable[[bool], object], engine, tangents, out) -> None:
        """Add chunk i's product to ``out`` from its kept state, or from ``build(count)`` (a new state; ``count``:
        measure its bytes, only for a chunk seen for the first time), kept if it fits the budget."""
        first = len(self.states) == i
        state = None if first else self.states[i]
        if state is None:
            state = build(first)
        engine.apply(state, tangents, out)
        if first:
            fits = self.kept_bytes + state.nbytes <= self.budget_bytes
            self.states.append(state if fits else None)

    def accumulate(self, engine, builders: Callable, tangents, out, keep: bool) -> None:
        """Add every chunk's product to ``out``. ``builders()`` yields, per chunk in order, a function ``build(count)``
        returning that chunk's new engine state. With ``keep``: kept states are reused, new ones kept within the
        budget, and once every chunk is kept ``builders`` is not called at all (no data read); without: every chunk
        is built for this product and dropped."""
        if not keep:
            for build in builders():
                engine.apply(build(False), tangents, out)
            return
        self.begin()
        if self.complete:
            for state in self.states:
                engine.apply(state, tangents, out)
            return
        n = 0
        for i, build in enumerate(builders()):
            self.apply(i, build, engine, tangents, out)
            n = i + 1
        self.end_pass(n)

    def drop(self) -> None:
        """Free every kept state (rebuilt at the next product)."""
        self.states, self._snapshot, self.n_chunks = None, None, None


class KeptState:
    """What an operator with ``chunk_states`` (a ``ChunkStates``), an engine ``_engine`` and a budget ``keep_bytes``
    reports about its kept state (a base of ``HessianOperator`` and ``BatchedHessianOperator``)."""

    @property
    def kept_chunks(self) -> int:
        """Chunks whose state is kept now (0 before the first product and after a weight change)."""
        return self.chunk_states.kept_chunks

    @property
    def kept_bytes(self) -> int:
        """Bytes of the kept state (at most the operator's budget)."""
        return self.chunk_states.kept_bytes

    @property
    def state_builds(self) -> int:
        """How many times the kept state was (re)started: once, plus once per weight change."""
        return self.chunk_states.builds

    def _keeps(self) -> bool:
        """Whether chunk states may be kept between products (not for "fused" and "rebuild", nor a zero budget)."""
        return getattr(self._engine, "keeps", False) and self.keep_bytes > 0

    def drop_state(self) -> None:
        """Free the kept per-chunk state now (it is rebuilt at the next product)."""
        self.chunk_states.drop()
        self._engine.drop()
