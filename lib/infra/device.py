"""Choice of the torch device from a user parameter ("cpu", "cuda", "auto")."""
from __future__ import annotations

import torch

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str = "cpu") -> torch.device:
    """Return the torch device for ``device``; "auto" picks CUDA when available.

    Asking for "cuda" on a machine without a usable GPU is an error, not a silent fallback.
    """
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not allowed; use one of {DEVICES}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False; "
                         "use device='cpu' or 'auto'")
    return torch.device(device)
