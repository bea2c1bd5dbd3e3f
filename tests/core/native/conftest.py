"""Shared cases of the native-kernel tests: the skip without a built fused CNN kernel and the conv-pool shapes its
products and gradients are checked on (also by tests/core/hessian/test_fused.py)."""
import pytest
from torch import nn

from lib.core.native import SWITCHES, fused_cnn, refresh, status

needs_kernel = pytest.mark.skipif(not fused_cnn.available(),
                                  reason=f"fused CNN kernel unavailable: {status()['fused_cnn']['reason']}")


SHAPES = {
    "the study cnn's channels, 13 images": (lambda: nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 10)), (1, 8, 8), 10, 13),
    "odd channels, no biases, 3 stages": (lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(5, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 1 * 2, 3, bias=False)),
        (2, 8, 16), 3, 9),
}


@pytest.fixture
def clean_switches(monkeypatch):
    """No switch set (``CC`` as the environment has it); every kernel re-read before and after the test."""
    for var in SWITCHES:
        monkeypatch.delenv(var, raising=False)
    refresh()
    yield monkeypatch
    monkeypatch.undo()
    refresh()
