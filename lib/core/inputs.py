"""Checks of a user's device, model and data before any compute (``lib.api.analyze``): each bad input fails with a
``ParameterError`` that names it, says where it is and what is allowed, before a solver (or LAPACK) sees it."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from lib.core.checks import ParameterError
from lib.core.hessian.batched import Batches, as_batches
from lib.core.tensors import eval_mode

#: errors a model or a loss raises on inputs it rejects (shape, dtype, index out of range)
REJECTED = (RuntimeError, ValueError, TypeError, IndexError)


def available_devices() -> list[str]:
    """The devices torch can use on this machine: "cpu", then every CUDA device, then "mps" where present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(device) -> torch.device:
    """``device`` as a torch.device that exists on this machine (ParameterError naming the available ones)."""
    available = available_devices()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ParameterError("device", device, f"one of the devices of this machine: {available}") from None
    if dev.type == "cpu":
        return dev
    name = str(dev) if dev.index is not None or dev.type != "cuda" else "cuda:0"
    if name not in available:
        why = {"cuda": f"this machine has {torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available()
               else "torch finds no CUDA device on this machine"}.get(dev.type, f"no {dev.type} device here")
        raise ParameterError("device", device, f"one of the devices of this machine: {available}",
                             hint=f"{why}; pass device='cpu' (or one of those listed)")
    return dev


def _first_bad(t: torch.Tensor) -> tuple[int, tuple, float, int]:
    """(row, position within the row, value, count) of the first non-finite entry of ``t`` (rows: dim 0)."""
    t = t.detach()
    bad = ~torch.isfinite(t)
    flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), t.shape))
    return index[0], index[1:], float(t.reshape(-1)[flat]), int(bad.sum())


def check_weights(model: torch.nn.Module) -> None:
    """Every floating parameter and buffer of ``model`` is finite; else names the first bad one and its index."""
    tensors = [("parameter", n, p) for n, p in model.named_parameters()]
    tensors += [("buffer", n, b) for n, b in model.named_buffers()]
    for kind, name, t in tensors:
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.detach()).all()):
            row, rest, value, count = _first_bad(t.reshape(t.shape or (1,)))
            index = ", ".join(str(i) for i in (row, *rest))
            raise ParameterError(f"model {kind} {name!r}[{index}]", value, "finite weights",
                                 hint=f"{count} of its {t.numel()} values are NaN or inf: train or load the model "
                                      "again, or check the checkpoint")


def _tensors(x) -> list[tuple[str, torch.Tensor]]:
    if torch.is_tensor(x):
        return [("", x)]
    if isinstance(x, (tuple, list)):
        return [(f"[{i}]", t) for i, t in enumerate(x) if torch.is_tensor(t)]
    return []


def _check_finite(what: str, x, b: int, start: int) -> None:
    for suffix, t in _tensors(x):
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            row, rest, value, count = _first_bad(t)
            where = ", ".join(str(i) for i in (row, *rest))
            raise ParameterError(f"batch {b} {what}{suffix}[{where}]", value, f"finite {what}",
                                 hint=f"sample {start + row} of the data (row {row} of batch {b}) is the first with "
                                      f"a NaN or inf, and batch {b} has {count}: drop or impute them")


def _move(x, device, dtype):
    """As the Hessian operator moves a batch: to ``device``, floating tensors cast to ``dtype``."""
    if isinstance(x, (tuple, list)):
        return type(x)(_move(u, device, dtype) for u in x)
    if not torch.is_tensor(x):
        return x
    x = x.to(device)
    return x.to(dtype) if x.is_floating_point() else x


def _shape(x) -> str:
    parts = [f"shape {tuple(t.shape)}, dtype {t.dtype}" for _, t in _tensors(x)]
    return "; ".join(parts) or type(x).__name__


def _label_range(y: torch.Tensor) -> str:
    return f"this batch's targets span [{int(y.min())}, {int(y.max())}]" if y.numel() else "no targets"


def _check_batch(model, x, y, b: int, start: int, loss_fn, class_targets: bool, device, dtype) -> None:
    """One batch through the model and the loss, as the solvers will see it."""
    _check_finite("inputs", x, b, start)
    _check_finite("targets", y, b, start)
    x, y = _move(x, device, dtype), _move(y, device, dtype)
    try:
        out = model(*x) if isinstance(x, (tuple, list)) else model(x)
    except REJECTED as err:
        raise ParameterError(f"batch {b} inputs", _shape(x), f"inputs the model accepts (its parameters: {dtype} "
                             f"on {device})", hint=f"the model raised {type(err).__name__}: {err}") from None
    integer = not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool
    if class_targets and integer and torch.is_tensor(out) and out.dim() == 2:
        n_out = out.shape[1]
        bad = (y < 0) | (y >= n_out)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0, 0])
            raise ParameterError(f"batch {b} targets[{row}]", int(y[row]),
                                 f"a class index in [0, {n_out - 1}] (the model has {n_out} outputs)",
                                 hint=f"sample {start + row} of the data; {_label_range(y)}, {int(bad.sum())} out "
                                      "of range: relabel the data or give the model enough outputs")
    try:
        losses = loss_fn(out, y)
    except REJECTED as err:
        labels = f"; {_label_range(y)}" if integer else ""
        raise ParameterError(f"batch {b} targets", _shape(y), "targets loss_fn accepts for the model's outputs "
                             f"({_shape(out)}){labels}", hint=f"loss_fn raised {type(err).__name__}: {err}") from None
    if not torch.is_tensor(losses) or losses.shape != (len(y),):
        shape = tuple(losses.shape) if torch.is_tensor(losses) else type(losses).__name__
        raise ParameterError("loss_fn", getattr(loss_fn, "__name__", type(loss_fn).__name__),
                             f"one loss per sample (shape ({len(y)},) on batch {b}), got {shape}",
                             hint="use reduction='none' and sum or average over the other dimensions")
    if not bool(torch.isfinite(losses).all()):
        row, _, value, count = _first_bad(losses)
        raise ParameterError(f"batch {b} loss[{row}]", value, "a finite loss at the trained weights",
                             hint=f"sample {start + row} of the data; {count} losses of batch {b} are NaN or inf")


def checked_batches(model: torch.nn.Module, data, loss_fn, *, class_targets: bool, device: torch.device,
                    dtype: torch.dtype, batch_size: int | None = None) -> Batches:
    """``as_batches(data)`` after one pass that checks every batch (no gradients, eval mode): finite inputs and
    targets, inputs the model accepts, class targets in [0, n_outputs) (``class_targets``: the loss takes class
    indices), one finite loss per sample, and at least 2 samples. Raises ParameterError naming the batch."""
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) == 0:
        raise ParameterError("data", data, "at least 2 samples (a pair (inputs, targets) or a list of batches)")
    batches = as_batches(data, batch_size)
    seen = 0
    with torch.no_grad(), eval_mode(model):
        for b, (x, y) in enumerate(batches):
            _check_batch(model, x, y, b, seen, loss_fn, class_targets, device, dtype)
            seen += len(y)
    if seen < 2:
        raise ParameterError("data", f"{seen} sample(s)", "at least 2 samples (Delta_k is defined for k = 1..N-1)",
                             hint="pass the training data the model was trained on")
    return batches
