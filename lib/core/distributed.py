"""Data-parallel Hessian products and Monte-Carlo Delta_k over torch.distributed, one contiguous shard per rank.

Launch with ``torchrun`` (docs/distributed.md): every rank runs the same script, calls
``torch.distributed.init_process_group`` ("gloo" on CPU, "nccl" on GPUs), keeps only its shard of the data and
calls the same functions in the same order::

    xs, ys = shard(x, y)                                        # rank r: samples [start_r, stop_r) of the order
    op = DistributedHessianOperator(model, (xs, ys), loss_fn)   # a BatchedHessianOperator over the shard
    top = hessian.top_eigenpairs(op, k=10)                      # the unchanged solvers, on every rank
    curve = distributed_delta_curve(model, xs, ys, top.eigenvectors, sampler, n_samples=64, n_orders=20)

Every rank gets the same results, equal to one process's on the whole data up to floating-point rounding of sums.

**Sharding.** Rank r of W holds the contiguous block ``shard_bounds(N, W, r)`` of the global insertion order
(ranks in order, the first ``N mod W`` ranks one sample more), so the concatenation of the shards in rank order
is the insertion order. Shards may be of any sizes as long as they are contiguous and in rank order
(``shard_layout`` reads the sizes from the ranks).

**Why all-reducing the products is exact.** The loss is a mean over samples, L(w) = (1/N) sum_i l_i(w), so its
Hessian is a sum over samples, H = (1/N) sum_r sum_{i in shard r} Hess l_i. Rank r runs the double backward of its
shard's *summed* loss S_r(w) = sum_{i in shard r} l_i(w): the first backward gives grad S_r, the second
differentiates grad S_r . v and gives Hess S_r v. Differentiation is linear, so sum_r Hess S_r v = Hess(sum_r S_r) v:
the second backward of the global gradient sum_r grad S_r is the sum of the per-rank second backwards, and an
all-reduce (sum) of the per-rank products followed by one division by the global N gives H v exactly (up to the
order of floating-point additions). What would not be exact: dividing by per-rank sample counts (a mean of
per-rank means weights unequal shards wrongly; here products are summed and divided once by the global N), or a
loss that couples samples across the batch (batch norm in train mode; everything runs in eval mode). The vector v
is broadcast from the group's first rank before each product, so all ranks apply the same v even if their solvers'
arithmetic were to differ.

**Monte-Carlo curves.** The thetas come from the sampler's seed, identical on every rank. For each theta every
rank computes the per-sample losses of its shard; ``ShardedLosses`` places them at their global positions in a
zero vector and all-reduces (sum): every other rank adds an exact zero, so each rank holds the exact global loss
vector l_1..l_N in insertion order. ``distributed_delta_curve`` then runs the unchanged
``lib.core.landscape.delta.delta_curve`` on it (with ``ShardedLosses`` as the "model" over global sample indices):
prefix sums over the global order are those of one process, and the running (Welford) sums and the random
insertion orders are the single-process ones on every rank, so nothing needs merging. Cost per theta: one forward
pass over the shard and an all-reduce of N numbers.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lib.core.checks import check_data, check_int
from lib.core.hessian.batched import BatchedHessianOperator
from lib.core.landscape.delta import DeltaCurve, delta_curve
from lib.core.landscape.subspace import cross_entropy_per_sample
from lib.core.tensors import device_dtype

__all__ = ["shard_bounds", "shard", "shard_layout", "DistributedHessianOperator", "ShardedLosses",
           "gathered_losses", "distributed_delta_curve"]


def _require_initialized():
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: launch with torchrun and call "
                           "torch.distributed.init_process_group('gloo' or 'nccl') first (docs/distributed.md)")


def _src(group) -> int:
    """Global rank of the group's first rank (the source of broadcasts)."""
    return 0 if group is None else dist.get_global_rank(group, 0)


# ----------------------------------------------------------------------------------------------- sharding
def shard_bounds(n_total: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s contiguous block of ``n_total`` samples split over ``world_size`` ranks
    (the first ``n_total mod world_size`` ranks hold one sample more)."""
    n_total = check_int("n_total", n_total, 1)
    world_size = check_int("world_size", world_size, 1)
    rank = check_int("rank", rank, 0, world_size - 1)
    base, extra = divmod(n_total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(inputs: torch.Tensor, targets: torch.Tensor, rank: int | None = None, world_size: int | None = None,
          group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous shard of (inputs, targets) (default rank and world size: the process group's)."""
    n = check_data(inputs, targets)
    if rank is None or world_size is None:
        _require_initialized()
        rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    start, stop = shard_bounds(n, world_size, rank)
    return inputs[start:stop], targets[start:stop]


def shard_layout(n_local: int, device=None, group=None) -> tuple[int, int]:
    """(offset of this rank's shard in the global order, global N) from every rank's shard size (all-gather)."""
    _require_initialized()
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([int(n_local)], dtype=torch.int64, device=device), group=group)
    sizes = [int(s) for s in sizes]
    rank = dist.get_rank(group)
    return sum(sizes[:rank]), sum(sizes)


