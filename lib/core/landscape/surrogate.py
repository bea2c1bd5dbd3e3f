"""Logit-space surrogate of the per-sample losses in a D-dim subspace: exact cross-entropy of second-order logits.

At w = w* + P^T theta each sample's logits are expanded to second order in theta,
    z_i(theta) ~ z_i + J_i theta + 1/2 theta^T Z_i theta      (z_i (C,), J_i (C, D), Z_i (C, D, D), at w*),
and the loss is the *exact* cross-entropy (log-softmax) of these logits. Unlike the quadratic model of the loss
(``lib.core.landscape.quadratic``), the surrogate keeps cross-entropy's growth, linear in the logits far from w*,
and its
loss expansion to second order is the quadratic model itself: b_i = J_i^T r_i, C_i = J_i^T (diag p_i - p_i p_i^T)
J_i + sum_c r_ic Z_ic (p_i = softmax z_i, r_i = p_i - onehot y_i). Three steps:

* ``logit_jets``: z, J, Z of all N samples at w*, in chunks of samples (memory O(N C D^2)), eval mode, weights
  untouched. ``method="jet"`` uses the traced ``lib.core.landscape.jet.JetInterpreter`` (1 + D forward-mode
  tangents, then
  per class c one reverse pass whose adjoints weigh the interpreter's second-order sources); ``method="jvp"``
  nests ``torch.func.jvp`` (forward over forward, all D x D directional pairs vmapped); ``"auto"``: jet if the
  model's graph is supported, else jvp.
* ``surrogate_losses``: (T, N) per-sample losses for T thetas, no network passes: the logits are one matrix
  product of the features (theta_a, theta_a theta_b for a <= b) with the jets' coefficients.
* ``surrogate_curve``: the Monte-Carlo ``DeltaCurve`` of the surrogate (Delta_k, centred, V-bar, random insertion
  orders, batch means) over the *same* thetas ``montecarlo.delta_curve`` draws for the same sampler, estimator and
  seed, with the same insertion orders for the same order seed.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from lib.core.checks import check_choice, check_data, check_int
from lib.core.landscape.delta import (
    DeltaCurve,
    OrderSums,
    loss_differences,
    loss_variance,
    set_batch_means,
    set_order_statistics,
)
from lib.core.landscape.jet import METHODS, Jet, JetInterpreter, Unsupported
from lib.core.landscape.sampling import DEFAULT_SOBOL_REPLICATES, ESTIMATORS, Sampler, estimator_units
from lib.core.landscape.subspace import check_basis
from lib.core.tensors import chunks, device_dtype, eval_mode, flat_params, unflatten
from lib.core.training.models import preferred_chunk

__all__ = ["LogitJets", "logit_jets", "surrogate_losses", "surrogate_curve", "METHODS"]

#: samples per chunk of the jet method for models without convolutions (those use ``preferred_chunk``)
JET_CHUNK = 2048
#: samples x D^2 per chunk of the jvp method (all D x D second-order tangents of every activation are held)
JVP_ROWS = 2 ** 16
#: bytes of surrogate logits (thetas x C x N) evaluated at once by ``surrogate_curve`` (default batch; small
#: batches stay in cache: 8 MiB measured 2-5x faster per theta than 40 MiB on a 2-core CPU)
LOGIT_BUDGET = 8 * 2 ** 20
#: layers whose second-order forward-AD rules in torch are wrong (pytorch/pytorch#196700, #198017): refused by jvp
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class LogitJets:
    """Per-sample logits at w* to second order in theta, with the labels the cross-entropy needs.

    z (N, C), J (N, C, D) = d z / d theta, Z (N, C, D, D) = d^2 z / d theta^2 (symmetric in the last two axes), all
    at theta = 0, in the model's dtype and on its device; targets (N,) int64 on the same device.
    """

    z: torch.Tensor
    J: torch.Tensor
    Z: torch.Tensor
    targets: torch.Tensor
    method: str = ""
    seconds: float = 0.0

    @property
    def N(self) -> int:
        return int(self.z.shape[0])

    @property
    def C(self) -> int:
        return int(self.z.shape[1])

    @property
    def D(self) -> int:
        return int(self.J.shape[2])


# ----------------------------------------------------------------------------------------------- jets
def _check_logits(z: torch.Tensor) -> torch.Tensor:
    if z.dim() != 2:
        raise ValueError(f"the model must return (n, C) logits; got an output of shape {tuple(z.shape)}")
    return z


def _jets_jet(interp: JetInterpreter, x: torch.Tensor, D: int):
    """(z, J, Z) of one chunk from the traced interpreter: d_a d_b z_c = sum over sources of lambda_c . source_ab,
    lambda_c = d z_c / d(source output) from one reverse pass per class."""
    with torch.enable_grad():
        out = interp.run(Jet(x.detach().requires_grad_(True)))
        if not isinstance(out, Jet):
            raise Unsupported("model output is not a single tensor")
        z = _check_logits(out.h)
        n, C = z.shape
        J = z.new_zeros(n, C, D) if out.h1 is None else out.h1.detach().permute(1, 2, 0)
        Z = z.new_zeros(n, C, D, D)
        outs = [s.out for s in out.sources]
        for c in range(C if outs else 0):
            lams = torch.autograd.grad(z[:, c].sum(), outs, allow_unused=True, retain_graph=c < C - 1)
            with torch.no_grad():
                for source, lam in zip(out.sources, lams):
                    if lam is not None:
                        Z[:, c] += source.term(lam)
    return z.detach(), J, Z


def _jets_jvp(model: nn.Module, x: torch.Tensor, w0: torch.Tensor, P: torch.Tensor):
    """(z, J, Z) of one chunk by nested torch.func.jvp: the D x D mixed directional derivatives, vmapped."""
    buffers = dict(model.named_buffers())

    def logits(w):
        params = unflatten(model, w)
        params.update(buffers)
        return functional_call(model, params, (x,))

    def first(w):                                               # (D, n, C): d_a z at w
        return vmap(lambda t: jvp(logits, (w,), (t,))[1])(P)

    with torch.no_grad(), warnings.catch_warnings():
        # torch's first forward-AD call scripts its jvp decompositions with the deprecated torch.jit.script
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        z = _check_logits(logits(w0))
        J, Z = vmap(lambda t: jvp(first, (w0,), (t,)))(P)     # (D, D, n, C) both; J[b] = d_a z for every b
        Z = Z.permute(2, 3, 0, 1)
        return z, J[0].permute(1, 2, 0).contiguous(), 0.5 * (Z + Z.transpose(2, 3))


def logit_jets(model, inputs, targets, basis: torch.Tensor, chunk_size: int | None = None,
               method: str = "auto") -> LogitJets:
    """Per-sample logits z_i, their Jacobian J_i and second derivatives Z_i in theta at w* (``LogitJets``).

    ``basis`` (D, n_params), rows in parameters_to_vector order; ``chunk_size`` samples per pass (default: jet
    ``preferred_chunk(model)`` or 2048; jvp 2^16 / D^2, an eighth of that for models with convolutions);
    ``method`` one of ``METHODS`` (module docstring). The model must return (N, C) logits; its weights and
    train/eval flags are left as they were. Norm layers are refused by jvp (torch's second-order forward-AD rules
    for them are wrong) and have no jet rule.
    """
    t0 = time.perf_counter()
    D = check_basis(model, basis)
    check_choice("method", method, METHODS)
    check_data(inputs, targets)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size)
    device, dtype = device_dtype(model)
    parts, used = None, "jet"
    with eval_mode(model):
        if method in ("auto", "jet"):
            try:
                interp = JetInterpreter(model, basis)
                chunk = chunk_size or preferred_chunk(model) or JET_CHUNK
                parts = [_jets_jet(interp, x, D) for x, _ in chunks(inputs, targets, chunk, device, dtype)]
            except Unsupported as e:
                if method == "jet":
                    raise ValueError(f"method='jet' is not available for this model ({e}); use method='jvp' or "
                                     "'auto'") from None
        if parts is None:
            used = "jvp"
            norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _NORMS)})
            if norms:
                raise ValueError(f"logit_jets(method='jvp') does not support norm layers ({', '.join(norms)}): "
                                 "torch's second-order forward-AD rules for them are wrong (pytorch#196700)")
            rows = JVP_ROWS // (8 if preferred_chunk(model) else 1)
            chunk = chunk_size or max(1, rows // (D * D))
            w0 = flat_params(model)
            P = basis.to(device=device, dtype=dtype)
            parts = [_jets_jvp(model, x, w0, P) for x, _ in chunks(inputs, targets, chunk, device, dtype)]
    z, J, Z = (torch.cat(t) for t in zip(*parts))
    return LogitJets(z=z, J=J, Z=Z, targets=targets.to(device=device, dtype=torch.int64), method=used,
                     seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- surrogate losses
def _check_jets(jets) -> tuple[int, int, int]:
    if not isinstance(jets, LogitJets):
        raise ValueError(f"jets must be a LogitJets (from logit_jets), got {type(jets).__name__}")
    N, C = jets.z.shape
    D = jets.J.shape[-1]
    if (tuple(jets.J.shape) != (N, C, D) or tuple(jets.Z.shape) != (N, C, D, D)
            or tuple(jets.targets.shape) != (N,)):
        raise ValueError(f"inconsistent jets: z {tuple(jets.z.shape)}, J {tuple(jets.J.shape)}, Z "
                         f"{tuple(jets.Z.shape)}, targets {tuple(jets.targets.shape)}; need (N, C), (N, C, D), "
                         "(N, C, D, D), (N,)")
    return int(N), int(C), int(D)


class _Surrogate:
    """Surrogate logits z + Phi(theta) W for rows of thetas, Phi = (theta_a, theta_a theta_b for a <= b), and their
    cross-entropy, in the jets' dtype (the network's, as in ``delta_curve``). Class-major layout (logits (T, C, N)):
    the log-sum-exp over classes runs along contiguous rows of N; the target logits are a second product."""

    def __init__(self, jets: LogitJets):
        N, C, D = _check_jets(jets)
        self.N, self.C, self.D = N, C, D
        dev = jets.z.device
        a, b = torch.triu_indices(D, D, device=dev)
        half = torch.where(a == b, 0.5, 1.0).to(jets.Z.dtype)
        W = torch.cat([jets.J, jets.Z[:, :, a, b] * half], dim=2)                 # (N, C, F)
        self.W = W.permute(2, 1, 0).reshape(W.shape[2], C * N).contiguous()        # (F, C N), class-major
        self.z = jets.z.T.reshape(-1).contiguous()                                 # (C N,)
        target = jets.targets * N + torch.arange(N, device=dev)                   # class-major index of z_{i, y_i}
        self.Wy, self.zy = self.W[:, target].contiguous(), self.z[target]
        self.a, self.b = a, b

    def losses(self, th: torch.Tensor) -> torch.Tensor:
        """(T, N) per-sample cross-entropy in the jets' dtype."""
        th = th.to(device=self.W.device, dtype=self.W.dtype)
        phi = torch.cat([th, th[:, self.a] * th[:, self.b]], dim=1)                # (T, F)
        logits = torch.addmm(self.z.unsqueeze(0), phi, self.W).reshape(-1, self.C, self.N)
        top = logits.amax(1, keepdim=True)
        lse = (logits - top).exp_().sum(1).log_() + top.squeeze(1)
        return lse - torch.addmm(self.zy.unsqueeze(0), phi, self.Wy)


