"""Exact Hessian of a mean per-sample loss (any model, any loss) over a deterministic stream of batches.

``BatchedHessianOperator(model, batches, loss_fn)`` is the Hessian of

    L(w) = (1/N) sum_i loss_fn(model(x_i; w), y_i)       over every sample of every batch,

applied to flat vectors in ``torch.nn.utils.parameters_to_vector`` order, one batch at a time: memory is that of
one batch's double backward plus a few vectors of length n_params, never the data set. ``loss_fn(outputs,
targets)`` returns one loss per sample (shape ``(batch,)``; default: cross-entropy with ``reduction="none"``).

The data (``as_batches``) may be

* a pair of tensors ``(inputs, targets)`` (sliced into ``batch_size`` samples, default the model's preferred
  chunk or ``lib.core.hessian.DEFAULT_CHUNK``),
* a list or tuple of ``(inputs, targets)`` batches,
* a ``torch.utils.data.DataLoader`` (or a map-style ``Dataset``, wrapped in one) that does not shuffle,
* a function of no arguments returning a fresh iterator of batches (data read from disk, say).

Every pass must yield the same samples in the same order (the insertion order of the Monte-Carlo curves): a
shuffling ``DataLoader`` and one-shot iterators (generators) are refused, and a pass that yields another number of
samples than the first raises. Floating inputs and targets are cast to the parameters' dtype, everything is moved
to their device.

The class is a ``lib.core.hessian.ProductOperator``, the protocol the solvers take: it implements ``product``
(streamed over the batches) and inherits ``hvp`` / ``hvp_count``, ``n_params``, ``dtype``, ``device``,
``as_vector``, ``recording()`` / ``records()`` (the Lanczos Ritz step reuses recorded products) and
``hvp_numpy`` / ``linear_operator`` (scipy); ``gradient()`` and ``loss()`` are its own. So::

    op = BatchedHessianOperator(model, loader, loss_fn)
    top = hessian.top_eigenpairs(op, k=10)               # from lib.core import hessian
    tr = hessian.trace(op, n_probes=30)

Products are sums over samples divided by the global N; the sum over this process's batches is ``hvp_sum`` and
``all_sum`` combines partial sums (the identity here; ``lib.core.distributed`` all-reduces over ranks).

Each batch's state is kept between products while the weights are unchanged, within ``keep_state_mb`` (MiB over all
batches; ``lib.core.hessian.kept.ChunkStates``): the first product of a solve reads every batch and builds its
state, later products reuse the kept ones (reading no data once all are kept) and stream only the batches past the
budget. ``engine`` (as ``HessianOperator``'s): ``"structured"`` (``"auto"`` with the default cross-entropy and a
model ``lib.core.training.models.plan`` reads: forward activations, ReLU selections and backward deltas are kept,
a product is one tangent forward and one backward pass of matrix products), ``"graph"`` (``"auto"`` otherwise:
each batch's gradient graph is kept and differentiated again), ``"rebuild"`` (nothing kept: one double backward
per batch and product, the least memory). ``keep_state_mb=0`` keeps nothing with any engine.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.func import functional_call
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

from lib.core.checks import ParameterError, check_choice, check_data, check_int, check_number
from lib.core.hessian.graph import GraphEngine
from lib.core.hessian.kept import ChunkStates, KeptState
from lib.core.hessian.operator import DEFAULT_CHUNK, KEEP_GRAPHS_MB
from lib.core.hessian.products import MAX_RECORDS, ProductOperator
from lib.core.hessian.rebuild import RebuildEngine
from lib.core.hessian.structured import Structured
from lib.core.landscape.subspace import cross_entropy_per_sample
from lib.core.tensors import chunks, eval_mode, flat_params, unflatten
from lib.core.training.models import plan, plan_accepts, preferred_chunk

__all__ = ["Batches", "as_batches", "BatchedHessianOperator", "RECORD_BUDGET", "BATCHED_ENGINES"]

#: the engines of ``BatchedHessianOperator`` ("fused" needs every sample in memory: ``HessianOperator`` only)
BATCHED_ENGINES = ("auto", "structured", "graph", "rebuild")

#: bytes the recorded products (v, H v) of the Lanczos Ritz step may take by default (memory stays O(k n))
RECORD_BUDGET = 2 ** 30

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------- data
def _shuffling_sampler(loader: DataLoader):
    """The random sampler a DataLoader draws its order from, or None."""
    for s in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if isinstance(s, (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)):
            return s
        if isinstance(s, DistributedSampler) and s.shuffle:
            return s
    return None


def _is_pair_of_tensors(data) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data))


class Batches:
    """A deterministic, re-iterable sequence of ``(inputs, targets)`` batches (build it with ``as_batches``).

    ``kind`` is "tensors", "sequence", "loader" or "function"; ``tensors()`` returns the whole data set as one
    pair of tensors (the original tensors for "tensors", else the batches concatenated on the CPU)."""

    def __init__(self, source, kind: str, batch_size: int | None = None):
        self.source, self.kind, self.batch_size = source, kind, batch_size

    def __iter__(self) -> Iterator[tuple]:
        if self.kind == "tensors":
            x, y = self.source
            return chunks(x, y, self.batch_size or DEFAULT_CHUNK)
        it = self.source() if self.kind == "function" else self.source
        return (_as_pair(b, i) for i, b in enumerate(it))

    def with_batch_size(self, batch_size: int | None) -> Batches:
        """The same data; tensor pairs sliced into ``batch_size`` samples (other kinds keep their batches)."""
        if self.kind != "tensors" or batch_size is None:
            return self
        return Batches(self.source, self.kind, check_int("batch_size", batch_size, 1))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples as ``(inputs, targets)`` in the insertion order."""
        if self.kind == "tensors":
            return self.source
        xs, ys = [], []
        for x, y in self:
            if not torch.is_tensor(x):
                raise ValueError("tensors() needs batches whose inputs are single tensors")
            xs.append(x.detach().cpu())
            ys.append(y.detach().cpu())
        if not xs:
            raise ValueError("the data yielded no batches")
        return torch.cat(xs), torch.cat(ys)


