"""Real MNIST / Fashion-MNIST: checksums, official order and statistics, error paths."""
import shutil

import numpy as np
import pytest
import torch

from lib.infra import data


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_raw_files_match_recorded_sha256(name):
    sums = data.recorded_checksums()
    for path in data.raw_paths(name):
        rel = path.relative_to(data.DATA_ROOT).as_posix()
        assert data.sha256_file(path) == sums[rel]


def test_mnist_official_order_and_shapes():
    x, y = data.load("mnist", "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    xt, yt = data.load("mnist", "test")
    assert xt.shape == (10000, 1, 28, 28)
    assert yt[:5].tolist() == [7, 2, 1, 0, 4]


def test_fashion_official_order():
    _, y = data.load("fashion_mnist", "train")
    assert len(y) == 60000 and y[0].item() == 9
    _, yt = data.load("fashion_mnist", "test")
    assert len(yt) == 10000


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_pixel_statistics_match_raw_files(name):
    """The recorded normalisation constants are the exact training-set statistics of the raw IDX bytes."""
    raw = np.fromfile(data.raw_paths(name)[0], dtype=np.uint8, offset=16).astype(np.float64) / 255.0
    assert raw.size == 60000 * 784
    s = data.spec(name)
    assert raw.mean() == pytest.approx(s.mean, rel=1e-12)
    assert raw.std() == pytest.approx(s.std, rel=1e-7)
    x, _ = data.load(name, "train")
    assert x.double().mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.double().std().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name, mean, std", [("mnist", 0.1307, 0.3081), ("fashion_mnist", 0.2860, 0.3530)])
def test_statistics_equal_the_published_values(name, mean, std):
    """The widely quoted normalisation constants (torchvision examples, Zalando's README)."""
    assert round(data.spec(name).mean, 4) == mean and round(data.spec(name).std, 4) == std


def test_training_subset_is_seeded_prefix_of_a_permutation():
    x, y = data.load("mnist", "train")
    xs, ys = data.training_subset("mnist", 100, seed=3)
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ys, y[perm[:100]]) and torch.equal(xs, x[perm[:100]])
    xs2, ys2 = data.training_subset("mnist", 50, seed=3)
    assert torch.equal(ys2, ys[:50])          # a prefix: growing k only appends samples
    _, ys3 = data.training_subset("mnist", 100, seed=4)
    assert not torch.equal(ys3, ys)


@pytest.mark.parametrize("call, match", [
    (lambda: data.load("cifar10", "train"), "unknown dataset 'cifar10'.*allowed"),
    (lambda: data.load("mnist", "valid"), "unknown split 'valid'.*allowed"),
    (lambda: data.training_subset("mnist", 0, 0), r"n=0 must be an integer in \[1, 60000\]"),
    (lambda: data.training_subset("mnist", 60001, 0), r"n=60001 must be an integer in \[1, 60000\]"),
    (lambda: data.training_subset("nope", 10, 0), "unknown dataset"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.fixture
def copied_root(tmp_path):
    for name in data.DATASETS:
        src = data.DATA_ROOT / data.spec(name).folder
        shutil.copytree(src, tmp_path / data.spec(name).folder)
    return tmp_path


def test_verify_accepts_intact_copy(copied_root):
    for name in data.DATASETS:
        data.verify(name, copied_root)


def test_missing_file_is_named_with_fix(copied_root):
    path = copied_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.unlink()
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte is missing; run `make data`"):
        data.verify("mnist", copied_root)


def test_truncated_file_is_named_with_fix(copied_root):
    path = copied_root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte is truncated.*make data"):
        data.verify("fashion_mnist", copied_root)


def test_corrupt_file_is_named_with_fix(copied_root):
    path = copied_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[100] = (raw[100] + 1) % 10
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte is corrupt.*make data"):
        data.verify("mnist", copied_root)


def test_idx_writer_round_trips_through_torchvision(tmp_path):
    """The IDX writer used to rebuild MNIST produces files torchvision reads back exactly."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    data._write_idx(tmp_path / "img", images)
    data._write_idx(tmp_path / "lab", labels)
    assert np.array_equal(read_image_file(str(tmp_path / "img")).numpy(), images)
    assert np.array_equal(read_label_file(str(tmp_path / "lab")).numpy(), labels)
