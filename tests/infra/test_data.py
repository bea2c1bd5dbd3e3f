"""The data sets (``lib.infra.data``): real MNIST / Fashion-MNIST (checksums, official order and statistics, error
paths) and scikit-learn's digits bundled for notebook 07 (checksum, shape, fixed order, error texts)."""
import gzip
import hashlib
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


# ------------------------------------------------------------------------------------------------ digits
#: published class counts of the 1,797 digits (scikit-learn's dataset description / UCI)
CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _raw_digits():
    """The bundled file read without scikit-learn: 64 pixel columns and the label, one image per line."""
    with gzip.open(data.digits_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def test_bundled_file_has_the_recorded_sha256():
    path = data.verify_digits()
    assert path.name == "digits.csv.gz" and path.parent.name == "data" and "sklearn" in path.parts
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data.DIGITS_SHA256


def test_split_shapes_order_and_normalisation_equal_an_independent_read():
    x, y = data.digits("train")
    xt, yt = data.digits("test")
    assert x.shape == (1500, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (1500,) and y.dtype == torch.int64
    assert xt.shape == (297, 1, 8, 8) and yt.shape == (297,)
    pixels, labels = _raw_digits()
    assert pixels.shape == (1797, 64) and np.bincount(labels).tolist() == CLASS_COUNTS
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0)).numpy()
    scaled = pixels / 16.0
    mean, std = scaled[perm[:1500]].mean(), scaled[perm[:1500]].std(ddof=1)
    np.testing.assert_array_equal(y.numpy(), labels[perm[:1500]])
    np.testing.assert_array_equal(yt.numpy(), labels[perm[1500:]])
    np.testing.assert_allclose(x.reshape(1500, 64).numpy(), (scaled[perm[:1500]] - mean) / std, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xt.reshape(297, 64).numpy(), (scaled[perm[1500:]] - mean) / std, rtol=1e-6,
                               atol=1e-6)
    assert y[:10].tolist() == [6, 5, 5, 7, 9, 9, 8, 4, 6, 8]       # the fixed insertion order, pinned
    assert abs(x.double().mean().item()) < 1e-6 and x.double().std().item() == pytest.approx(1.0, abs=1e-6)


def test_order_is_deterministic_and_n_takes_a_prefix():
    x, y = data.digits("train")
    x2, y2 = data.digits("train")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xs, ys = data.digits("train", 100)
    assert torch.equal(xs, x[:100]) and torch.equal(ys, y[:100])


@pytest.mark.parametrize("call, match", [
    (lambda: data.digits("train", 0), r"n=0 must be an integer in \[1, 1500\]"),
    (lambda: data.digits("train", 1501), r"n=1501 must be an integer in \[1, 1500\]"),
    (lambda: data.digits("test", 10), "prefix of the training split only"),
    (lambda: data.digits("valid"), "unknown split 'valid'"),
])
def test_bad_arguments_name_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_changed_file_is_refused_with_the_fix(tmp_path, monkeypatch):
    copy = tmp_path / "digits.csv.gz"
    raw = bytearray(data.digits_file().read_bytes())
    raw[1000] ^= 0x01
    copy.write_bytes(bytes(raw))
    monkeypatch.setattr(data, "digits_file", lambda: copy)
    with pytest.raises(data.DataError, match=r"digits.csv.gz is corrupt or another version \(sha256 .*expected "
                                             r"09f66e6debde.*make setup"):
        data.verify_digits()
    with pytest.raises(data.DataError, match="corrupt"):
        data.digits("train")                     # every load checks, even with the array cached


def test_a_missing_file_and_a_missing_scikit_learn_say_what_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "digits_file", lambda: tmp_path / "digits.csv.gz")
    with pytest.raises(data.DataError, match=r"digits.csv.gz is missing .*run `make setup`"):
        data.verify_digits()
    monkeypatch.undo()
    real = data.importlib.util.find_spec
    monkeypatch.setattr(data.importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else real(name, *a))
    with pytest.raises(data.DataError, match=r"scikit-learn is not installed.*digits.csv.gz\) are missing; run "
                                             r"`make setup`"):
        data.digits("train")


def test_make_data_verifies_the_digits(capsys):
    assert data.main(["digits"]) == 0
    assert "digits.csv.gz; sha256 verified" in capsys.readouterr().out
