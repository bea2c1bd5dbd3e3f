"""Low-level tensor helpers shared by the science modules (one copy each).

* flat weight vectors in ``torch.nn.utils.parameters_to_vector`` order: ``flat_params``, ``n_params``,
  ``unflatten`` (views usable inside ``torch.func``), ``device_dtype``;
* ``eval_mode``: eval mode for a block, every submodule's flag restored afterwards;
* ``chunks``: slices of a data set on a target device and dtype.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["flat_params", "n_params", "param_layout", "unflatten", "device_dtype", "eval_mode", "chunks"]


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """Detached copy of the model's weights as one flat vector (``parameters_to_vector`` order)."""
    return torch.nn.utils.parameters_to_vector([p.detach() for p in model.parameters()]).clone()


def n_params(model: torch.nn.Module) -> int:
    """Number of scalar parameters (length of the flat vector)."""
    return sum(p.numel() for p in model.parameters())


def param_layout(model: torch.nn.Module) -> tuple[list[str], list[torch.Size], list[int]]:
    """Names, shapes and element counts of the parameters, in ``parameters_to_vector`` order."""
    named = list(model.named_parameters())
    return [n for n, _ in named], [p.shape for _, p in named], [p.numel() for _, p in named]


def unflatten(model: torch.nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameter dict for ``functional_call`` made of *views* of the flat vector ``flat`` (no copies).

    Leading batch dimensions of ``flat`` are kept; works with dual / batched tensors (``torch.func``).
    """
    names, shapes, numels = param_layout(model)
    if flat.shape[-1] != sum(numels):
        raise ValueError(f"flat weight vector has length {flat.shape[-1]}, the model has {sum(numels)} "
                         "parameters")
    pieces = torch.split(flat, numels, dim=-1)
    return {n: t.reshape(*flat.shape[:-1], *s) for n, t, s in zip(names, pieces, shapes)}


def device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype shared by all parameters of ``model`` (ValueError if it has none or they differ)."""
    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters")
    if len({p.dtype for p in params}) != 1 or len({p.device for p in params}) != 1:
        raise ValueError("all parameters must share one dtype and device; convert the model with .to()")
    return params[0].device, params[0].dtype


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode for the block; every submodule's train/eval flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` intra-op threads (tiny tensors: one thread avoids the cost of synchronising two,
    which on a busy 2-core machine made a small model up to 9x slower), then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def chunks(inputs: torch.Tensor, targets: torch.Tensor, size: int, device=None,
           dtype: torch.dtype | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(x, y)`` slices of at most ``size`` samples, moved to ``device``; floating inputs cast to
    ``dtype`` when given."""
    for start in range(0, len(inputs), size):
        x = inputs[start:start + size].to(device) if device is not None else inputs[start:start + size]
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        y = targets[start:start + size]
        yield x, (y.to(device) if device is not None else y)
