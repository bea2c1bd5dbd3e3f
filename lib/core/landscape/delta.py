"""Monte-Carlo curves Delta_k = E_theta[(L_{k+1} - L_k)^2 (w* + P^T theta)] (docs/specification.md 1, 4).

One forward pass at a point w gives every per-sample loss l_1..l_N, hence, from cumulative sums (float64),
    d_k(w) = L_{k+1}(w) - L_k(w) = (l_{k+1}(w) - L_k(w)) / (k+1),   k = 1..N-1,
for all k at once (``loss_differences``). ``delta_curve`` draws T thetas (common random numbers: the same thetas for
every k; the insertion order is the given order of ``inputs``, identical for every theta), and accumulates the mean
and variance of d_k(theta)^2 online (Welford, float64) over i.i.d. *units* of the estimator (plain: one theta,
antithetic: a pair (theta, -theta), Sobol: one independently scrambled block), so memory is O(N) (+ O(R N) for R
random insertion orders) whatever T is. Next to d_k^2 the same passes accumulate |d_k(theta)| (the pointwise
criterion E_theta |L_{k+1} - L_k|, with |d_k(0)| at w* itself).

``full_space_curve`` is the full-space isotropic criterion of Kiselev & Grabovoy (2026): the same curve for
w = w* + eps, eps ~ N(0, s^2 I_n) in all n parameters (``full_space_scale``: s = sigma sqrt(D/n) gives the subspace
curve's expected squared perturbation norm), with the same running sums, so the two are directly comparable.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from lib.core.checks import check_choice, check_data, check_int, check_positive
from lib.core.landscape.sampling import DEFAULT_SOBOL_REPLICATES, ESTIMATORS, Sampler, estimator_units
from lib.core.landscape.subspace import SubspaceLosses, check_basis
from lib.core.native import order_sums, status
from lib.core.tensors import device_dtype, flat_params

__all__ = [
    "DeltaCurve",
    "loss_differences",
    "prefix_means",
    "loss_variance",
    "order_average_formula",
    "delta_curve",
    "FULL_SPACE_ESTIMATORS",
    "FULL_SPACE_SCALES",
    "full_space_scale",
    "full_space_perturbations",
    "full_space_curve",
    "full_space_curves",
    "OrderSums",
]


# ----------------------------------------------------------------------------------------------- pure helpers
def prefix_means(values):
    """Prefix means along the last axis: out[..., k-1] = mean(values[..., :k]), float64 (torch or numpy)."""
    if isinstance(values, np.ndarray):
        v = values.astype(np.float64, copy=False)
        k = np.arange(1, v.shape[-1] + 1, dtype=np.float64)
        return np.cumsum(v, axis=-1) / k
    v = torch.as_tensor(values).to(torch.float64)
    k = torch.arange(1, v.shape[-1] + 1, dtype=torch.float64, device=v.device)
    return torch.cumsum(v, dim=-1) / k


def loss_differences(per_sample_losses):
    """d_k = L_{k+1} - L_k = (l_{k+1} - L_k)/(k+1) for k = 1..N-1 along the last axis.

    ``per_sample_losses``: (..., N) tensor or array (any float dtype; accumulated in float64).
    Returns (..., N-1) float64 of the same kind (torch or numpy); entry j is k = j + 1.
    """
    N = per_sample_losses.shape[-1]
    if N < 2:
        raise ValueError(f"need at least N = 2 per-sample losses along the last axis, got N={N}")
    L = prefix_means(per_sample_losses)
    if isinstance(L, np.ndarray):
        l = per_sample_losses.astype(np.float64, copy=False)
        k = np.arange(1, N, dtype=np.float64)
    else:
        l = torch.as_tensor(per_sample_losses).to(torch.float64)
        k = torch.arange(1, N, dtype=torch.float64, device=l.device)
    return (l[..., 1:] - L[..., :-1]) / (k + 1)


def loss_variance(per_sample_losses):
    """V(w) = (1/N) sum_i (l_i - L_N)^2 along the last axis (float64)."""
    if isinstance(per_sample_losses, np.ndarray):
        return per_sample_losses.astype(np.float64).var(axis=-1)
    return torch.as_tensor(per_sample_losses).to(torch.float64).var(dim=-1, unbiased=False)


def order_average_formula(vbar: float, N: int, k=None) -> np.ndarray:
    """E over uniformly random insertion orders of (L_{k+1} - L_k)^2 = V N / ((N-1) k (k+1)).

    docs/specification.md section 4.2."""
    k = np.arange(1, N, dtype=np.float64) if k is None else np.asarray(k, dtype=np.float64)
    return vbar * N / ((N - 1) * k * (k + 1))


# ----------------------------------------------------------------------------------------------- accumulators
class _Welford:
    """Online mean / variance of i.i.d. vectors (float64), O(size) memory; batches are merged with Chan et al.'s
    parallel update (a few vector operations per batch, not per vector)."""

    def __init__(self, shape, device):
        self.n = 0
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(shape, dtype=torch.float64, device=device)

    def add_batch(self, X: torch.Tensor):
        """Add the rows of X (B, *shape) as B i.i.d. observations."""
        nb = X.shape[0]
        if nb == 0:
            return
        mb = X.mean(0)
        m2b = ((X - mb) ** 2).sum(0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * (nb / n)
        self.m2 += m2b + delta * delta * (self.n * nb / n)
        self.n = n

    def stderr(self) -> torch.Tensor:
        if self.n < 2:
            return torch.full_like(self.mean, float("nan"))
        return torch.sqrt(self.m2.clamp_min(0) / (self.n - 1) / self.n)


class _UnitAccumulator:
    """Averages ``unit`` consecutive per-theta values into one i.i.d. unit, fed to a Welford accumulator."""

    def __init__(self, shape, device, unit: int):
        self.unit = unit
        self.count = 0
        self.buf = torch.zeros(shape, dtype=torch.float64, device=device)
        self.welford = _Welford(shape, device)

    def _close(self):
        self.welford.add_batch((self.buf / self.unit).unsqueeze(0))
        self.buf.zero_()
        self.count = 0

    def add_batch(self, X: torch.Tensor):
        """Add consecutive per-theta rows X (B, *shape)."""
        i, B = 0, X.shape[0]
        if self.count:                                     # finish the open unit
            take = min(self.unit - self.count, B)
            self.buf += X[:take].sum(0)
            self.count += take
            i = take
            if self.count == self.unit:
                self._close()
        full = (B - i) // self.unit
        if full:                                           # whole units of this batch at once
            block = X[i:i + full * self.unit]
            self.welford.add_batch(block.reshape(full, self.unit, *X.shape[1:]).mean(1))
            i += full * self.unit
        if i < B:                                          # open a new unit with the rest
            self.buf += X[i:].sum(0)
            self.count += B - i

    def result(self):
        if self.count:
            raise RuntimeError("incomplete estimator unit (n_samples not a multiple of the unit size)")
        return self.welford.mean.cpu().numpy(), self.welford.stderr().cpu().numpy()


class OrderSums:
    """The sum over thetas of d_k^2 in each of R random insertion orders (permutations of the N samples drawn from
    ``torch.Generator().manual_seed(seed)``): ``order_sum`` (R, N-1) float64, fed with (B, N) float64 rows. On the
    CPU with the C kernel built (``lib.core.native.order_sums``, ``engine == "native"``) one pass per order with
    the thetas in the register lanes; elsewhere (``engine == "torch"``) torch's operations, the same sums to a few
    units in the last place."""

    def __init__(self, N: int, n_orders: int, seed: int, device, engine: str = "auto"):
        check_choice("engine", engine, ("auto", "native", "torch"))
        g = torch.Generator().manual_seed(int(seed))
        self.perms = torch.stack([torch.randperm(N, generator=g) for _ in range(n_orders)]).to(device)
        self.order_sum = torch.zeros(n_orders, N - 1, dtype=torch.float64, device=device)
        native = torch.device(device).type == "cpu" and order_sums.available()
        if engine == "native" and not native:
            why = status()["order_sums"]["reason"] or f"not a CPU device: {device}"
            raise ValueError(f"engine='native' is not available here ({why}); use engine='auto'")
        self.engine = "native" if native and engine != "torch" else "torch"
        if self.engine == "native":
            self._inv = 1.0 / torch.arange(N + 1, dtype=torch.float64).clamp_min(1)
            return
        k = torch.arange(1, N, dtype=torch.float64, device=device)
        self._buffers = (torch.empty(n_orders, N, dtype=torch.float64, device=device),
                         torch.empty(n_orders, N, dtype=torch.float64, device=device),
                         torch.empty(n_orders, N - 1, dtype=torch.float64, device=device),
                         k, k + 1, self.perms.reshape(-1))

    def add(self, L: torch.Tensor) -> None:
        """order_sum += d_k^2 of every row of L in every order: ``loss_differences(L[b][perms])``; on the torch
        engine computed in reused buffers and in place (2.4x faster for R = 50, N = 10,000 than a per-row loop that
        allocates its (R, N) temporaries)."""
        if self.engine == "native":
            order_sums.add(self.order_sum, L.to(torch.float64), self.perms, self._inv)
            return
        permuted, sums, d, k, k1, flat = self._buffers
        for row in L.to(torch.float64):
            torch.index_select(row, 0, flat, out=permuted.view(-1))     # l_{pi_r(i)}
            torch.cumsum(permuted, -1, out=sums)
            means = sums[:, :-1].div_(k)                                 # L_k in order r, k = 1..N-1
            torch.sub(permuted[:, 1:], means, out=d).div_(k1)            # (l_{k+1} - L_k) / (k + 1)
            self.order_sum += d.mul_(d)


class _CurveSums:
    """Every running sum of one Delta_k curve, fed with consecutive per-theta rows of per-sample losses (the
    subspace curve and the full-space curve share it, so their estimators are the same): d_k^2, (d_k - d_k(0))^2,
    |d_k| (the pointwise criterion), V(w), the batch means of d_k^2 and the R random orders."""

    def __init__(self, l0: torch.Tensor, n_samples: int, unit: int, device, n_orders: int, order_seed: int,
                 n_batches: int):
        N = l0.shape[-1]
        self.l0, self.N, self.n_samples, self.n_orders = l0, N, n_samples, n_orders
        self.d0 = loss_differences(l0)
        self.acc_delta = _UnitAccumulator(N - 1, device, unit)
        self.acc_centred = _UnitAccumulator(N - 1, device, unit)
        self.acc_abs = _UnitAccumulator(N - 1, device, unit)
        self.acc_v = _UnitAccumulator((), device, unit)
        n_units = n_samples // unit
        self.n_batches = min(check_int("n_batches", n_batches, 1), n_units)
        self.batch_of = (torch.arange(n_samples) // unit) * self.n_batches // n_units          # batch of each theta
        self.batch_sum = torch.zeros(self.n_batches, N - 1, dtype=torch.float64, device=device)
        self.loss_theta = torch.zeros(n_samples, dtype=torch.float64, device=device)
        self.orders = OrderSums(N, n_orders, order_seed, device) if n_orders else None

    def add(self, L: torch.Tensor, start: int):
        """Add the per-sample losses L (B, N) float64 of thetas start..start+B-1."""
        d = loss_differences(L)             # (B, N-1)
        dsq = d * d
        csq = (d - self.d0) ** 2
        v = loss_variance(L)                # (B,)
        self.acc_delta.add_batch(dsq)
        self.acc_centred.add_batch(csq)
        self.acc_abs.add_batch(d.abs())
        self.acc_v.add_batch(v)
        self.batch_sum.index_add_(0, self.batch_of[start:start + L.shape[0]].to(self.batch_sum.device), dsq)
        self.loss_theta[start:start + L.shape[0]] = L.mean(1)
        if self.orders is not None:
            self.orders.add(L)
        del d, dsq, csq, v                 # free this batch before the next one is computed (peak memory)

    def curve(self, **fields) -> DeltaCurve:
        """The DeltaCurve of the sums (``fields``: estimator, sampler, D, n_forward, meta)."""
        N, d0 = self.N, self.d0
        delta, stderr = self.acc_delta.result()
        centred, centred_stderr = self.acc_centred.result()
        abs_mean, abs_stderr = self.acc_abs.result()
        vbar, vbar_se = self.acc_v.result()
        k = np.arange(1, N)
        out = DeltaCurve(
            k=k, delta=delta, stderr=stderr, centred=centred, centred_stderr=centred_stderr,
            d0sq=(d0 * d0).cpu().numpy(), losses0=self.l0.cpu().numpy(), v0=float(loss_variance(self.l0)),
            vbar=float(vbar), vbar_stderr=float(vbar_se), n_samples=self.n_samples,
            n_units=self.acc_delta.welford.n, N=N, seconds=0.0, n_orders=self.n_orders,
            abs_mean=abs_mean, abs_stderr=abs_stderr, abs0=d0.abs().cpu().numpy(),
            loss_theta=self.loss_theta.cpu().numpy(), **fields)
        if self.orders is not None:
            set_order_statistics(out, self.orders.order_sum)
        set_batch_means(out, self.batch_sum, self.batch_of)
        return out


def set_order_statistics(curve: "DeltaCurve", order_sum: torch.Tensor) -> None:
    """Fill the order fields of ``curve`` from ``order_sum`` (R, N-1), the sum over its thetas of d_k^{pi_r}^2:
    per-order curves, their mean, median and standard error, and the exact order average of ``curve.vbar``."""
    R, N = order_sum.shape[0], curve.N
    curves = (order_sum / curve.n_samples).cpu().numpy()           # (R, N-1): mean over thetas, per order
    curve.order_mean = curves.mean(axis=0)
    curve.order_median = np.median(curves, axis=0)
    curve.order_stderr = curves.std(axis=0, ddof=1) / math.sqrt(R) if R > 1 else np.full(N - 1, np.nan)
    curve.order_formula = order_average_formula(curve.vbar, N, curve.k)
    curve.order_curves = curves


def set_batch_means(curve: "DeltaCurve", batch_sum: torch.Tensor, batch_of: torch.Tensor) -> None:
    """``curve.batch_means``: ``batch_sum`` (B, N-1) over the thetas of each batch, divided by their count
    (``batch_of``: the batch of each theta)."""
    counts = torch.bincount(batch_of, minlength=batch_sum.shape[0]).to(torch.float64).to(batch_sum.device)
    curve.batch_means = (batch_sum / counts[:, None]).cpu().numpy()


# ----------------------------------------------------------------------------------------------- result
@dataclass
class DeltaCurve:
    """Monte-Carlo Delta_k curve and companions; arrays are float64 numpy of length N-1 indexed by ``k``.

    delta, stderr          E_theta[d_k(theta)^2] and its standard error (over the estimator's i.i.d. units)
    centred, centred_stderr E_theta[(d_k(theta) - d_k(0))^2] and its standard error
    d0sq                   d_k(0)^2 (the theta = 0 term that Theorem 1 of the original paper assumes away)
    losses0                per-sample losses at w* (length N, in the given order); L_k(w*) are their prefix means
    v0                     V(w*) = (1/N) sum_i (l_i(w*) - L_N(w*))^2
    vbar, vbar_stderr      Monte-Carlo V-bar = E_theta V(w* + P^T theta)
    n_orders = R > 0 only (random insertion orders, same forward passes, permuted cumulative sums):
    order_mean, order_median, order_stderr   mean / median / standard error over the R orders of the
                                             per-order Monte-Carlo curves mean_theta d_k^{pi_r}(theta)^2
    order_formula          vbar N / ((N-1) k (k+1)) (exact order average for these thetas, specification 4.2)
    order_curves           (R, N-1) the per-order curves themselves (for K of each order)
    batch_means            (B, N-1) mean of d_k^2 over each of B disjoint consecutive batches of estimator units
                           (for a simultaneous band over k); B = min(n_batches, number of units)
    abs_mean, abs_stderr   the pointwise criterion E_theta |d_k(theta)| and its standard error (same units; by
                           Jensen abs_mean <= sqrt(delta) for every k, exactly so for the sample means too)
    abs0                   |d_k(0)|, the increment at w* itself
    loss_theta             (T,) L_N(w* + P^T theta_t) of each theta, in draw order (how far the neighbourhood
                           climbs above L_N(w*); the same forward passes)
    """

    k: np.ndarray
    delta: np.ndarray
    stderr: np.ndarray
    centred: np.ndarray
    centred_stderr: np.ndarray
    d0sq: np.ndarray
    losses0: np.ndarray
    v0: float
    vbar: float
    vbar_stderr: float
    n_samples: int
    n_units: int
    estimator: str
    sampler: str
    D: int
    N: int
    seconds: float
    n_forward: int
    n_orders: int = 0
    order_mean: np.ndarray | None = None
    order_median: np.ndarray | None = None
    order_stderr: np.ndarray | None = None
    order_formula: np.ndarray | None = None
    order_curves: np.ndarray | None = None
    batch_means: np.ndarray | None = None
    abs_mean: np.ndarray | None = None
    abs_stderr: np.ndarray | None = None
    abs0: np.ndarray | None = None
    loss_theta: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- main entry
def delta_curve(model, inputs, targets, basis: torch.Tensor, sampler: Sampler, n_samples: int,
                estimator: str = "plain", seed: int = 0, n_orders: int = 0, order_seed: int | None = None,
                batch_thetas: int = 16, n_replicates: int = DEFAULT_SOBOL_REPLICATES,
                chunk_size: int | None = None, loss_fn=None, progress: bool = True,
                n_batches: int = 32) -> DeltaCurve:
    """Monte-Carlo Delta_k for k = 1..N-1 at w = w* + P^T theta, theta ~ ``sampler``.

    Parameters: ``basis`` (D, n_params) with rows in parameters_to_vector order; ``n_samples`` = T thetas (>= 2;
    even for ``antithetic``; a multiple of ``n_replicates`` >= 2 for ``sobol``, whose standard error is taken
    across the independently scrambled blocks); ``n_orders`` = R random insertion orders (seeded by
    ``order_seed``, default ``seed + 1``) evaluated on the same per-sample losses; ``batch_thetas`` thetas are
    post-processed together; ``n_batches`` batch means of d_k^2 are kept for a simultaneous band. Costs T + 1
    forward passes over the N samples (theta = 0 included).
    """
    t_start = time.perf_counter()
    D = check_basis(model, basis)
    if not isinstance(sampler, Sampler):
        raise ValueError("sampler must be a lib.core.landscape.sampling.Sampler (see make_sampler), "
                         f"got {type(sampler).__name__}")
    sampler.covariance(D)  # validates D against the sampler (curvature: D == len(eigenvalues))
    check_choice("estimator", estimator, ESTIMATORS)
    n_samples = check_int("n_samples", n_samples, 2)
    n_orders = check_int("n_orders", n_orders, 0)
    batch_thetas = check_int("batch_thetas", batch_thetas)
    if estimator == "antithetic" and n_samples % 2:
        raise ValueError(f"antithetic estimator needs an even n_samples (pairs theta, -theta); got {n_samples}")
    if estimator == "antithetic" and n_samples < 4:
        raise ValueError(f"antithetic estimator needs n_samples >= 4 (two pairs for a standard error); got "
                         f"{n_samples}")
    if estimator == "sobol":
        n_replicates = check_int("n_replicates", n_replicates, 2)
        if n_samples % n_replicates:
            raise ValueError(f"sobol estimator needs n_samples to be a multiple of n_replicates={n_replicates}; "
                             f"got n_samples={n_samples}")
    N = check_data(inputs, targets)
    if N < 2:
        raise ValueError(f"need at least 2 samples (inputs) for L_{{k+1}} - L_k; got {N}")

    thetas = sampler.sample(n_samples, D, estimator=estimator, seed=seed, n_replicates=n_replicates)
    unit = estimator_units(n_samples, estimator, n_replicates)
    device, _ = device_dtype(model)

    evaluate = SubspaceLosses(model, inputs, targets, basis, chunk_size=chunk_size, loss_fn=loss_fn)

    def losses(th):
        return evaluate(th).to(torch.float64)

    l0 = losses(torch.zeros(1, D, dtype=torch.float64))[0]
    sums = _CurveSums(l0, n_samples, unit, device, n_orders, seed + 1 if order_seed is None else order_seed,
                      n_batches)
    n_forward = 1
    with tqdm(total=n_samples, disable=not progress, desc=f"delta_curve {sampler.name}/{estimator}",
              leave=False) as bar:
        for start in range(0, n_samples, batch_thetas):
            th = thetas[start:start + batch_thetas]
            sums.add(losses(th), start)          # (B, N) float64
            n_forward += th.shape[0]
            bar.update(th.shape[0])
    out = sums.curve(estimator=estimator, sampler=sampler.name, D=D, n_forward=n_forward,
                     meta={"seed": seed, "sampler_params": sampler.params(), "batch_thetas": batch_thetas,
                           "engine": evaluate.engine,
                           "n_replicates": n_replicates if estimator == "sobol" else None,
                           "order_seed": (seed + 1 if order_seed is None else order_seed) if n_orders else None})
    out.seconds = time.perf_counter() - t_start
    return out


# ----------------------------------------------------------------------------------------------- full space
#: estimators of the full-space curve (a Sobol sequence in n ~ 10^5 dimensions is not available)
FULL_SPACE_ESTIMATORS = ("plain", "antithetic")
#: how the per-parameter scale s of the full-space perturbation follows from the subspace's (sigma, D)
FULL_SPACE_SCALES = ("norm", "coordinate")


def full_space_scale(sigma: float, D: int, n_params: int, scale: str = "norm") -> float:
    """The per-parameter standard deviation s of eps ~ N(0, s^2 I_n) compared with theta ~ N(0, sigma^2 I_D).

    ``"norm"`` (the default): s = sigma sqrt(D / n), the same expected squared perturbation norm,
    E||P^T theta||^2 = sigma^2 D = n s^2 = E||eps||^2, so both criteria move the weights equally far and differ only
    in the directions (top-D Hessian subspace vs every direction); ``"coordinate"``: s = sigma, the same scale per
    coordinate (the full-space perturbation is then sqrt(n / D) times longer)."""
    sigma = check_positive("sigma", sigma)
    D, n_params = check_int("D", D), check_int("n_params", n_params)
    check_choice("scale", scale, FULL_SPACE_SCALES)
    return float(sigma * math.sqrt(D / n_params)) if scale == "norm" else float(sigma)


def full_space_perturbations(n_params: int, rows, scale: float, seed: int = 0, estimator: str = "plain",
                             dtype=torch.float64) -> torch.Tensor:
    """Rows ``rows`` (an iterable of indices t) of the full-space perturbations eps_t ~ N(0, scale^2 I_n), (len, n).

    Row t depends only on (seed, t) (plain: its own numpy stream ``default_rng([seed, t])``; antithetic: rows 2j and
    2j+1 are +z_j and -z_j with z_j from ``default_rng([seed, j])``), so any block of rows is the same whatever
    blocks the caller draws them in."""
    n_params = check_int("n_params", n_params)
    scale = check_positive("scale", scale)
    check_choice("estimator", estimator, FULL_SPACE_ESTIMATORS)
    out = []
    for t in rows:
        j, sign = (t, 1.0) if estimator == "plain" else (t // 2, 1.0 - 2.0 * (t % 2))
        out.append(sign * scale * np.random.default_rng([int(seed), int(j)]).standard_normal(n_params))
    return torch.as_tensor(np.stack(out) if out else np.zeros((0, n_params))).to(dtype)


def full_space_curve(model, inputs, targets, scale: float, n_samples: int, estimator: str = "plain", seed: int = 0,
                     n_orders: int = 0, order_seed: int | None = None, batch_thetas: int = 16,
                     chunk_size: int | None = None, loss_fn=None, progress: bool = True,
                     n_batches: int = 32) -> DeltaCurve:
    """The full-space isotropic criterion: Delta_k = E_eps[(L_{k+1} - L_k)^2 (w* + eps)], eps ~ N(0, scale^2 I_n) in
    all n parameters (Kiselev & Grabovoy 2026), with the same running sums, standard errors, orders, V-bar and
    pointwise criterion as ``delta_curve`` (so the two curves are directly comparable).

    ``scale`` is the per-parameter standard deviation s (``full_space_scale`` turns a subspace's (sigma, D) into it);
    eps_t are ``full_space_perturbations`` rows (``estimator`` "plain" or "antithetic"). There is no subspace
    shortcut: every eps costs one forward pass over the N samples at the weights w* + eps (``batch_thetas``
    perturbations are drawn and post-processed together). Costs T + 1 forward passes (eps = 0 included); ``D`` of
    the result is n and ``meta["scale"]`` is s. ``full_space_curves`` computes several scales in one pass."""
    return full_space_curves(model, inputs, targets, [scale], n_samples, estimator=estimator, seed=seed,
                             n_orders=n_orders, order_seed=order_seed, batch_thetas=batch_thetas,
                             chunk_size=chunk_size, loss_fn=loss_fn, progress=progress, n_batches=n_batches)[0]


def full_space_curves(model, inputs, targets, scales, n_samples: int, estimator: str = "plain", seed: int = 0,
                      n_orders: int = 0, order_seed: int | None = None, batch_thetas: int = 16,
                      chunk_size: int | None = None, loss_fn=None, progress: bool = True,
                      n_batches: int = 32) -> list[DeltaCurve]:
    """``full_space_curve`` at every s of ``scales`` from one set of directions: eps_t = s z_t with the same unit
    draws z_t (``full_space_perturbations`` at scale 1) for every s, so the curves share their random numbers and,
    for a model whose first layer is a Linear (the MLPs), its product with the inputs: a block of B directions is
    a B-dimensional "subspace" of the z_t (``SubspaceLosses`` with basis rows z_t, thetas s e_t), whose first-layer
    pre-activations are computed once (B + 1 passes) and combined per scale at N h multiply-adds, instead of
    N 784 h per perturbation. Other models cost one forward pass per (s, eps_t), as before. Returns one curve per
    scale, in the order given; each ``seconds`` is its share (the total over ``len(scales)``)."""
    t_start = time.perf_counter()
    scales = [check_positive("scale", s) for s in scales]
    if not scales:
        raise ValueError("scales must name at least one per-parameter scale s > 0; got an empty list")
    check_choice("estimator", estimator, FULL_SPACE_ESTIMATORS)
    n_samples = check_int("n_samples", n_samples, 2)
    n_orders = check_int("n_orders", n_orders, 0)
    batch_thetas = check_int("batch_thetas", batch_thetas)
    if estimator == "antithetic" and (n_samples % 2 or n_samples < 4):
        raise ValueError(f"antithetic estimator needs an even n_samples >= 4 (pairs eps, -eps); got {n_samples}")
    N = check_data(inputs, targets)
    if N < 2:
        raise ValueError(f"need at least 2 samples (inputs) for L_{{k+1}} - L_k; got {N}")
    n = flat_params(model).numel()
    device, dtype = device_dtype(model)
    unit = estimator_units(n_samples, estimator)
    order_seed = seed + 1 if order_seed is None else order_seed
    S, sums = len(scales), None
    scale_col = torch.tensor(scales, device=device, dtype=dtype)
    with tqdm(total=n_samples * S, disable=not progress, desc=f"full_space_curves {estimator} x{S}",
              leave=False) as bar:
        for start in range(0, n_samples, batch_thetas):
            rows = range(start, min(n_samples, start + batch_thetas))
            z = full_space_perturbations(n, rows, 1.0, seed, estimator).to(device=device, dtype=dtype)
            B = z.shape[0]
            losses = SubspaceLosses(model, inputs, targets, z, chunk_size=chunk_size, loss_fn=loss_fn)
            eye = torch.eye(B, device=device, dtype=dtype)
            thetas = (scale_col[:, None, None] * eye).reshape(S * B, B)     # row j B + t: s_j e_t
            if sums is None:                   # eps = 0 on the same path, with the first block
                thetas = torch.cat([torch.zeros_like(thetas[:1]), thetas])
            L = losses(thetas).to(torch.float64)
            if sums is None:
                sums = [_CurveSums(L[0], n_samples, unit, device, n_orders, order_seed, n_batches)
                        for _ in scales]
                L = L[1:]
            for j in range(S):
                sums[j].add(L[j * B:(j + 1) * B], start)
            del L, z, losses
            bar.update(B * S)
    share = (time.perf_counter() - t_start) / S
    out = []
    for s, acc in zip(scales, sums):
        c = acc.curve(estimator=estimator, sampler="full_space_gaussian", D=n, n_forward=n_samples + 1,
                      meta={"seed": seed, "scale": s, "batch_thetas": batch_thetas, "scales_together": S,
                            "sampler_params": {"name": "full_space_gaussian", "scale": s},
                            "order_seed": order_seed if n_orders else None})
        c.seconds = share
        out.append(c)
    return out
