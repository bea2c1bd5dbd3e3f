"""PyHessian 0.1 in one place: as its users call it, with its defects fixed in a wrapper, and its power loop on
our operator (``power_vectors``, the ``method="power"`` of ``lib.core.hessian.top_eigenpairs``).

``session(model, criterion, data=(x, y))`` (or ``dataloader=...``) is a context manager that builds PyHessian's
own ``pyhessian.hessian(model, criterion, data=..., cuda=...)`` and yields it; inside the block its own
``eigenvalues``, ``trace`` and ``density`` run on current torch with the fixes below. The installed package is
never edited: the fixes are a subclass (``trace`` only) and names of ``pyhessian.hessian`` / ``pyhessian.utils``
swapped for the duration of the block and restored afterwards::

    with pyhessian.session(model, F.cross_entropy, data=(x, y), seed=0) as h:
        top, vecs = h.eigenvalues(top_n=2)              # PyHessian's power iteration with deflation
        samples = h.trace(maxIter=100, tol=1e-3)        # PyHessian's Hutchinson loop (stop rule fixed)
        nodes, weights = h.density(iter=50, n_v=2)      # PyHessian's SLQ (torch.eig replaced)
        print(h.hvp_count)                              # Hessian-vector products made in the block

``eigenvalues``, ``trace`` and ``density`` below do the same on (model, inputs, targets) and return results
with product counts and wall times (``trace``/``density`` return ``lib.core.hessian``'s ``TraceEstimate`` /
``Density``); ``compare_density`` and ``compare_trace`` run PyHessian's solver on the same model and the same
Rademacher probes as a result of ours (``lib.core.hessian.density`` / ``trace``) and return both, with their
costs.

Defects of PyHessian 0.1 (the PyPI wheel; ``pyhessian/hessian.py`` sha256 ``f465fa75a657fd7d...``) and their fixes:

1. ``density`` calls ``torch.eig``, removed in torch 2 (it raises ``RuntimeError``). Fix: during the block the
   name ``torch`` inside ``pyhessian.hessian`` is a shim whose ``eig(T, eigenvectors=True)`` is
   ``torch.linalg.eigh(T)`` laid out as ``torch.eig`` returned it: eigenvalues as an (n, 2) real/imaginary
   tensor, eigenvectors as *columns*. ``eigh`` is exact here because PyHessian only calls ``eig`` on its
   symmetric tridiagonal ``T``; every other ``torch`` attribute is torch's own.
2. Quadrature weights. 0.1's line ``weight_list = b_[0, :]**2`` takes the squared first component of each
   eigenvector column of ``T`` -- the Gauss weights -- and is correct with ``torch.eig``'s layout, which the
   shim keeps. The weight bug was introduced *after* 0.1 upstream: PR #18 switched to ``torch.linalg.eig`` and
   took ``torch.pow(b_, 2)`` (every component, complex), PR #23 (Jan 2024) restored ``b_[0, :]**2`` with
   ``a_.real``. What 0.1 does get wrong there: ``T = torch.zeros(iter, iter)`` is float32 whatever the
   model's dtype, so a float64 model's nodes and weights carry float32 rounding (weights sum to 1 only to
   ~1e-7). Fix: the shim's ``zeros`` and ``randn`` default to the model's dtype (``T``, the product
   accumulators of the dataloader path and the random start vectors).
3. ``trace`` stops when ``|mean - previous| / (previous + 1e-6) < tol``: once the running mean is below -1e-6
   the ratio is negative and the loop stops at the next probe whatever ``tol`` is -- after two probes for a
   negative trace, and also for an indefinite Hessian whose first sample z^T H z is negative (seed 2 on
   ``tests.cases`` "tanh", trace +1.28: 2 probes instead of 36). Fix: the subclass's ``trace`` is
   PyHessian's loop with ``abs(previous) + 1e-6`` (the rule upstream adopted after 0.1).
4. ``cuda=True`` by default (moves the data to the GPU; fails on a CPU model). Fix: ``cuda`` is set from the
   model's device, data are moved there (floating inputs cast to the model's dtype) and the object's
   ``device`` is the model's exact device (``cuda:1`` stays ``cuda:1``).
5. On the single-batch path the Hessian is differentiated from ``param.grad`` after
   ``loss.backward(create_graph=True)``, which *accumulates*: a second object built before anything calls
   ``zero_grad`` differentiates g1 + g2 (doubled Hessian), and earlier gradients are lost to its
   ``zero_grad``. Fix: every ``.grad`` is set to None on entry and restored (same tensors) on exit, so each
   block starts clean and the caller's gradients survive.
6. ``self.model = model.eval()`` leaves the model in eval mode. Fix: every module's train/eval flag is
   restored on exit (PyHessian still computes in eval mode, as ours does).
7. ``normalization`` divides by ``norm + 1e-6``: the Lanczos vectors of ``density`` have norm
   beta / (beta + 1e-6), so ``T`` is not the projected Hessian: on ``tests.cases`` "tanh" (float64) the
   quadrature's moments are off by 5e-6 relative, for the same loss scaled by 1e-4 by 3 %. (Power iteration
   is barely touched, ~2e-6: ``orthnormal`` renormalises a vector of norm ~1 each iteration.) Fix:
   ``normalization`` in ``pyhessian.hessian`` and ``pyhessian.utils`` (used by ``orthnormal``) divides by
   the exact norm during the block.

Fixes 1, 2, 3 and 7 can be switched off one at a time (``fixes=``) to show what each changes; 4, 5 and 6 are
the frame of every block. Not changed (PyHessian's behaviour, documented): both stopping rules compare
successive values (eigenvalue / running mean), not residuals or standard errors; power iteration converges
to the largest |lambda| and reports the Rayleigh quotient of the previous iterate; the Lanczos vectors are
reorthogonalised once (modified Gram-Schmidt); probes come from torch's global RNG (seeded by ``seed`` in a
forked RNG here) unless ``shared_probes`` feeds ours.

``power_vectors(op, k, tol, max_iter, seed)`` runs PyHessian's own ``eigenvalues`` loop (power iteration with
deflation) with our exact product ``op.hvp`` in place of its ``dataloader_hv_product``, outside ``session``:
its ``__init__`` is replaced (no ``cuda``, no forward/backward, no ``.grad`` use), train/eval flags and ``.grad``
are restored (its loop calls ``zero_grad``), and its ``normalization`` keeps the ``+ 1e-6`` of defect 7 (~2e-6
on a vector renormalised every iteration). What the loop gets wrong: unseeded start vectors (seeded here, forked
RNG); reported eigenvalues are Rayleigh quotients of the previous iterate and the returned vector is the next
iterate (not re-orthogonalised); it converges to the largest ``|lambda|``; its stop rule ``|d lambda| / (|lambda|
+ 1e-6) < tol`` is on the eigenvalue, not the residual. ``lib.core.hessian.top_eigenpairs(method="power")`` keeps
only its vectors and fixes the rest (Rayleigh-Ritz: signed Rayleigh quotients sorted algebraically, orthonormal
vectors, measured residuals).
"""
from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lib.core.checks import ParameterError, check_choice, check_data, check_int, check_positive
from lib.core.hessian.products import ProductOperator
from lib.core.hessian.results import Density, TraceEstimate, smooth_density
from lib.core.tensors import chunks, device_dtype, eval_mode, unflatten

