"""Subspaces of parameter space: bases ``P`` and per-sample losses at ``w* + P^T theta`` (or at given weights).

Conventions (shared by ``sampling``, ``montecarlo`` and ``quadratic``):

* A flat parameter vector is ``torch.nn.utils.parameters_to_vector(model.parameters())``; ``n_params`` is its
  length (flat-vector helpers: ``lib.core.tensors``).
* A basis ``P`` is a tensor of shape ``(D, n_params)`` with orthonormal rows (filter-normalised directions are the
  one exception: they are not orthonormalised). A point of the subspace is ``w = w* + P^T theta``,
  ``theta in R^D``; ``w*`` are the model's current weights (never modified here).
* Per-sample losses ``l_i(w)`` are cross-entropy with ``reduction="none"`` (or any ``loss_fn(outputs, targets)``
  returning one value per sample), evaluated in eval mode without autograd graphs, in the given sample order.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm import tqdm

from lib.core.checks import check_data, check_int
from lib.core.hessian import HessianOperator, top_eigenpairs
from lib.core.native import fused_cnn
from lib.core.tensors import chunks, device_dtype, eval_mode, flat_params, n_params, param_layout, unflatten
from lib.core.training.models import plan, plan_accepts, plan_forward_many, preferred_chunk, step_names, step_weights

__all__ = [
    "check_basis",
    "hessian_basis",
    "random_basis",
    "filter_normalized_directions",
    "per_sample_losses",
    "SubspaceLosses",
    "losses_at_weights",
    "cross_entropy_per_sample",
    "DEFAULT_CHUNK",
]

#: default number of samples per forward chunk (bounded memory, large enough for efficient matmuls)
DEFAULT_CHUNK = 16384
#: thetas whose flat weight vectors are built together (memory: WEIGHT_BLOCK x n_params) and, on the batched
#: path, evaluated together
WEIGHT_BLOCK = 16
#: activations per tensor on the batched path (thetas x samples x width); sets its block of samples
BATCH_ELEMENTS = 2 ** 20
#: the same for networks with conv-pool stages: the grouped convolutions run faster on larger blocks (CNN, B = 16,
#: 2 threads: 46 ms per theta over 10,000 images at 2^22 = 80 samples per block, 62 ms at 2^20, 54 ms at 2^23)
CONV_BATCH_ELEMENTS = 2 ** 22

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_per_sample(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Default per-sample loss: cross-entropy, ``reduction="none"``."""
    return F.cross_entropy(outputs, targets, reduction="none")


def check_basis(model: torch.nn.Module, basis: torch.Tensor) -> int:
    """Validate a basis of shape (D, n_params) for ``model``; return D."""
    if not isinstance(basis, torch.Tensor):
        raise ValueError(f"basis must be a torch.Tensor of shape (D, n_params), got {type(basis).__name__}")
    if basis.dim() != 2:
        raise ValueError(f"basis must have shape (D, n_params); got {tuple(basis.shape)}")
    n = n_params(model)
    if basis.shape[1] != n:
        raise ValueError(f"basis width {basis.shape[1]} != n_params {n}: the basis must have shape (D, n_params) "
                         "with rows in parameters_to_vector order")
    if basis.shape[0] < 1:
        raise ValueError("basis must have at least one row (D >= 1)")
    return int(basis.shape[0])


def _chunk_size(chunk_size: int | None, model: torch.nn.Module) -> int:
    """The caller's ``chunk_size`` (an integer >= 1) or, when None, the model's preferred chunk or DEFAULT_CHUNK."""
    if chunk_size is None:
        return preferred_chunk(model) or DEFAULT_CHUNK
    return check_int("chunk_size", chunk_size)


# ----------------------------------------------------------------------------------------------- bases
def hessian_basis(model, inputs, targets, D: int, return_eigenvalues: bool = False, **kw):
    """Top-D Hessian eigenvectors of the full-batch loss at the current weights, as a (D, n_params) basis.

    Builds ``lib.core.hessian.HessianOperator(model, inputs, targets, chunk_size)`` and delegates to
    ``lib.core.hessian.top_eigenpairs`` (extra keyword arguments such as ``method``, ``tol``, ``seed`` are passed
    through; ``chunk_size`` goes to the operator). With ``return_eigenvalues=True`` returns ``(basis, eigenvalues)``.
    """
    n = n_params(model)
    D = check_int("D", D)
    if D >= n:
        raise ValueError(f"D={D} must be smaller than n_params={n} (a Hessian subspace of the full space "
                         "is not a subspace)")
    op = HessianOperator(model, inputs, targets, chunk_size=kw.pop("chunk_size", None))
    eig = top_eigenpairs(op, k=int(D), **kw)
    device, dtype = device_dtype(model)
    basis = torch.as_tensor(eig.eigenvectors).to(device=device, dtype=dtype)
    if return_eigenvalues:
        return basis, torch.as_tensor(eig.eigenvalues)
    return basis


