"""The networks of the study (docs/specification.md section 1), built deterministically from a seed.

* ``mlp1``: 784-256-10, one hidden ReLU layer (203,530 parameters);
* ``mlp2``: 784-256-256-10, the original paper's network (269,322 parameters);
* ``cnn``: two 3x3 conv layers (4 and 8 channels, padding 1) with ReLU and 2x2 max-pooling, linear head
  (4,266 parameters). Small on purpose: its exact Hessian-vector product costs ~1 s over 10k images on a 2-core
  CPU (double backward through conv and max-pooling), twice that at (8, 16) channels for +1 point test accuracy.

``mlp(widths, bias)`` builds the ReLU MLPs of other widths/depths (bias-free ones for the Hessian-norm bound);
``preferred_chunk`` is the samples-per-chunk that suits a network. Parameter counts: ``lib.core.tensors.n_params``
(also importable from here, as ``lib.core.models.n_params``).
"""
from __future__ import annotations

import torch
from torch import nn

from lib.core.tensors import n_params

__all__ = ["IMAGE_SHAPE", "N_CLASSES", "MODELS", "CONV_CHUNK", "mlp", "cnn", "build", "preferred_chunk", "n_params"]

IMAGE_SHAPE = (1, 28, 28)
N_CLASSES = 10
MODELS = ("mlp1", "mlp2", "cnn")


def mlp(hidden: tuple[int, ...] | list[int], bias: bool = True, n_in: int = 784,
        n_out: int = N_CLASSES) -> nn.Sequential:
    """A ReLU MLP ``n_in - hidden... - n_out`` with a leading Flatten."""
    layers: list[nn.Module] = [nn.Flatten()]
    widths = [n_in, *hidden]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], n_out, bias=bias))
    return nn.Sequential(*layers)


def cnn(channels: tuple[int, int] = (4, 8)) -> nn.Sequential:
    """The study's CNN: two 3x3 conv layers (``channels``, padding 1) with ReLU and 2x2 max-pooling, linear head."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, N_CLASSES),
    )


_BUILDERS = {
    "mlp1": lambda: mlp((256,)),
    "mlp2": lambda: mlp((256, 256)),
    "cnn": lambda: cnn(),
}


def build(name: str, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Model ``name`` with PyTorch's default initialisation drawn from ``seed`` (global RNG untouched)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; allowed: {list(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = _BUILDERS[name]()
    return model.to(dtype)


#: samples per chunk for forward passes and Hessian-vector products of models with convolutions: small chunks
#: keep conv activations in cache (measured 2-3x faster than 4096 on a 2-core CPU)
CONV_CHUNK = 500
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def preferred_chunk(model: nn.Module) -> int | None:
    """Samples per chunk that suit ``model`` (``CONV_CHUNK`` if it has a convolution), or None for the caller's
    own default."""
    return CONV_CHUNK if any(isinstance(m, _CONVOLUTIONS) for m in model.modules()) else None
