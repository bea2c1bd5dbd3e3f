"""The four model families of the prediction benchmark (linear, MLP, CNN, tiny ViT), built from a seed for any
input shape and class count.

Each is an ordinary ``nn.Module`` (so the Hessian operator, the Monte Carlo and ``lib.api`` take it as it is) whose
forward is written with plain tensor operations that ``torch.func.vmap`` batches over stacked parameters
(``lib.core.training.many_models`` trains many of them at once):

* ``linear``: softmax regression on the flattened input;
* ``mlp``: one hidden ReLU layer (``width`` units);
* ``cnn``: two 3x3 convolutions (``channels``) with ReLU and 2x2 max-pooling, then a linear head;
* ``vit``: a one-block Vision Transformer: ``patch`` x ``patch`` patches embedded in ``dim`` dimensions with a
  learned position embedding, pre-norm multi-head self-attention (``heads``) and a ReLU MLP (2 ``dim``), both
  residual (no q/k/v bias), mean-pooled tokens, a linear head.

``build_task_model(family, input_shape, n_classes, seed, **widths)`` is the one constructor; ``FAMILIES`` names them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lib.core.checks import ParameterError, check_choice, check_int

__all__ = ["FAMILIES", "build_task_model", "Linear", "MLP", "SmallCNN", "TinyViT"]

FAMILIES = ("linear", "mlp", "cnn", "vit")


def _n_inputs(input_shape) -> int:
    return int(math.prod(input_shape))


class Linear(nn.Module):
    """Softmax regression: logits = W flatten(x) + b."""

    def __init__(self, input_shape, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(_n_inputs(input_shape), n_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    """One hidden ReLU layer."""

    def __init__(self, input_shape, n_classes: int, width: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(_n_inputs(input_shape), width)
        self.fc2 = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class SmallCNN(nn.Module):
    """conv3x3(c1) - ReLU - maxpool2 - conv3x3(c2) - ReLU - maxpool2 - linear, on (C, H, W) images."""

    def __init__(self, input_shape, n_classes: int, channels: tuple[int, int] = (8, 16)):
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.fc = nn.Linear(channels[1] * (h // 4) * (w // 4), n_classes)

    @staticmethod
    def _conv(conv: nn.Conv2d, x):
        # 3x3 convolution (padding 1) as nine shifted copies x weight, one matrix product, and 2x2 max-pooling as a
        # reshape and a max: plain operations that vmap batches over stacked models (what vmap makes of conv2d and
        # max_pool2d, a grouped convolution and a per-model loop, ran ~5x slower on a CPU at these channel counts)
        n, c, h, w = x.shape
        padded = F.pad(x, (1, 1, 1, 1))
        cols = torch.stack([padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], 2)  # (n,c,9,h,w)
        out = torch.einsum("ock,nckp->nop", conv.weight.reshape(conv.out_channels, c, 9),
                           cols.reshape(n, c, 9, h * w)) + conv.bias[:, None]
        return out.reshape(n, -1, h, w)

    @staticmethod
    def _pool(x):
        n, c, h, w = x.shape
        return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).amax(dim=(3, 5))

    def forward(self, x):
        h = self._pool(F.relu(self._conv(self.conv1, x)))
        h = self._pool(F.relu(self._conv(self.conv2, h)))
        return self.fc(h.flatten(1))


class TinyViT(nn.Module):
    """One pre-norm Transformer block over non-overlapping image patches, mean-pooled."""

    def __init__(self, input_shape, n_classes: int, patch: int = 7, dim: int = 32, heads: int = 2):
        super().__init__()
        c, h, w = input_shape
        if h % patch or w % patch:
            raise ParameterError("patch", patch, f"a divisor of the image side ({h} x {w})")
        if dim % heads:
            raise ParameterError("heads", heads, f"a divisor of dim = {dim}")
        self.patch, self.heads = patch, heads
        self.tokens = (h // patch) * (w // patch)
        self.embed = nn.Linear(c * patch * patch, dim)
        self.position = nn.Parameter(0.02 * torch.randn(self.tokens, dim))
        self.norm1 = nn.LayerNorm(dim)
        # no bias on q, k, v: a key bias has gradient exactly 0 (softmax ignores a shift shared by all keys), and
        # Adam turns the rounding noise of such a gradient into steps of size lr
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp1 = nn.Linear(dim, 2 * dim)
        self.mlp2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        n, c, _, _ = x.shape
        p = self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p)                       # (n, c, H/p, W/p, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, self.tokens, c * p * p)
        t = self.embed(patches) + self.position
        q, k, v = self.qkv(self.norm1(t)).chunk(3, dim=-1)
        d = q.shape[-1] // self.heads

        def split(z):
            return z.reshape(n, self.tokens, self.heads, d).transpose(1, 2)      # (n, heads, tokens, d)

        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
        t = t + self.proj((att @ split(v)).transpose(1, 2).reshape(n, self.tokens, -1))
        t = t + self.mlp2(F.relu(self.mlp1(self.norm2(t))))
        return self.head(t.mean(dim=1))


def build_task_model(family: str, input_shape, n_classes: int, seed: int, **widths) -> nn.Module:
    """A freshly initialised model of ``family`` (``FAMILIES``) for inputs of ``input_shape`` (C, H, W) or (d,),
    seeded: the same arguments give bitwise the same weights. ``widths``: ``width`` (mlp), ``channels`` (cnn),
    ``patch``, ``dim``, ``heads`` (vit)."""
    check_choice("model family", family, FAMILIES)
    check_int("n_classes", n_classes, 2)
    input_shape = tuple(int(s) for s in input_shape)
    if family in ("cnn", "vit") and len(input_shape) != 3:
        raise ParameterError("input_shape", input_shape, f"(channels, height, width) for the {family} family")
    torch.manual_seed(int(seed))
    cls = {"linear": Linear, "mlp": MLP, "cnn": SmallCNN, "vit": TinyViT}[family]
    return cls(input_shape, n_classes, **widths).eval()
