"""Parameter counts, shapes and seeding of the study's networks."""
import pytest
import torch
from torch import nn

from lib.core import models
from lib.core.tensors import n_params


@pytest.mark.parametrize("name, count", [("mlp1", 203_530), ("mlp2", 269_322), ("cnn", 4_266)])
def test_parameter_counts_and_output_shape(name, count):
    net = models.build(name, seed=0)
    assert n_params(net) == count
    out = net(torch.zeros(5, 1, 28, 28))
    assert out.shape == (5, 10)


def test_mlp_counts_follow_widths():
    net = models.mlp((256, 256))
    assert n_params(net) == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert n_params(models.mlp((32, 16), bias=False)) == 784 * 32 + 32 * 16 + 16 * 10
    assert models.n_params is n_params                 # still importable from lib.core.models: one copy


def test_seeding_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = models.build("mlp2", 1), models.build("mlp2", 1), models.build("mlp2", 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'resnet'; allowed: \['mlp1', 'mlp2', 'cnn'\]"):
        models.build("resnet", 0)


def test_preferred_chunk_small_for_convolutions_only():
    assert models.preferred_chunk(models.build("cnn", 0)) == models.CONV_CHUNK
    assert models.preferred_chunk(models.build("mlp2", 0)) is None
    for conv in (nn.Conv1d(1, 1, 3), nn.Conv3d(1, 1, 3), nn.ConvTranspose2d(1, 1, 3), nn.LazyConv2d(1, 3)):
        assert models.preferred_chunk(nn.Sequential(conv, nn.ReLU())) == models.CONV_CHUNK
    assert models.preferred_chunk(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))) is None