def _as_pair(batch, i: int):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"batch {i} is a {type(batch).__name__}; every batch must be a pair (inputs, targets)")
    x, y = batch
    if not torch.is_tensor(y) or y.dim() == 0:
        raise ValueError(f"batch {i}: targets must be a tensor with one row per sample")
    return x, y


def as_batches(data, batch_size: int | None = None) -> Batches:
    """``data`` as ``Batches`` (see the module docstring for what is accepted). Refuses, with the reason, a
    DataLoader that shuffles, a one-shot iterator and anything else that cannot be read twice in one order."""
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    if isinstance(data, Batches):
        return data.with_batch_size(batch_size)
    if _is_pair_of_tensors(data):
        check_data(*data)
        return Batches(tuple(data), "tensors", batch_size)
    if isinstance(data, DataLoader):
        sampler = _shuffling_sampler(data)
        if sampler is not None:
            raise ValueError(
                f"the DataLoader shuffles ({type(sampler).__name__}): the Hessian, Delta_k and K are defined for "
                "one fixed insertion order, and every pass over the data must see the same samples in the same "
                "order. Build it with shuffle=False (and no random sampler), e.g. "
                "DataLoader(dataset, batch_size=256, shuffle=False)")
        return Batches(data, "loader")
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        return Batches(DataLoader(data, batch_size=batch_size or DEFAULT_CHUNK, shuffle=False), "loader")
    if isinstance(data, IterableDataset):
        return Batches(DataLoader(data, batch_size=batch_size or DEFAULT_CHUNK), "loader")
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if len(data) == 0:
            raise ValueError("the data has no batches")
        return Batches(list(data), "sequence")
    if callable(data):
        return Batches(data, "function")
    if isinstance(data, Iterator):
        raise ValueError(f"a {type(data).__name__} can be read only once, and the solvers read the data once "
                         "per Hessian-vector product: pass a list of (inputs, targets) batches, a DataLoader "
                         "with shuffle=False, or a function returning a fresh iterator")
    raise ValueError(f"cannot read batches from a {type(data).__name__}: pass (inputs, targets) tensors, a list "
                     "of (inputs, targets) batches, a DataLoader with shuffle=False, or a function returning a "
                     "fresh iterator of batches")