#: fixes that can be switched off (``session(fixes=...)``); the device, .grad and train/eval fixes always apply
FIXES = ("eig", "dtype", "trace_rule", "normalization")


# ----------------------------------------------------------------------------------------------- results
@dataclass
class PowerEigenpairs:
    """PyHessian's ``eigenvalues(top_n)``: its values (Rayleigh quotients of the previous iterate, order found,
    i.e. by decreasing |lambda|) and its last iterates as flat rows (k, n_params), not re-orthogonalised."""
    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    hvp_count: int
    seconds: float


# ----------------------------------------------------------------------------------------------- the fixes
def _pyhessian_modules():
    """(pyhessian.hessian module, pyhessian.utils module); lazy: PyHessian is an optional dependency.
    ``pyhessian.hessian`` the attribute is the class (its ``__init__`` re-exports it), hence ``sys.modules``."""
    import pyhessian.hessian  # noqa: F401
    import pyhessian.utils  # noqa: F401

    return sys.modules["pyhessian.hessian"], sys.modules["pyhessian.utils"]


@contextlib.contextmanager
def _swapped(obj, name: str, value):
    """``obj.name = value`` for the block, the previous value put back afterwards."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def _clean_grads(model: torch.nn.Module):
    """Every ``.grad`` None inside the block (no accumulation into earlier gradients); the same tensors (or None)
    put back afterwards, which also drops the graph PyHessian's ``backward(create_graph=True)`` leaves there."""
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


