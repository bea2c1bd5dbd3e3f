"""Parameter counts, shapes and seeding of the study's networks."""
import pytest
import torch

from lib.core import models


@pytest.mark.parametrize("name, count", [("mlp1", 203_530), ("mlp2", 269_322), ("cnn", 4_266)])
def test_parameter_counts_and_output_shape(name, count):
    net = models.build(name, seed=0)
    assert models.n_params(net) == count
    out = net(torch.zeros(5, 1, 28, 28))
    assert out.shape == (5, 10)


def test_mlp_counts_follow_widths():
    net = models.mlp((256, 256))
    assert models.n_params(net) == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert models.n_params(models.mlp((32, 16), bias=False)) == 784 * 32 + 32 * 16 + 16 * 10


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
