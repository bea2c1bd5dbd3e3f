"""The benchmark's model families (``lib.core.training.task_models``): the small CNN equals torch's layers, builds are
seeded and check their arguments."""
import pytest
import torch
import torch.nn.functional as F

from lib.core.checks import ParameterError
from lib.core.training.many_models import train_many
from lib.core.training.task_models import SmallCNN, build_task_model


def test_small_cnn_equals_torch_layers():
    torch.manual_seed(3)
    net = SmallCNN((2, 12, 12), 5, (3, 4))
    x = torch.randn(7, 2, 12, 12)
    ref = net.fc(F.max_pool2d(F.relu(net.conv2(F.max_pool2d(F.relu(net.conv1(x)), 2))), 2).flatten(1))
    assert torch.allclose(net(x), ref, atol=1e-5)


def test_build_is_seeded_and_checks_its_arguments():
    a, b = build_task_model("vit", (1, 8, 8), 3, 4, patch=4), build_task_model("vit", (1, 8, 8), 3, 4, patch=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ParameterError, match="patch"):
        build_task_model("vit", (1, 8, 8), 3, 0, patch=3)
    with pytest.raises(ParameterError, match="model family"):
        build_task_model("resnet", (1, 8, 8), 3, 0)
    with pytest.raises(ParameterError, match="subsets"):
        train_many([a], torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), [], [], steps=1)