def _exact_normalization(v):
    """PyHessian's ``normalization`` without its ``+ 1e-6``: v / ||v|| (v unchanged when it is zero)."""
    s = float(torch.sqrt(sum(torch.sum(x * x) for x in v)))
    return [x / s for x in v] if s > 0 else list(v)


def _eig_as_torch_eig(input, eigenvectors=False):
    """``torch.eig`` (removed in torch 2) for the symmetric matrices PyHessian passes it: eigenvalues as an
    (n, 2) real/imaginary tensor and, with ``eigenvectors=True``, unit eigenvectors as the columns."""
    if not torch.equal(input, input.T):
        raise ValueError("the torch.eig replacement is for symmetric matrices (PyHessian's tridiagonal T)")
    values, vectors = torch.linalg.eigh(input)
    pairs = torch.stack([values, torch.zeros_like(values)], dim=1)
    return pairs, (vectors if eigenvectors else torch.empty(0, dtype=input.dtype, device=input.device))


class _ProbeFeed:
    """Rademacher probes in ``lib.core.hessian``'s sequence (one CPU generator seeded ``seed``, float64 +-1 over
    the flat vector per probe), handed to PyHessian one parameter at a time through ``randint_like``."""

    def __init__(self, params, seed: int):
        self.gen = torch.Generator().manual_seed(int(seed))
        self.numels = [p.numel() for p in params]
        self.pieces: list[torch.Tensor] = []

    def randint_like(self, p: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not self.pieces:
            z = torch.randint(0, 2, (sum(self.numels),), generator=self.gen, dtype=torch.float64) * 2 - 1
            self.pieces = list(torch.split(z, self.numels))
        piece = self.pieces.pop(0)
        if piece.numel() != p.numel():
            raise RuntimeError("PyHessian asked for a probe out of parameter order; shared probes cannot be fed")
        # PyHessian draws randint(0, 2) and maps 0 -> -1 itself: hand it (z + 1) / 2 in {0, 1}
        device = kwargs.get("device") or p.device
        return ((piece + 1) / 2).reshape(p.shape).to(device=device, dtype=p.dtype)


class _TorchShim:
    """Stands in for ``torch`` inside ``pyhessian.hessian`` during a block: ``eig`` (fix 1), ``zeros``/``randn``
    in the model's dtype (fix 2), ``randint_like`` from a probe feed when given; everything else is torch."""

    def __init__(self, dtype: torch.dtype, fixes: frozenset, feed: _ProbeFeed | None):
        self._dtype, self._fixes, self._feed = dtype, fixes, feed

    def __getattr__(self, name):
        if name == "eig" and "eig" in self._fixes:
            return _eig_as_torch_eig
        return getattr(torch, name)

    def zeros(self, *size, **kwargs):
        if "dtype" in self._fixes:
            kwargs.setdefault("dtype", self._dtype)
        return torch.zeros(*size, **kwargs)

    def randn(self, *size, **kwargs):
        if "dtype" in self._fixes:
            kwargs.setdefault("dtype", self._dtype)
        return torch.randn(*size, **kwargs)

    def randint_like(self, p, *args, **kwargs):
        if self._feed is not None:
            return self._feed.randint_like(p, *args, **kwargs)
        return torch.randint_like(p, *args, **kwargs)


class _CastBatches:
    """A dataloader whose floating inputs are cast to ``dtype`` (PyHessian moves each batch to its device)."""

    def __init__(self, loader, dtype: torch.dtype):
        self.loader, self.dtype = loader, dtype

    def __iter__(self):
        for x, y in self.loader:
            yield (x.to(self.dtype) if x.is_floating_point() else x), y


def _fixed_class(module):
    """PyHessian's ``hessian`` class with a counted ``dataloader_hv_product`` and the fixed ``trace``."""

    class FixedHessian(module.hessian):
        """PyHessian's ``hessian``; ``hvp_count`` counts products (one per full pass on the dataloader path);
        ``trace`` is PyHessian's loop with the stop rule divided by ``abs(trace) + 1e-6`` (fix 3)."""

        hvp_count = 0
        fixes = frozenset(FIXES)

        def dataloader_hv_product(self, v):
            self.hvp_count += 1
            return super().dataloader_hv_product(v)

        def trace(self, maxIter=100, tol=1e-3):
            if "trace_rule" not in self.fixes:
                return super().trace(maxIter=maxIter, tol=tol)
            group_product = module.group_product
            trace_vhv = []
            trace = 0.
            for _ in range(maxIter):
                self.model.zero_grad()
                v = [module.torch.randint_like(p, high=2, device=self.device) for p in self.params]
                for v_i in v:
                    v_i[v_i == 0] = -1
                if self.full_dataset:
                    _, Hv = self.dataloader_hv_product(v)
                else:
                    Hv = module.hessian_vector_product(self.gradsH, self.params, v)
                trace_vhv.append(group_product(Hv, v).cpu().item())
                if abs(np.mean(trace_vhv) - trace) / (abs(trace) + 1e-6) < tol:
                    return trace_vhv
                trace = np.mean(trace_vhv)
            return trace_vhv

    return FixedHessian


@contextlib.contextmanager
def session(model: torch.nn.Module, criterion=None, data=None, dataloader=None, seed: int = 0,
            shared_probes: bool = False, fixes=FIXES):
    """PyHessian's own ``hessian(model, criterion, data=... or dataloader=..., cuda=<model's device>)`` with the
    module docstring's fixes, valid inside the block.

    ``criterion`` defaults to mean cross-entropy. ``data=(inputs, targets)`` are moved to the model's device and
    floating inputs cast to its dtype; a ``dataloader``'s floating inputs are cast too. Inside the block torch's
    RNG is forked and seeded with ``seed`` (PyHessian's random vectors); ``shared_probes=True`` instead feeds the
    Rademacher probes ``lib.core.hessian.trace``/``density`` draw with the same seed, one per ``trace``
    iteration or ``density`` run, in order. ``fixes`` is a subset of ``FIXES`` (default: all). The yielded
    object counts its Hessian-vector products in ``hvp_count``; use it only inside its own block.
    """
    module, utils = _pyhessian_modules()
    fixes = frozenset(check_choice("fixes", f, FIXES) for f in fixes)
    if (data is None) == (dataloader is None):
        raise ValueError("pass exactly one of data=(inputs, targets) or dataloader=...")
    criterion = F.cross_entropy if criterion is None else criterion
    device, dtype = device_dtype(model)
    cuda = device.type == "cuda"
    if data is not None:
        inputs, targets = data
        check_data(inputs, targets)
        inputs = inputs.to(device=device, dtype=dtype if inputs.is_floating_point() else inputs.dtype)
        data = (inputs, targets.to(device))
    else:
        dataloader = _CastBatches(dataloader, dtype)
    cls = _fixed_class(module)
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        stack.enter_context(_clean_grads(model))
        stack.enter_context(torch.random.fork_rng(devices=[device] if cuda else []))
        torch.manual_seed(int(seed))
        with torch.cuda.device(device) if cuda else contextlib.nullcontext(), warnings.catch_warnings():
            # its backward(create_graph=True) warns of a .grad reference cycle, which _clean_grads breaks on exit
            warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
            h = cls(model, criterion, data=data, dataloader=dataloader, cuda=cuda)
        h.device, h.fixes = str(device), fixes
        if shared_probes and sum(p.numel() for p in h.params) != sum(p.numel() for p in model.parameters()):
            raise ValueError("shared_probes needs every parameter to require grad (PyHessian skips the others)")
        feed = _ProbeFeed(h.params, seed) if shared_probes else None
        previous_hvp = module.hessian_vector_product

        def counted_hvp(gradsH, params, v):
            if gradsH is h.gradsH:
                h.hvp_count += 1
            return previous_hvp(gradsH, params, v)

        stack.enter_context(_swapped(module, "hessian_vector_product", counted_hvp))
        stack.enter_context(_swapped(module, "torch", _TorchShim(dtype, fixes, feed)))
        if "normalization" in fixes:
            stack.enter_context(_swapped(module, "normalization", _exact_normalization))
            stack.enter_context(_swapped(utils, "normalization", _exact_normalization))
        yield h


# ----------------------------------------------------------------------------------------------- power loop on ours
@contextlib.contextmanager
def _grads_kept(model: torch.nn.Module):
    """Restore every parameter's ``.grad`` (same object and values, or None) after the block."""
    saved = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    try:
        yield
    finally:
        for p, grad, values in saved:
            if grad is not None and not torch.equal(grad, values):
                with torch.no_grad():
                    grad.copy_(values)
            p.grad = grad


def _on_operator_class():
    """PyHessian's ``hessian`` class whose product is a ``ProductOperator``'s ``hvp``."""
    module, _ = _pyhessian_modules()

    class OnOperator(module.hessian):
        """PyHessian's ``hessian`` whose product is our exact ``op.hvp``.

        Its ``__init__`` is replaced (no forward/backward, no ``.grad`` use, no ``model.eval()`` for good);
        ``eigenvalues`` is PyHessian's unchanged loop, which calls ``dataloader_hv_product`` when
        ``full_dataset`` is True.
        """

        def __init__(self, op: ProductOperator):
            self.op, self.model, self.criterion, self.data = op, op.model, None, None
            self.full_dataset, self.device = True, op.device
            self.params = list(op.model.parameters())
            self.gradsH = None

        def dataloader_hv_product(self, v):
            flat = self.op.as_vector(torch.cat([t.reshape(-1) for t in v]))
            hv = self.op.hvp(flat)
            return float(hv.double() @ flat.double()), list(unflatten(self.op.model, hv).values())

    return OnOperator


def power_vectors(op: ProductOperator, k: int, tol: float, max_iter: int, seed: int) -> torch.Tensor:
    """PyHessian 0.1 ``hessian.eigenvalues(maxIter, tol, top_n=k)`` on ``op``: power iteration with deflation,
    stop when |d lambda| / (|lambda| + 1e-6) < tol. Seeded (its torch.randn start vectors use the CPU RNG, forked);
    model mode and ``.grad`` restored (it calls ``zero_grad``). Returns its k vectors as rows; its eigenvalues
    (Rayleigh quotients of the previous iterate) are discarded (``top_eigenpairs`` recomputes them by
    Rayleigh-Ritz). Finds the k largest |lambda|, which are the k largest algebraic ones unless negative curvature
    is that strong."""
    solver = _on_operator_class()(op)
    with torch.random.fork_rng(devices=[]), eval_mode(op.model), _grads_kept(op.model):
        torch.manual_seed(seed)
        _, vectors = solver.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
    return torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in vectors]).to(op.dtype)