def surrogate_losses(jets: LogitJets, thetas: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of the second-order logits z + J theta + 1/2 theta^T Z theta: (T, N).

    ``thetas``: (T, D) (or (D,) -> (N,)); exact log-sum-exp, no network passes, on the jets' device and in their
    dtype (the model's: float32 models give float32 losses, as their forward passes do in ``delta_curve``).
    """
    s = _Surrogate(jets)
    th = torch.as_tensor(thetas)
    single = th.dim() == 1
    th = th.reshape(1, -1) if single else th
    if th.dim() != 2 or th.shape[1] != s.D:
        raise ValueError(f"thetas must have shape (T, D={s.D}); got {tuple(torch.as_tensor(thetas).shape)}")
    out = s.losses(th)
    return out[0] if single else out


# ----------------------------------------------------------------------------------------------- curve
class _UnitMoments:
    """Mean and standard error of i.i.d. rows (estimator units), streamed as sums shifted by the first row."""

    def __init__(self):
        self.n, self.ref, self.s1, self.s2 = 0, None, None, None

    def add(self, X: torch.Tensor):
        if self.ref is None:
            self.ref = X[0].clone()
            self.s1, self.s2 = torch.zeros_like(self.ref), torch.zeros_like(self.ref)
        Y = X - self.ref
        self.s1 += Y.sum(0)
        self.s2 += (Y * Y).sum(0)
        self.n += X.shape[0]

    def result(self):
        mean = self.ref + self.s1 / self.n
        if self.n < 2:
            return mean.cpu().numpy(), np.full(mean.shape, np.nan)
        var = ((self.s2 - self.s1 * self.s1 / self.n) / (self.n - 1)).clamp_min(0)
        return mean.cpu().numpy(), torch.sqrt(var / self.n).cpu().numpy()


def surrogate_curve(jets: LogitJets, sampler: Sampler, n_samples: int, estimator: str = "plain", seed: int = 0,
                    n_orders: int = 0, order_seed: int | None = None, batch_thetas: int | None = None,
                    n_replicates: int = DEFAULT_SOBOL_REPLICATES, n_batches: int = 32) -> DeltaCurve:
    """Monte-Carlo Delta_k curve of the surrogate losses, k = 1..N-1, as a ``montecarlo.DeltaCurve``.

    Same parameters and same draws as ``montecarlo.delta_curve``: the thetas are
    ``sampler.sample(n_samples, D, estimator=estimator, seed=seed, n_replicates=n_replicates)``, standard errors
    over the estimator's i.i.d. units, ``n_orders`` random insertion orders from ``order_seed`` (default seed + 1),
    ``n_batches`` batch means. ``batch_thetas`` thetas are evaluated together (default: as many as keep their
    logits within ``LOGIT_BUDGET``, at most 256). ``n_forward`` is 0 (no network passes); ``meta`` records the
    jets' method and seconds.
    """
    t_start = time.perf_counter()
    s = _Surrogate(jets)
    N, D = s.N, s.D
    if not isinstance(sampler, Sampler):
        raise ValueError("sampler must be a lib.core.landscape.sampling.Sampler (see make_sampler), "
                         f"got {type(sampler).__name__}")
    sampler.covariance(D)
    check_choice("estimator", estimator, ESTIMATORS)
    n_samples = check_int("n_samples", n_samples, 2)
    n_orders = check_int("n_orders", n_orders, 0)
    if estimator == "antithetic" and (n_samples % 2 or n_samples < 4):
        raise ValueError(f"antithetic estimator needs an even n_samples >= 4 (two pairs theta, -theta for a "
                         f"standard error); got {n_samples}")
    if estimator == "sobol":
        n_replicates = check_int("n_replicates", n_replicates, 2)
        if n_samples % n_replicates:
            raise ValueError(f"sobol estimator needs n_samples to be a multiple of n_replicates={n_replicates}; "
                             f"got n_samples={n_samples}")
    if N < 2:
        raise ValueError(f"need at least 2 samples for L_{{k+1}} - L_k; got {N}")
    B = (check_int("batch_thetas", batch_thetas) if batch_thetas is not None
         else max(1, min(256, LOGIT_BUDGET // (s.W.element_size() * N * s.C))))

    thetas = sampler.sample(n_samples, D, estimator=estimator, seed=seed, n_replicates=n_replicates)
    unit = estimator_units(n_samples, estimator, n_replicates)
    n_units = n_samples // unit
    device = s.W.device
    l0 = s.losses(torch.zeros(1, D, dtype=torch.float64))[0]
    d0 = loss_differences(l0)

    acc_delta, acc_centred, acc_v = _UnitMoments(), _UnitMoments(), _UnitMoments()
    n_batches = min(check_int("n_batches", n_batches, 1), n_units)
    batch_of = ((torch.arange(n_samples) // unit) * n_batches // n_units).to(device)
    batch_sum = torch.zeros(n_batches, N - 1, dtype=torch.float64, device=device)
    o_seed = seed + 1 if order_seed is None else order_seed
    orders = OrderSums(N, n_orders, o_seed, device) if n_orders else None

    group = max(1, B // unit)                                  # whole estimator units per group
    for u0 in range(0, n_units, group):
        gu = min(group, n_units - u0)
        t0, t1 = u0 * unit, (u0 + gu) * unit
        sums = torch.zeros(gu, 2 * (N - 1) + 1, dtype=torch.float64, device=device)   # (dsq | csq | v) per unit
        for start in range(t0, t1, B):
            stop = min(start + B, t1)
            L = s.losses(thetas[start:stop])
            d = loss_differences(L)
            dsq = d * d
            row = torch.cat([dsq, (d - d0) ** 2, loss_variance(L).unsqueeze(1)], dim=1)
            sums.index_add_(0, (torch.arange(start, stop, device=device) - t0) // unit, row)
            batch_sum.index_add_(0, batch_of[start:stop], dsq)
            if orders is not None:
                orders.add(L)
            del L, d, dsq, row
        means = sums / unit
        acc_delta.add(means[:, :N - 1])
        acc_centred.add(means[:, N - 1:2 * (N - 1)])
        acc_v.add(means[:, -1])

    delta, stderr = acc_delta.result()
    centred, centred_stderr = acc_centred.result()
    vbar, vbar_se = acc_v.result()
    k = np.arange(1, N)
    out = DeltaCurve(
        k=k, delta=delta, stderr=stderr, centred=centred, centred_stderr=centred_stderr,
        d0sq=(d0 * d0).cpu().numpy(), losses0=l0.cpu().numpy(), v0=float(loss_variance(l0)),
        vbar=float(vbar), vbar_stderr=float(vbar_se), n_samples=n_samples, n_units=acc_delta.n,
        estimator=estimator, sampler=sampler.name, D=D, N=N, seconds=0.0, n_forward=0, n_orders=n_orders,
        meta={"surrogate": "logit", "seed": seed, "sampler_params": sampler.params(), "batch_thetas": B,
              "n_replicates": n_replicates if estimator == "sobol" else None,
              "order_seed": o_seed if n_orders else None, "jets_method": jets.method,
              "jets_seconds": jets.seconds},
    )
    if orders is not None:
        set_order_statistics(out, orders.order_sum)
    set_batch_means(out, batch_sum, batch_of)
    out.seconds = time.perf_counter() - t_start
    return out
