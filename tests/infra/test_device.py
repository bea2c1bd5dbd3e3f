"""The device choice (``lib.infra.device.resolve_device``): "cpu", "auto" (CUDA when torch sees it), "cuda" only
with a GPU (an error, not a silent fallback, without one), anything else refused naming the allowed values."""
import re

import pytest
import torch

from lib.infra.device import DEVICES, resolve_device


def test_cpu_is_the_default_and_auto_follows_torch():
    assert DEVICES == ("cpu", "cuda", "auto")
    assert resolve_device() == resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_without_a_gpu_auto_is_the_cpu_and_cuda_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device='cuda' was asked for but torch.cuda.is_available\(\) is False; "
                                         r"use device='cpu' or 'auto'$"):
        resolve_device("cuda")


def test_with_a_gpu_auto_and_cuda_are_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "cuda:0", "", "mps"])
def test_other_values_are_refused_naming_the_allowed_ones(bad):
    with pytest.raises(ValueError, match="^" + re.escape(f"device={bad!r} is not allowed; use one of "
                                                         "('cpu', 'cuda', 'auto')") + "$"):
        resolve_device(bad)