# ----------------------------------------------------------------------------------------------- one call each
def _data(inputs, targets, batch_size):
    check_data(inputs, targets)
    if batch_size is None:
        return {"data": (inputs, targets)}
    return {"dataloader": list(chunks(inputs, targets, check_int("batch_size", batch_size, 1)))}


def eigenvalues(model, inputs, targets, top_n: int = 1, max_iter: int = 100, tol: float = 1e-3, seed: int = 0,
                criterion=None, batch_size: int | None = None) -> PowerEigenpairs:
    """PyHessian's ``eigenvalues(maxIter, tol, top_n)`` through ``session``: the ``top_n`` largest-|lambda|
    eigenvalues by power iteration with deflation. ``batch_size=None``: PyHessian's single-batch path on all
    samples; else its dataloader path on batches of that size (same Hessian)."""
    top_n = check_int("top_n", top_n, 1)
    max_iter = check_int("max_iter", max_iter, 1)
    tol = check_positive("tol", tol)
    t0 = time.perf_counter()
    with session(model, criterion, seed=seed, **_data(inputs, targets, batch_size)) as h:
        values, vectors = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
        count = h.hvp_count
    flat = torch.stack([torch.cat([t.detach().reshape(-1) for t in v]) for v in vectors])
    return PowerEigenpairs(eigenvalues=np.array(values, dtype=np.float64), eigenvectors=flat, hvp_count=count,
                           seconds=time.perf_counter() - t0)