# ----------------------------------------------------------------------------------------------- operator
class BatchedHessianOperator(KeptState, ProductOperator):
    """Exact Hessian of (1/N) sum_i loss_fn(model(x_i), y_i) over every sample of ``batches``, one batch at a time.

    ``batches``: anything ``as_batches`` accepts (tensor pairs are sliced into ``batch_size`` samples, default:
    the model's preferred chunk or ``lib.core.hessian.DEFAULT_CHUNK``); ``chunk_size`` additionally splits every batch
    (bounded memory for large loader batches; the result does not depend on it). ``n_samples``: the number of
    samples if known (else one pass counts them); every pass is checked against it. ``max_records``: products
    kept for the Lanczos Ritz step (None: ``lib.core.hessian.MAX_RECORDS``, at most ``RECORD_BUDGET`` bytes; a product
    not reproduced from the records costs a fresh one). ``keep_state_mb`` and ``engine``: the per-batch state kept
    between products (module docstring; ``kept_chunks``, ``kept_bytes``, ``state_builds`` and ``drop_state()`` as
    ``HessianOperator``'s). Uses the model's current weights at each call, in eval mode; ``.grad`` fields are never
    read or written.
    """

    def __init__(self, model: torch.nn.Module, batches, loss_fn: LossFn | None = None, *,
                 batch_size: int | None = None, chunk_size: int | None = None, n_samples: int | None = None,
                 max_records: int | None = None, keep_state_mb: float = KEEP_GRAPHS_MB, engine: str = "auto"):
        super().__init__(model)
        self.loss_fn = loss_fn or cross_entropy_per_sample
        self.batches = as_batches(batches, batch_size)
        if self.batches.kind == "tensors" and self.batches.batch_size is None:
            self.batches = self.batches.with_batch_size(preferred_chunk(model) or DEFAULT_CHUNK)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size, 1)
        if max_records is None:
            per = 2 * self.n_params * torch.finfo(self.dtype).bits // 8
            max_records = min(MAX_RECORDS, RECORD_BUDGET // per)
        self.max_records = check_int("max_records", max_records, 0)
        self.local_samples = (self.count_samples() if n_samples is None
                              else check_int("n_samples", n_samples, 1))
        self.n_samples = int(self.all_sum(torch.tensor(float(self.local_samples), dtype=torch.float64,
                                                       device=self.device)))
        if self.n_samples < 1:
            raise ValueError("the data has no samples")
        self.keep_bytes = check_number("keep_state_mb", keep_state_mb, ge=0) * 2 ** 20
        self._engine = self._choose_engine(check_choice("engine", engine, BATCHED_ENGINES), loss_fn)
        self.engine = self._engine.name
        self.chunk_states = ChunkStates(model, self.keep_bytes)

    def _choose_engine(self, engine: str, loss_fn):
        """The engine object for ``engine`` (see the module docstring); "structured" is checked against the model,
        the loss and the first batch."""
        summed = lambda w, x, y: self.losses(w, x, y).sum()  # noqa: E731
        if engine == "graph":
            return GraphEngine(self.model, None, summed)
        if engine == "rebuild":
            return RebuildEngine(self.model, None, summed)
        steps = plan(self.model) if loss_fn in (None, cross_entropy_per_sample) else None
        if steps is not None:
            x, y = next(iter(self.pieces(check=False)))
            if not (torch.is_tensor(x) and not y.is_floating_point() and y.dim() == 1 and plan_accepts(steps, x[:1])):
                steps = None
        if steps is not None:
            return Structured(self.model, steps, None)
        if engine == "structured":
            raise ParameterError("engine", engine, "the default cross-entropy loss, class-index targets and a model "
                                 "that lib.core.training.models.plan reads (Flatten, Linear, ReLU, conv-pool stages) "
                                 "with inputs it accepts", hint="use engine='auto' or 'graph'")
        return GraphEngine(self.model, None, summed)

    # ------------------------------------------------------------------ data
    def count_samples(self) -> int:
        """Samples in one pass over this process's batches."""
        return sum(len(y) for _, y in self.batches)

    def _move(self, t):
        if isinstance(t, (tuple, list)):
            return type(t)(self._move(u) for u in t)
        if not torch.is_tensor(t):
            return t
        t = t.to(self.device)
        return t.to(self.dtype) if t.is_floating_point() else t

    def pieces(self, check: bool = True) -> Iterator[tuple]:
        """(inputs, targets) of one pass, on the operator's device and dtype, split into ``chunk_size`` (``check``:
        compare the pass's sample count with the first pass's at its end)."""
        seen = 0
        for x, y in self.batches:
            n = len(y)
            step = self.chunk_size or max(n, 1)
            for s in range(0, n, step):
                xs = (type(x)(u[s:s + step] for u in x) if isinstance(x, (tuple, list)) else x[s:s + step])
                yield self._move(xs), self._move(y[s:s + step])
            seen += n
        if check and seen != self.local_samples:
            raise RuntimeError(f"this pass over the data gave {seen} samples, the first gave {self.local_samples}: "
                               "the batches are not deterministic (every pass must yield the same samples)")

    def losses(self, w: torch.Tensor, x, y) -> torch.Tensor:
        """Per-sample losses of one batch at flat weights ``w`` (checked to be one value per sample)."""
        params = unflatten(self.model, w)
        out = functional_call(self.model, params, tuple(x) if isinstance(x, (tuple, list)) else (x,))
        l = self.loss_fn(out, y)
        if not torch.is_tensor(l) or l.shape != (len(y),):
            shape = tuple(l.shape) if torch.is_tensor(l) else type(l).__name__
            raise ValueError(f"loss_fn(outputs, targets) must return one loss per sample, shape ({len(y)},); got "
                             f"{shape} (use reduction='none' and sum or average over the other dimensions)")
        return l

    # ------------------------------------------------------------------ sums
    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Combine partial sums over samples held elsewhere (here: nothing elsewhere, the identity)."""
        return t

    def hvp_sum(self, v: torch.Tensor) -> torch.Tensor:
        """sum_i Hess l_i(w) v over this process's samples (no 1/N): per batch, the engine's product from its kept
        state, or from a state built now (kept if it fits ``keep_state_mb``); no data is read once all are kept."""
        engine = self._engine
        w0 = flat_params(self.model)
        tangents, out = engine.start(v, w0)

        def builders():
            for x, y in self.pieces():
                yield lambda count, x=x, y=y: engine.build(x, y, w0, count=count)

        with eval_mode(self.model), torch.enable_grad():
            self.chunk_states.accumulate(engine, builders, tangents, out, self._keeps())
        return engine.finish(out, w0)

    def product(self, v: torch.Tensor) -> torch.Tensor:
        """H v of the mean loss over every process's samples: this one's ``hvp_sum``, combined by ``all_sum``,
        divided by the global N (``hvp`` counts and records it)."""
        return self.all_sum(self.hvp_sum(v)) / self.n_samples

    def gradient(self) -> torch.Tensor:
        """Flat gradient of the mean loss (counted in ``grad_count``)."""
        w0 = flat_params(self.model)
        out = torch.zeros_like(w0)
        with eval_mode(self.model), torch.enable_grad():
            for x, y in self.pieces():
                w = w0.clone().requires_grad_(True)
                out += torch.autograd.grad(self.losses(w, x, y).sum(), w)[0]
        self.grad_count += 1
        return self.all_sum(out) / self.n_samples

    def loss(self) -> float:
        """Mean loss over all samples."""
        w0 = flat_params(self.model)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with eval_mode(self.model), torch.no_grad():
            for x, y in self.pieces():
                total += self.losses(w0, x, y).double().sum()
        return float(self.all_sum(total)) / self.n_samples
