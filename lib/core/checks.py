"""The one validator module: one rule per kind of value, used by the profile schema (``lib.infra.config``) and by
the science functions for their own arguments.

Each rule returns the value converted (``int``, ``float``, ...) or raises ``ParameterError`` (a ``ValueError``)
whose message names the parameter, the value as read and what is allowed.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


class ParameterError(ValueError):
    """A value outside what a parameter allows; ``name``, ``value`` and ``allowed`` say which and why."""

    def __init__(self, name: str, value: Any, allowed: str, hint: str = ""):
        self.name, self.value, self.allowed, self.hint = name, value, allowed, hint
        text = f"{name}={value!r} is not allowed: {allowed}"
        if isinstance(value, str) and _looks_numeric(value):
            text += f" (the value was read as the text {value!r}; write it as a number, e.g. 0.001 or 1.0e-3)"
        super().__init__(text + (f"; {hint}" if hint else ""))


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _bounds(lo, hi, lo_strict: bool = False) -> str:
    left = "(" if lo_strict or lo is None else "["
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def check_int(name: str, value, minimum: int | None = 1, maximum: int | None = None) -> int:
    """An integer (not a bool) in [minimum, maximum]."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or (minimum is not None and value < minimum) or (maximum is not None and value > maximum)):
        raise ParameterError(name, value, f"an integer in {_bounds(minimum, maximum)}")
    return int(value)


def check_number(name: str, value, *, gt: float | None = None, ge: float | None = None,
                 le: float | None = None) -> float:
    """A finite real number (not a bool) with ``value > gt``, ``value >= ge``, ``value <= le`` where given."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    v = float(value) if ok else math.nan
    ok = ok and math.isfinite(v) and (gt is None or v > gt) and (ge is None or v >= ge) and (le is None or v <= le)
    if not ok:
        lo = gt if gt is not None else ge
        raise ParameterError(name, value, f"a finite number in {_bounds(lo, le, lo_strict=gt is not None)}")
    return v


def check_positive(name: str, value) -> float:
    """A finite number > 0."""
    return check_number(name, value, gt=0.0)


def check_choice(name: str, value, allowed: Iterable) -> Any:
    """One of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ParameterError(name, value, f"one of {allowed}")
    return value


def check_bool(name: str, value) -> bool:
    """True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterError(name, value, "true or false")
    return bool(value)


def check_data(inputs, targets) -> int:
    """Tensors of equal, non-zero length; returns that length N."""
    if not torch.is_tensor(inputs) or not torch.is_tensor(targets):
        raise ParameterError("data", f"({type(inputs).__name__}, {type(targets).__name__})",
                             "inputs and targets as torch tensors")
    if inputs.dim() == 0 or targets.dim() == 0 or len(inputs) == 0:
        raise ParameterError("data", f"inputs of shape {tuple(inputs.shape)}",
                             "at least one sample (inputs and targets with len >= 1)",
                             hint="empty data: pass the samples the model was trained on")
    if len(inputs) != len(targets):
        raise ParameterError("data", f"{len(inputs)} inputs, {len(targets)} targets",
                             f"one target per input (inputs and targets must have the same length, got "
                             f"{len(inputs)} and {len(targets)})")
    return len(inputs)