def trace(model, inputs, targets, max_iter: int = 100, tol: float = 1e-3, seed: int = 0, criterion=None,
          batch_size: int | None = None, shared_probes: bool = False) -> TraceEstimate:
    """PyHessian's ``trace(maxIter, tol)`` through ``session`` (stop rule fixed): the mean of its samples
    z^T H z, their standard error (nan for one sample) and count. ``shared_probes``: the probes
    ``lib.core.hessian.trace(op, seed=seed)`` uses, so its first samples are the same numbers."""
    max_iter = check_int("max_iter", max_iter, 1)
    tol = check_positive("tol", tol)
    t0 = time.perf_counter()
    with session(model, criterion, seed=seed, shared_probes=shared_probes, **_data(inputs, targets, batch_size)) as h:
        samples = np.array(h.trace(maxIter=max_iter, tol=tol), dtype=np.float64)
        count = h.hvp_count
    stderr = float(samples.std(ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else float("nan")
    return TraceEstimate(estimate=float(samples.mean()), stderr=stderr, n_probes=len(samples), samples=samples,
                         hvp_count=count, seconds=time.perf_counter() - t0)


def default_grid(nodes: np.ndarray, sigma_sq: float | None, n_grid: int) -> tuple[np.ndarray, float]:
    """(grid, sigma_sq) by ``lib.core.hessian.density``'s rule: sigma_sq = 1e-5 max(1, spectral range)
    (PyHessian's ``density_plot.py``), ``n_grid`` points covering the nodes +- (0.01 + 5 sigma)."""
    lo, hi = float(np.min(nodes)), float(np.max(nodes))
    sigma_sq = 1e-5 * max(1.0, hi - lo) if sigma_sq is None else check_positive("sigma_sq", sigma_sq)
    pad = 0.01 + 5 * np.sqrt(sigma_sq)
    return np.linspace(lo - pad, hi + pad, check_int("n_grid", n_grid, 2)), float(sigma_sq)


def density(model, inputs, targets, n_iter: int = 100, n_runs: int = 1, seed: int = 0, grid=None,
            sigma_sq: float | None = None, n_grid: int = 10000, criterion=None, batch_size: int | None = None,
            shared_probes: bool = False) -> Density:
    """PyHessian's ``density(iter=n_iter, n_v=n_runs)`` through ``session``, as ``lib.core.hessian.Density``:
    nodes/weights (n_runs, n_iter), weights divided by ``n_runs`` so they sum to 1 overall, and the smoothed
    density (``smooth_density``) on ``grid`` (default: ``default_grid``'s). ``shared_probes``: the probes
    ``lib.core.hessian.density(op, seed=seed)`` uses."""
    n_iter = check_int("n_iter", n_iter, 1)
    n_runs = check_int("n_runs", n_runs, 1)
    t0 = time.perf_counter()
    with session(model, criterion, seed=seed, shared_probes=shared_probes, **_data(inputs, targets, batch_size)) as h:
        nodes, weights = h.density(iter=n_iter, n_v=n_runs)
        count = h.hvp_count
    nodes = np.array(nodes, dtype=np.float64)
    weights = np.array(weights, dtype=np.float64) / n_runs
    if grid is None:
        grid, sigma_sq = default_grid(nodes, sigma_sq, n_grid)
    else:
        grid = np.asarray(grid, dtype=np.float64)
        sigma_sq = default_grid(nodes, sigma_sq, 2)[1]
    return Density(nodes=nodes, weights=weights, grid=grid, density=smooth_density(nodes, weights, grid, sigma_sq),
                   sigma_sq=sigma_sq, hvp_count=count, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- side by side
def l1_distance(grid: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Trapezoid integral of |a - b| over ``grid`` (L1 distance of two densities sampled on it)."""
    d = np.abs(a - b)
    return float(np.sum((d[1:] + d[:-1]) * np.diff(grid)) / 2)


def compare_density(model, inputs, targets, n_iter: int = 100, n_runs: int = 1, seed: int = 0,
                    batch_size: int | None = None, shared_probes: bool = True, *, ours: Density) -> dict:
    """PyHessian's SLQ density (through ``session``) and ours (``lib.core.hessian.density``) on the same model,
    the same probes (``shared_probes``) and the same grid and sigma (ours'), with their costs.

    ``ours``: the ``Density`` computed with ``lib.core.hessian.density(op, n_runs, n_iter, seed=seed)``
    (Rademacher probes) on this model and data (its grid and sigma_sq are kept). Returns a dict of
    plain values: ``grid``, ``sigma_sq``, ``n_iter``, ``n_runs``, ``seed``, ``shared_probes``; ``ours`` and
    ``pyhessian``, each {nodes, weights, density, seconds, products}; ``l1_difference`` = integral of
    |density_pyhessian - density_ours| (both integrate to ~1) and ``max_difference`` = its sup over the grid
    divided by max(density_ours)."""
    n_iter = check_int("n_iter", n_iter, 1)
    n_runs = check_int("n_runs", n_runs, 1)
    if ours.nodes.shape != (n_runs, n_iter):
        raise ParameterError("ours", f"Density with nodes of shape {ours.nodes.shape}",
                             f"a Density of n_runs={n_runs} runs of n_iter={n_iter} steps")
    theirs = density(model, inputs, targets, n_iter=n_iter, n_runs=n_runs, seed=seed, grid=ours.grid,
                     sigma_sq=ours.sigma_sq, batch_size=batch_size, shared_probes=shared_probes)

    def side(d: Density) -> dict:
        return {"nodes": d.nodes, "weights": d.weights, "density": d.density, "seconds": d.seconds,
                "products": d.hvp_count}

    peak = float(np.max(ours.density)) or 1.0
    return {"grid": ours.grid, "sigma_sq": ours.sigma_sq, "n_iter": n_iter, "n_runs": n_runs, "seed": seed,
            "shared_probes": shared_probes, "ours": side(ours), "pyhessian": side(theirs),
            "l1_difference": l1_distance(ours.grid, theirs.density, ours.density),
            "max_difference": float(np.max(np.abs(theirs.density - ours.density))) / peak}


def compare_trace(model, inputs, targets, n_probes: int = 100, tol: float = 1e-3, seed: int = 0,
                  batch_size: int | None = None, shared_probes: bool = True, *, ours: TraceEstimate) -> dict:
    """PyHessian's Hutchinson trace (``trace(maxIter=n_probes, tol)``, its own stop rule, fixed) and ours
    (``lib.core.hessian.trace(op, n_probes, seed=seed)``, all ``n_probes``) on the same probes, with costs.

    ``ours``: the ``TraceEstimate`` of ``lib.core.hessian.trace(op, n_probes, seed=seed)`` (Rademacher). Returns
    ``ours`` and ``pyhessian``, each {estimate, stderr, n_probes, samples, seconds, products}, and ``n_probes``,
    ``tol``, ``seed``, ``shared_probes``. With shared probes PyHessian's samples are ours' first ones."""
    n_probes = check_int("n_probes", n_probes, 2)
    if ours.n_probes != n_probes:
        raise ParameterError("ours", f"TraceEstimate of {ours.n_probes} probes", f"one of n_probes={n_probes}")
    theirs = trace(model, inputs, targets, max_iter=n_probes, tol=tol, seed=seed, batch_size=batch_size,
                   shared_probes=shared_probes)

    def side(t: TraceEstimate) -> dict:
        return {"estimate": t.estimate, "stderr": t.stderr, "n_probes": t.n_probes, "samples": t.samples,
                "seconds": t.seconds, "products": t.hvp_count}

    return {"n_probes": n_probes, "tol": tol, "seed": seed, "shared_probes": shared_probes,
            "ours": side(ours), "pyhessian": side(theirs)}
