"""``HessianOperator``: the exact Hessian of the mean cross-entropy over tensors held in memory, applied in chunks
by one of the engines (fused, structured, graph, rebuild), with the per-chunk state kept between products."""
from __future__ import annotations

import torch

from lib.core.checks import check_data, check_int, check_number
from lib.core.hessian.auto import engine_for
from lib.core.hessian.graph import loss_sum
from lib.core.hessian.kept import ChunkStates, KeptState
from lib.core.hessian.products import ProductOperator
from lib.core.tensors import eval_mode, flat_params
from lib.core.training.models import preferred_chunk

#: default bound (MiB) of the per-chunk state kept between Hessian-vector products (``HessianOperator``)
KEEP_GRAPHS_MB = 1024
#: samples per chunk when the model names no preferred chunk (``lib.core.training.models.preferred_chunk``)
DEFAULT_CHUNK = 4096


class HessianOperator(KeptState, ProductOperator):
    """Exact Hessian of the mean cross-entropy over all of (inputs, targets), applied in chunks.

    ``hvp(v)`` returns H v for a flat v (parameters_to_vector order) and increments ``hvp_count``;
    ``gradient()`` returns the flat gradient. Chunk contributions are summed losses divided by N, so the result
    does not depend on ``chunk_size`` (None: ``preferred_chunk(model)`` or ``DEFAULT_CHUNK``). Floating inputs are
    cast to the parameters' dtype and every chunk is moved to their device. Build it once and pass it to
    ``top_eigenpairs``, ``smallest_eigenvalue``, ``trace``, ``density``.

    Products reuse per-chunk state while the weights are unchanged (``engine``):

    * ``"structured"`` (``"auto"`` picks it when ``lib.core.training.models.plan(model)`` reads the model: ReLU MLPs,
      conv-pool CNNs): the forward activations, ReLU / max-pool selections and backward deltas of every chunk are
      kept, and a product is one tangent (R-op) forward and one backward pass over them (Pearlmutter 1994),
      matrix products only (the first Linear skips input columns that are constant within the chunk, e.g. MNIST's
      border pixels: their contribution is a rank-one term; ReLU units inactive on the whole chunk are dropped);
    * ``"graph"`` (``"auto"`` for every other model): the autograd graph of each chunk's gradient
      (``create_graph=True``) is kept and differentiated again per product (``retain_graph=True``);
    * ``"rebuild"``: the gradient graph is rebuilt for every product (no state kept);
    * ``"fused"`` (``"auto"`` picks it where ``lib.core.native.fused_cnn.applies``: float32 conv-pool CNNs on the CPU,
      kernel built): the same R-op per image in the native kernel over all samples at once (nothing kept).

    Each engine is a module of ``lib.core.hessian`` (the choice: ``auto.engine_for``).

    Kept state is bounded by ``keep_graphs_mb`` (MiB over all chunks; bytes of the kept tensors, for ``"graph"``
    the tensors autograd saves): chunks past the budget are rebuilt at every product. The state is dropped and
    rebuilt whenever any parameter or buffer differs (``torch.equal``) from the values it was built with, so every
    product uses the model's current weights. ``kept_chunks``, ``kept_bytes`` and ``state_builds`` describe it.
    """

    def __init__(self, model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                 chunk_size: int | None = None, keep_graphs_mb: float = KEEP_GRAPHS_MB, engine: str = "auto"):
        self.n_samples = check_data(inputs, targets)
        super().__init__(model)
        self.inputs, self.targets = inputs, targets
        self.keep_bytes = check_number("keep_graphs_mb", keep_graphs_mb, ge=0) * 2 ** 20
        self._engine = engine_for(model, inputs, targets, engine, self.dtype)
        if chunk_size is None:
            chunk_size = preferred_chunk(model) or DEFAULT_CHUNK
        self.chunk_size = check_int("chunk_size", chunk_size, 1)
        self.engine = self._engine.name
        self.chunk_states = ChunkStates(model, self.keep_bytes)

    def _chunks(self):
        for start in range(0, self.n_samples, self.chunk_size):
            yield self._chunk(start)

    def _chunk(self, start: int):
        """Samples start .. start + chunk_size on the operator's device (floating inputs in its dtype)."""
        x = self.inputs[start:start + self.chunk_size].to(self.device)
        y = self.targets[start:start + self.chunk_size].to(self.device)
        return (x.to(self.dtype) if x.is_floating_point() else x), y

    # ------------------------------------------------------------------------------------------- products
    def product(self, v: torch.Tensor) -> torch.Tensor:
        """H v of the mean loss: the fused kernel over all samples, or the engine's chunk products (from the kept
        per-chunk state, built at the first product after a weight change) summed and divided by N."""
        if self.engine == "fused":
            return self._engine.hvp_sum(v) / self.n_samples
        engine = self._engine
        w0 = flat_params(self.model)
        tangents, out = engine.start(v, w0)

        def builders():
            for start in range(0, self.n_samples, self.chunk_size):
                yield lambda count, start=start: engine.build(*self._chunk(start), w0, count=count)

        with eval_mode(self.model), torch.enable_grad():
            self.chunk_states.accumulate(engine, builders, tangents, out, self._keeps())
        return engine.finish(out, w0) / self.n_samples

    def gradient(self) -> torch.Tensor:
        """Flat gradient of the mean loss (same chunking; counted in ``grad_count``)."""
        w0 = flat_params(self.model)
        out = torch.zeros_like(w0)
        with eval_mode(self.model), torch.enable_grad():
            for x, y in self._chunks():
                w = w0.clone().requires_grad_(True)
                out += torch.autograd.grad(loss_sum(self.model, w, x, y), w)[0]
        self.grad_count += 1
        return out / self.n_samples

    def loss(self) -> float:
        """Mean loss over all samples."""
        w0 = flat_params(self.model)
        with eval_mode(self.model), torch.no_grad():
            return sum(float(loss_sum(self.model, w0, x, y)) for x, y in self._chunks()) / self.n_samples
