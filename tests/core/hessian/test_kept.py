"""``lib.core.hessian.kept.ChunkStates`` on its own: states built once per chunk and reused, the byte budget, a
weight change (any parameter or buffer) starting over, ``complete`` and ``drop``."""
from dataclasses import dataclass

import torch
from torch import nn

from lib.core.hessian.kept import ChunkStates


@dataclass
class State:
    chunk: int
    nbytes: int


class Adder:
    """An engine whose product of chunk i adds i + 1 to out[0]."""
    def apply(self, state, tangents, out):
        out[0] += state.chunk + 1


def one_product(states, engine, n_chunks, built, size=10):
    out = [0]
    states.begin()
    for i in range(n_chunks):
        states.apply(i, lambda count, i=i: built.append((i, count)) or State(i, size), engine, None, out)
    states.end_pass(n_chunks)
    return out[0]


def test_states_are_built_once_kept_within_budget_and_dropped_on_weight_change():
    model = nn.BatchNorm1d(2)                         # a parameter and buffers
    states, engine, built = ChunkStates(model, budget_bytes=25), Adder(), []
    assert one_product(states, engine, 3, built) == 6
    assert built == [(0, True), (1, True), (2, True)]
    assert (states.kept_chunks, states.kept_bytes, states.builds, states.complete) == (2, 20, 1, False)
    built.clear()
    assert one_product(states, engine, 3, built) == 6
    assert built == [(2, False)]                      # past the budget: built again, bytes not measured
    with torch.no_grad():
        model.running_mean += 1.0                     # a buffer moved: everything starts over
    built.clear()
    assert one_product(states, engine, 3, built) == 6
    assert built == [(0, True), (1, True), (2, True)] and states.builds == 2
    roomy = ChunkStates(model, budget_bytes=1e9)
    one_product(roomy, engine, 3, [])
    roomy.begin()
    assert roomy.complete and roomy.kept_chunks == 3
    roomy.drop()
    assert (roomy.kept_chunks, roomy.kept_bytes, roomy.complete) == (0, 0, False)


def test_accumulate_reads_no_chunk_once_all_are_kept_and_builds_every_chunk_without_keeping():
    model, engine = nn.Linear(2, 2), Adder()
    passes, built = [], []

    def builders():
        passes.append(1)
        for i in range(3):
            yield lambda count, i=i: built.append((i, count)) or State(i, 10)

    states = ChunkStates(model, budget_bytes=1e9)
    for _ in range(3):
        out = [0]
        states.accumulate(engine, builders, None, out, keep=True)
        assert out[0] == 6
    assert len(passes) == 1 and built == [(0, True), (1, True), (2, True)] and states.complete
    passes.clear(), built.clear()
    streaming = ChunkStates(model, budget_bytes=1e9)
    for _ in range(2):
        out = [0]
        streaming.accumulate(engine, builders, None, out, keep=False)
        assert out[0] == 6
    assert len(passes) == 2 and built == [(i, False) for i in range(3)] * 2 and streaming.kept_chunks == 0