# ----------------------------------------------------------------------------------------------- Hessian
class DistributedHessianOperator(BatchedHessianOperator):
    """Hessian of the mean loss over the samples of all ranks; each rank streams only its own ``batches``.

    ``hvp(v)``: v is broadcast from the group's first rank, each rank computes the sum of per-sample Hessian
    products of its shard (``hvp_sum``), the sums are all-reduced and divided by the global N (see the module
    docstring for why this is exact). ``gradient()`` and ``loss()`` likewise; ``n_samples`` is the global N,
    ``local_samples`` this rank's. Every rank must make the same calls in the same order (collectives); the
    solvers of ``lib.core.hessian`` do, since all ranks see the same products. Other arguments as
    ``BatchedHessianOperator``; ``group``: the process group (None: the default group).
    """

    def __init__(self, model: nn.Module, batches, loss_fn=None, *, group=None, **kwargs):
        _require_initialized()
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        super().__init__(model, batches, loss_fn, **kwargs)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks (all-reduce, in place on ``t``; every rank gets the same values)."""
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def hvp(self, v) -> torch.Tensor:
        """H v of the global loss, with rank 0's v."""
        v = self.as_vector(v).clone()
        dist.broadcast(v, src=_src(self.group), group=self.group)
        return super().hvp(v)


# ----------------------------------------------------------------------------------------------- Monte Carlo
def gathered_losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The "loss" of ``ShardedLosses``' outputs: they already are per-sample losses (returned unchanged)."""
    return outputs


class ShardedLosses(nn.Module):
    """Per-sample losses of the global insertion order as a module over global sample indices.

    ``forward(indices)`` takes a contiguous range of global indices and returns their losses
    ``loss_fn(model(x_i), y_i)``: the rank holding sample i computes it, the others contribute zeros, and an
    all-reduce (sum) gives every rank the exact values. Its parameters are the wrapped model's (same
    ``parameters_to_vector`` order), so ``torch.func.functional_call`` with perturbed weights evaluates the model
    at those weights. ``offset``: position of this rank's first sample in the global order; ``n_total``: global N.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, offset: int, n_total: int,
                 loss_fn=None, group=None):
        super().__init__()
        self.model = model
        self.shard_inputs, self.shard_targets = inputs, targets
        self.offset, self.n_total, self.n_local = int(offset), int(n_total), len(inputs)
        self.loss_fn = loss_fn or cross_entropy_per_sample
        self.group = group

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        device, dtype = device_dtype(self.model)
        start = int(indices[0])
        stop = start + len(indices)
        if int(indices[-1]) != stop - 1:
            raise ValueError("ShardedLosses needs a contiguous range of global sample indices")
        out = torch.zeros(len(indices), dtype=dtype, device=device)
        lo, hi = max(start, self.offset), min(stop, self.offset + self.n_local)
        if lo < hi:
            x = self.shard_inputs[lo - self.offset:hi - self.offset].to(device)
            x = x.to(dtype) if x.is_floating_point() else x
            y = self.shard_targets[lo - self.offset:hi - self.offset].to(device)
            out[lo - start:hi - start] = self.loss_fn(self.model(x), y)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out


def distributed_delta_curve(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, basis: torch.Tensor,
                            sampler, n_samples: int, *, loss_fn=None, group=None, progress: bool = False,
                            **kwargs) -> DeltaCurve:
    """``lib.core.landscape.delta.delta_curve`` over the samples of all ranks, this rank holding ``(inputs, targets)``,
    the next contiguous block of the global insertion order after the lower ranks' blocks.

    Same arguments as ``delta_curve`` (``estimator``, ``seed``, ``n_orders``, ``order_seed``, ``batch_thetas``,
    ``n_replicates``, ``chunk_size``, ``n_batches``; ``loss_fn`` per sample, default cross-entropy); the seeds
    must be the same on every rank. Returns the same ``DeltaCurve`` on every rank (``meta["world_size"]`` added);
    ``progress`` shows a bar on the group's first rank only.
    """
    _require_initialized()
    check_data(inputs, targets)
    device, _ = device_dtype(model)
    offset, n_total = shard_layout(len(inputs), device, group)
    losses = ShardedLosses(model, inputs, targets, offset, n_total, loss_fn, group)
    indices = torch.arange(n_total, device=device)
    first = dist.get_rank(group) == 0
    curve = delta_curve(losses, indices, indices, basis, sampler, n_samples, loss_fn=gathered_losses,
                        progress=progress and first, **kwargs)
    curve.meta["world_size"] = dist.get_world_size(group)
    return curve
