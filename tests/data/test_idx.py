"""IDX files (MNIST, Fashion-MNIST) and Keras' mnist.npz as sources, and Keras' download cache
as a place datasets are found (tiny generated files)."""

from __future__ import annotations

import gzip
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import idx_bytes, write_idx_folder

from cv_jax.data import idx, locate
from cv_jax.data.dataset import DataError
from cv_jax.data.locate import find_dataset
from cv_jax.data.sources import load_split

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No real cache, $CV_JAX_DATA, Keras cache or TFDS."""
    monkeypatch.setenv("CV_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CV_JAX_DATA", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(locate, "_tfds_status", lambda name: (False, "not prepared (test)"))


def write_idx(folder: Path, gz: bool = True, size=(5, 4), num_classes: int = 4):
    """6 train and 4 test images of ``size``; {split: (images, labels)}."""
    return write_idx_folder(folder, {"train": 6, "test": 4}, gz, size, num_classes)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_idx_folder_parsed_exactly(tmp_path, gz):
    arrays = write_idx(tmp_path / "digits", gz=gz)
    for split in ("train", "test"):
        ds = load_split(tmp_path / "digits", split)
        images, labels = arrays[split]
        assert ds.images.dtype == np.uint8 and ds.images.shape == (*images.shape, 1)
        np.testing.assert_array_equal(ds.images[..., 0], images)
        assert ds.labels.dtype == np.int32 and ds.labels.tolist() == labels.tolist()
        assert ds.class_names == tuple("0123456789")


def test_idx_in_wrapper_folder_and_archive_fashion_names(tmp_path):
    arrays = write_idx(tmp_path / "fashion-mnist")
    wrapped = load_split(tmp_path, "train")  # one wrapper folder above the files
    np.testing.assert_array_equal(wrapped.images[..., 0], arrays["train"][0])
    assert wrapped.class_names == idx.FASHION_MNIST_CLASSES
    archive = tmp_path / "fashion_mnist.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "fashion-mnist", arcname="fashion-mnist")
    from_tar = load_split(archive, "test")
    np.testing.assert_array_equal(from_tar.images[..., 0], arrays["test"][0])
    assert from_tar.labels.tolist() == arrays["test"][1].tolist()
    assert from_tar.class_names == idx.FASHION_MNIST_CLASSES


def test_idx_resize_and_labels_past_nine(tmp_path):
    write_idx_folder(tmp_path / "d", {"train": 12, "test": 4}, size=(5, 4), num_classes=12)
    ds = load_split(tmp_path / "d", "train", image_size=(8, 6))
    assert ds.images.shape == (12, 8, 6, 1)
    assert sorted(ds.labels.tolist()) == list(range(12))
    assert ds.class_names == tuple(str(k) for k in range(12))


def _error(data: bytes, tmp_path: Path, name: str = "train-images-idx3-ubyte") -> str:
    """The DataError message of loading a train split whose ``name`` file holds ``data``."""
    write_idx(tmp_path / "d", gz=False)
    (tmp_path / "d" / name).write_bytes(data)
    with pytest.raises(DataError) as info:
        load_split(tmp_path / "d", "train")
    return str(info.value)


def test_idx_bad_magic(tmp_path):
    message = _error(b"\x12\x34\x08\x03" + bytes(40), tmp_path)
    assert re.search(r"train-images-idx3-ubyte is not an IDX file: it starts with bytes "
                     r"12 34 08 03, expected 00 00 <type> <dimensions>", message)


def test_idx_unsupported_type(tmp_path):
    message = _error(idx_bytes(np.zeros((2, 3, 3), ">f4"), code=0x0D), tmp_path)
    assert "train-images-idx3-ubyte: IDX value type 0x0d (float32) is not supported; " \
           "images [N, H, W] must be unsigned bytes (0x08)" in message


def test_idx_wrong_dimensions(tmp_path):
    message = _error(idx_bytes(np.zeros((2, 3), np.uint8)), tmp_path,
                     "train-labels-idx1-ubyte")
    assert "train-labels-idx1-ubyte: IDX file of 2 dimension(s), expected 1 for labels [N]" \
        in message
    message = _error(idx_bytes(np.zeros((2, 9), np.uint8)), tmp_path)
    assert "train-images-idx3-ubyte: IDX file of 2 dimension(s), expected 3 for images" \
        in message


def test_idx_truncated(tmp_path):
    full = idx_bytes(np.zeros((6, 5, 4), np.uint8))
    message = _error(full[:-1], tmp_path)
    assert "train-images-idx3-ubyte is truncated: 135 bytes, expected 136 (a 16-byte header " \
           "and 6x5x4 values)" in message
    message = _error(full[:10], tmp_path)
    assert "train-images-idx3-ubyte is truncated: 10 bytes, shorter than its 16-byte header" \
        in message
    message = _error(gzip.compress(full)[:-12], tmp_path, "train-images-idx3-ubyte.gz")
    assert "cannot decompress" in message and "train-images-idx3-ubyte.gz" in message


def test_idx_count_mismatch(tmp_path):
    message = _error(idx_bytes(np.zeros(5, np.uint8)), tmp_path, "train-labels-idx1-ubyte")
    assert re.search(r"\S*train-images-idx3-ubyte holds 6 images but \S*train-labels-idx1-ubyte "
                     r"5 labels", message)


def test_idx_missing_file_and_split(tmp_path):
    write_idx(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"IDX split 'test' needs t10k-labels-idx1-ubyte.gz "
                                        r"\(or t10k-labels-idx1-ubyte\) in \S*d, which is missing"):
        load_split(tmp_path / "d", "test")
    with pytest.raises(DataError, match="splits 'train' and 'test' only, not 'valid'"):
        load_split(tmp_path / "d", "valid")


def test_keras_mnist_npz(tmp_path):
    arrays = {"x_train": RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8),
              "y_train": np.array([0, 9, 3, 3, 1], np.uint8),
              "x_test": RNG.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "y_test": np.array([7, 2], np.uint8)}
    np.savez(tmp_path / "mnist.npz", **arrays)
    ds = load_split(tmp_path / "mnist.npz", "test")
    np.testing.assert_array_equal(ds.images[..., 0], arrays["x_test"])
    assert ds.labels.tolist() == [7, 2] and ds.class_names == tuple("0123456789")
    np.savez(tmp_path / "bad.npz", x_train=arrays["x_train"])
    with pytest.raises(DataError, match=r"bad.npz has no array 'y_train' \(it holds "
                                        r"\['x_train'\]\)"):
        load_split(tmp_path / "bad.npz", "train")


def test_find_dataset_in_keras_cache(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    default = tmp_path / "home/.keras/datasets"
    write_idx(default / "fashion-mnist")
    assert find_dataset("fashion_mnist", None, str(repo)) == str(default / "fashion-mnist")
    np.savez(default / "mnist.npz", x_train=np.zeros((1, 2, 2), np.uint8))
    assert find_dataset("mnist", None, str(repo)) == str(default / "mnist.npz")
    (default / "cifar-10-batches-py").mkdir()
    assert find_dataset("cifar10", None, str(repo)) == str(default / "cifar-10-batches-py")
    # $KERAS_HOME moves the cache, as it does for Keras.
    keras_home = tmp_path / "kh"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    with pytest.raises(DataError) as info:
        find_dataset("fashion_mnist", None, str(repo))
    tried = [line for line in str(info.value).splitlines() if re.match(r"  \d\. ", line)]
    assert tried[4] == (f"  5. {keras_home / 'datasets'} (Keras' download cache, "
                        "$KERAS_HOME/datasets): does not exist")
    write_idx(keras_home / "datasets/fashion-mnist", gz=False)
    found = find_dataset("fashion_mnist", None, str(repo))
    assert found == str(keras_home / "datasets/fashion-mnist")
    assert load_split(found, "train").class_names == idx.FASHION_MNIST_CLASSES