def random_basis(n_params: int, D: int, seed: int = 0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Random D-dimensional subspace: QR of a Gaussian (n_params x D) matrix; returns (D, n_params) orthonormal rows."""
    n_params, D = check_int("n_params", n_params), check_int("D", D)
    if D > n_params:
        raise ValueError(f"D={D} must be <= n_params={n_params}")
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(n_params, D, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a, mode="reduced")
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))  # unique QR
    return q.T.contiguous().to(dtype=dtype, device=device)


def filter_normalized_directions(model: torch.nn.Module, n: int = 2, seed: int = 0) -> torch.Tensor:
    """Filter-normalised random directions (Li et al. 2018) as an (n, n_params) tensor (not orthonormalised).

    For every parameter tensor a Gaussian direction is drawn; each filter / row (slice along dim 0) is rescaled to
    the norm of the matching slice of the weights; 1-D parameters (biases, norm scales) get zero.
    """
    n = check_int("n", n)
    device, dtype = device_dtype(model)
    g = torch.Generator().manual_seed(int(seed))
    rows = []
    for _ in range(n):
        parts = []
        for p in model.parameters():
            w = p.detach().to("cpu", torch.float64)
            if w.dim() <= 1:
                parts.append(torch.zeros(w.numel(), dtype=torch.float64))
                continue
            d = torch.randn(w.shape, generator=g, dtype=torch.float64)
            wn = w.reshape(w.shape[0], -1).norm(dim=1)
            dn = d.reshape(d.shape[0], -1).norm(dim=1)
            scale = wn / dn.clamp_min(1e-12)
            d = d * scale.reshape(-1, *([1] * (w.dim() - 1)))
            parts.append(d.reshape(-1))
        rows.append(torch.cat(parts))
    return torch.stack(rows).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------- losses
def _forward_rows(model, inputs, targets, n_rows, weight_of, chunk, loss_fn, progress, desc):
    """Shared loop: for row t build the flat weights ``weight_of(t)`` and fill out[t] with per-sample losses."""
    device, dtype = device_dtype(model)
    N = len(inputs)
    out = torch.empty(n_rows, N, dtype=dtype, device=device)
    buffers = dict(model.named_buffers())
    with torch.no_grad(), eval_mode(model):
        for t in tqdm(range(n_rows), disable=not progress, desc=desc, leave=False):
            params = unflatten(model, weight_of(t))
            params.update(buffers)
            s = 0
            for x, y in chunks(inputs, targets, chunk, device):
                out[t, s:s + len(x)] = loss_fn(functional_call(model, params, (x,)), y)
                s += len(x)
    return out


def _fused_rows(model, steps, inputs, targets, weights: torch.Tensor, progress: bool) -> torch.Tensor:
    """Cross-entropies (T, N) at T flat weight vectors of a conv-pool CNN by ``lib.core.native.fused_cnn.losses``,
    ``WEIGHT_BLOCK`` vectors at a time (eight per register)."""
    names = step_names(model, steps)
    x, y = inputs.to(torch.float32).contiguous(), targets.to(torch.int64).contiguous()
    out = torch.empty(weights.shape[0], len(x), dtype=torch.float32)
    for t0 in tqdm(range(0, weights.shape[0], WEIGHT_BLOCK), disable=not progress, desc="weights", leave=False):
        params = unflatten(model, weights[t0:t0 + WEIGHT_BLOCK].to(torch.float32))
        out[t0:t0 + WEIGHT_BLOCK] = fused_cnn.losses(steps, step_weights(params, names), x, y)
    return out


def losses_at_weights(model, inputs, targets, weights: torch.Tensor, chunk_size: int | None = None,
                      loss_fn: LossFn | None = None, progress: bool = False) -> torch.Tensor:
    """Per-sample losses at arbitrary flat weight vectors.

    ``weights``: (n_params,) or (T, n_params). Returns (T, N) (or (N,) for a single vector), in the model's
    dtype, samples in the given order. No autograd graph, model weights untouched, eval mode. Conv-pool CNNs with
    the default cross-entropy run through the fused kernel (``lib.core.native.fused_cnn``) where it is built.
    """
    check_data(inputs, targets)
    chunk = _chunk_size(chunk_size, model)
    loss_fn = loss_fn or cross_entropy_per_sample
    device, dtype = device_dtype(model)
    single = weights.dim() == 1
    w = weights.reshape(1, -1) if single else weights
    n = n_params(model)
    if w.dim() != 2 or w.shape[1] != n:
        raise ValueError(f"weights must have shape (T, n_params={n}); got {tuple(weights.shape)}")
    steps = plan(model) if loss_fn is cross_entropy_per_sample else None
    if (steps is not None and plan_accepts(steps, inputs[:1].to(dtype))
            and fused_cnn.applies(steps, list(model.parameters()), targets)):
        out = _fused_rows(model, steps, inputs, targets, w, progress)       # 2x the per-vector forward here
    else:
        out = _forward_rows(model, inputs, targets, w.shape[0], lambda t: w[t].to(device=device, dtype=dtype),
                            chunk, loss_fn, progress, "weights")
    return out[0] if single else out


def _first_linear(model: torch.nn.Module):
    """(names of the first Linear's parameters, the rest of the network) for Sequential(Flatten, Linear, ...),
    or None."""
    if not isinstance(model, torch.nn.Sequential) or len(model) < 3 or len(list(model.buffers())):
        return None
    flat, lin = model[0], model[1]
    if not isinstance(flat, torch.nn.Flatten) or flat.start_dim != 1 or flat.end_dim != -1:
        return None
    if not isinstance(lin, torch.nn.Linear):
        return None
    first = [f"{list(model._modules)[1]}.{n}" for n, _ in lin.named_parameters()]
    names = [n for n, _ in model.named_parameters()]
    if names[:len(first)] != first:
        return None
    return first, model[2:]


class SubspaceLosses:
    """Per-sample losses ``l_i(w* + P^T theta)`` for many thetas over fixed data and basis.

    Three paths, the same losses up to floating-point rounding (tested):

    * batched (``path == "batched"``; models that ``lib.core.training.models.plan`` reads: ReLU MLPs, conv-pool CNNs):
      ``WEIGHT_BLOCK`` thetas at a time, every layer one batched matrix product over all of them
      (``plan_forward_many``; a conv-pool stage on the shared input is one product with the thetas' phase matrices
      stacked). When the first affine layer is a Linear after an optional Flatten (``shortcut``, the MLPs), its
      pre-activation is affine in theta, ``z(theta) = z* + sum_d theta_d z_d`` with ``z* = X W*^T + b*`` and
      ``z_d = X V_d^T + c_d`` (``V_d, c_d`` the basis row's slices for that layer): ``z*`` and the ``z_d`` are
      computed once (D + 1 first-layer passes, memory (D + 1) N h), so a theta costs D N h multiply-adds there
      instead of N 784 h. (The CNN's first conv is affine in theta too, but its D + 1 precomputed outputs would
      take (D + 1) 16 x 196 floats per image, 1.4 GB for D = 10 and N = 10,000, and combining them costs about
      what the conv itself costs: the stacked product is used instead.)
      On a CPU with AVX2, conv-pool CNNs with cross-entropy (``engine == "fused_cnn"``) run the batched path in
      ``lib.core.native.fused_cnn`` instead: eight thetas per SIMD register, one image through every stage in cache
      (4-5x faster than the torch operations for the study's CNN); elsewhere, or with ``fused=False``,
      ``engine == "torch"``.
    * first-layer shortcut (``path == "shortcut"``): other ``Sequential(Flatten, Linear, ...)`` models (tanh
      layers, ...): the precomputed first layer, then the rest of the network per theta (``functional_call``).
    * generic (``path == "generic"``, or ``shortcut=False``): one forward pass per theta (weights
      ``w* + P^T theta`` split into views, ``functional_call``).
    """

    def __init__(self, model, inputs, targets, basis: torch.Tensor, chunk_size: int | None = None,
                 loss_fn: LossFn | None = None, shortcut: bool = True, fused: bool = True):
        self.D = check_basis(model, basis)
        check_data(inputs, targets)
        self.model, self.inputs, self.targets = model, inputs, targets
        self.chunk = _chunk_size(chunk_size, model)
        self.loss_fn = loss_fn or cross_entropy_per_sample
        self.device, self.dtype = device_dtype(model)
        self.w0 = flat_params(model)
        self.P = basis.to(device=self.device, dtype=self.dtype)
        self.steps = plan(model) if shortcut else None
        if self.steps is not None and not plan_accepts(self.steps, inputs[:1].to(self.dtype)):
            self.steps = None
        if self.steps is not None and sum(st.module is not None for st in self.steps) < 2:
            self.steps = None          # a single affine layer: nothing to batch after it; the plain paths serve
        split = _first_linear(model) if shortcut and self.steps is None else None
        if self.steps is not None:
            self.path = "batched"
            first = next(k for k, st in enumerate(self.steps) if st.module is not None)
            self.first = first
            self.shortcut = self.steps[first].kind == "linear" and all(
                st.kind == "flatten" for st in self.steps[:first])
            self._names = step_names(model, self.steps)
            if self.shortcut:
                lin = self.steps[first].module
                n_first = lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
                names = [n for n, _ in model.named_parameters()]
                if names[:1 + (lin.bias is not None)] != [n for n in self._names[first] if n]:
                    self.shortcut = False
                else:
                    self._precompute_first(lin, n_first)
        else:
            self.path = "shortcut" if split is not None else "generic"
            self.shortcut = split is not None
            if self.shortcut:
                self._prepare_shortcut(*split)
        self.engine = "torch"
        if (fused and self.path == "batched" and not self.shortcut and self.loss_fn is cross_entropy_per_sample
                and fused_cnn.applies(self.steps, list(model.parameters()), targets)):
            self.engine = "fused_cnn"
            self._x = inputs.to(torch.float32).contiguous()
            self._y = targets.to(torch.int64).contiguous()

    def _first_layer(self, W: torch.Tensor, b: torch.Tensor | None, h: int, d_in: int) -> torch.Tensor:
        """(D + 1, N, h) first-layer pre-activations of the rows of W (weights) and b (biases), all samples."""
        weights = W[:, :h * d_in].reshape(-1, h, d_in)
        N = len(self.inputs)
        Z = torch.empty(W.shape[0], N, h, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            s = 0
            for x, _ in chunks(self.inputs, self.targets, self.chunk, self.device, self.dtype):
                Z[:, s:s + len(x)] = torch.einsum("ni,dhi->dnh", x.flatten(1), weights)   # x: (n, d_in)
                s += len(x)
            if b is not None:
                Z += b[:, None, :]
        return Z

    def _precompute_first(self, lin: torch.nn.Linear, n_first: int):
        h, d_in = lin.out_features, lin.in_features
        W = torch.cat([self.w0[:n_first].unsqueeze(0), self.P[:, :n_first]], 0)          # (D + 1, n_first)
        self.z = self._first_layer(W, W[:, h * d_in:] if lin.bias is not None else None, h, d_in)  # (D+1, N, h)
        self.n_first = n_first

    def _prepare_shortcut(self, first: list, rest: torch.nn.Module):
        names, _, numels = param_layout(self.model)
        n_first = sum(numels[:len(first)])
        lin = self.model[1]
        h, d_in = lin.out_features, lin.in_features
        W = torch.cat([self.w0[:n_first].unsqueeze(0), self.P[:, :n_first]], 0)          # (D + 1, n_first)
        Z = self._first_layer(W, W[:, h * d_in:] if lin.bias is not None else None, h, d_in)
        self.z0, self.zd = Z[0], Z[1:].reshape(self.D, -1)      # (N, h), (D, N h)
        self.rest = rest
        self.rest_names = names[len(first):]
        self.n_first = n_first

    def __call__(self, thetas: torch.Tensor, progress: bool = False) -> torch.Tensor:
        single = thetas.dim() == 1
        th = thetas.reshape(1, -1) if single else thetas
        if th.dim() != 2 or th.shape[1] != self.D:
            raise ValueError(f"thetas must have shape (T, D={self.D}) to match the basis; got {tuple(thetas.shape)}")
        th = th.to(device=self.device, dtype=self.dtype)
        if self.path == "batched":
            out = self._batched(th, progress)
        else:
            out = self._shortcut(th, progress) if self.shortcut else self._generic(th, progress)
        return out[0] if single else out

    def _block_samples(self, B: int) -> int:
        """Samples per block of the batched path: at most ``BATCH_ELEMENTS`` (with conv-pool stages
        ``CONV_BATCH_ELEMENTS``) activations per tensor (per sample and theta: a Linear's output, a conv-pool
        stage's input and its conv outputs; the first stage's patch matrix is shared by the thetas)."""
        shape, widest, convs = tuple(self.inputs.shape[1:]), 1, False
        for st in self.steps:
            if st.kind == "flatten":
                shape = (math.prod(shape),)
            elif st.kind == "linear":
                shape = (st.module.out_features,)
                widest = max(widest, shape[0])
            else:
                C, H, W = shape
                O = st.module.out_channels
                widest, convs = max(widest, C * H * W, O * H * W), True
                shape = (O, H // 2, W // 2)
        budget = CONV_BATCH_ELEMENTS if convs else BATCH_ELEMENTS
        return max(1, min(self.chunk, budget // (B * widest)))

    def _batched(self, th, progress):
        T = th.shape[0]
        N = len(self.inputs)
        out = torch.empty(T, N, dtype=self.dtype, device=self.device)
        y_all = self.targets.to(self.device)
        start = self.first + 1 if self.shortcut else 0
        fast_loss = self.loss_fn is cross_entropy_per_sample
        with torch.no_grad():
            for t0 in tqdm(range(0, T, WEIGHT_BLOCK), disable=not progress, desc="thetas", leave=False):
                tb = th[t0:t0 + WEIGHT_BLOCK]
                B = tb.shape[0]
                params = unflatten(self.model, torch.addmm(self.w0.unsqueeze(0), tb, self.P))
                weights = step_weights(params, self._names)
                if self.engine == "fused_cnn":     # every sample through every stage in the core's cache
                    out[t0:t0 + B] = fused_cnn.losses(self.steps, weights, self._x, self._y)
                    continue
                block = self._block_samples(B)
                ext = torch.cat([tb.new_ones(B, 1), tb], 1)
                for s in range(0, N, block):
                    e = min(N, s + block)
                    if self.shortcut:                    # z* + theta . z_d as one product: [1, theta] . [z*, z_d]
                        h = (ext @ self.z[:, s:e].reshape(self.D + 1, -1)).view(B, e - s, -1)
                        if self.steps[self.first].relu:
                            h = torch.relu_(h)
                        logits = plan_forward_many(self.steps, weights, h, start=start, batched=True,
                                                   classes_first=fast_loss)
                    else:
                        x = self.inputs[s:e].to(device=self.device, dtype=self.dtype)
                        logits = plan_forward_many(self.steps, weights, x, classes_first=fast_loss)
                    y = y_all[s:e]
                    if fast_loss:                        # (B, K, n): the softmax runs along contiguous samples
                        out[t0:t0 + B, s:e] = F.cross_entropy(logits, y.expand(B, -1), reduction="none")
                    else:
                        out[t0:t0 + B, s:e] = self.loss_fn(logits.reshape(B * (e - s), -1),
                                                           y.repeat(B)).view(B, e - s)
        return out

    def _generic(self, th, progress):
        block = {"start": -1, "W": None}

        def weight_of(t):      # WEIGHT_BLOCK thetas at a time: one matrix product instead of one per theta
            start = t - t % WEIGHT_BLOCK
            if block["start"] != start:
                block["W"] = None
                block["W"] = torch.addmm(self.w0.unsqueeze(0), th[start:start + WEIGHT_BLOCK], self.P)
                block["start"] = start
            return block["W"][t - start]

        return _forward_rows(self.model, self.inputs, self.targets, th.shape[0], weight_of, self.chunk,
                             self.loss_fn, progress, "thetas")

    def _shortcut(self, th, progress):
        N, h = self.z0.shape
        out = torch.empty(th.shape[0], N, dtype=self.dtype, device=self.device)
        W_rest = torch.addmm(self.w0[self.n_first:].unsqueeze(0), th, self.P[:, self.n_first:])   # (T, n_rest)
        _, shapes, numels = param_layout(self.model)
        k = len(shapes) - len(self.rest_names)
        y = self.targets.to(self.device)
        with torch.no_grad(), eval_mode(self.model):
            for t in tqdm(range(th.shape[0]), disable=not progress, desc="thetas", leave=False):
                z = torch.addmv(self.z0.reshape(-1), self.zd.T, th[t]).reshape(N, h)
                pieces = torch.split(W_rest[t], numels[k:])
                params = {n: p.reshape(sh) for n, p, sh in zip(self.rest_names, pieces, shapes[k:])}
                out[t] = self.loss_fn(functional_call(self.rest, params, (z,)), y)
        return out


def per_sample_losses(model, inputs, targets, basis: torch.Tensor, thetas: torch.Tensor,
                      chunk_size: int | None = None, loss_fn: LossFn | None = None,
                      progress: bool = False, shortcut: bool = True) -> torch.Tensor:
    """Per-sample losses ``l_i(w* + P^T theta_t)`` for a batch of thetas: returns a (T, N) tensor.

    ``thetas``: (T, D) (or (D,) -> (N,)). Samples in the given order, no autograd graph, weights of the model
    untouched, eval mode. For many calls on the same data and basis build one ``SubspaceLosses`` instead
    (it precomputes the first layer of MLPs once).
    """
    return SubspaceLosses(model, inputs, targets, basis, chunk_size, loss_fn, shortcut)(thetas, progress)
