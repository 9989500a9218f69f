"""Tests for cv_jax.data: sources, cache and dataset location (tiny generated fixtures)."""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cv_jax.data import cache as cache_lib
from cv_jax.data import locate, sources
from cv_jax.data.cache import cached, fingerprint
from cv_jax.data.dataset import ArrayDataset, DataError
from cv_jax.data.locate import find_dataset
from cv_jax.data.sources import check_same_classes, load_split

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Never touch ~/.cache, a real $CV_JAX_DATA or Keras' download cache."""
    monkeypatch.setenv("CV_JAX_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("CV_JAX_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


def _random_image(h: int = 4, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_tree(root: Path, layout: dict[str, dict[str, list[str]]],
                fmt: str = "png", size: tuple[int, int] = (4, 5)) -> dict[str, np.ndarray]:
    """Write root/<split>/<class>/<name>.<fmt>; return {relative path: pixels}."""
    pixels = {}
    for split, classes in layout.items():
        for class_name, names in classes.items():
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for name in names:
                array = _random_image(*size)
                rel = f"{split}/{class_name}/{name}.{fmt}"
                Image.fromarray(array).save(root / rel)
                pixels[rel] = array
    return pixels


def _make_tar(src: Path, archive: Path, arcname: str) -> Path:
    mode = "w:gz" if archive.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(src, arcname=arcname)
    return archive


LAYOUT = {
    "train": {"dog": ["b", "a"], "cat": ["z", "c", "a"], "bird": ["x"]},
    "test": {"dog": ["q"], "cat": ["r"], "bird": ["s"]},
}
# Expected order: classes sorted, files sorted by name within a class.
TRAIN_ORDER = [("bird", "x"), ("cat", "a"), ("cat", "c"), ("cat", "z"), ("dog", "a"), ("dog", "b")]


def _expected(pixels: dict[str, np.ndarray], split: str, order) -> np.ndarray:
    return np.stack([pixels[f"{split}/{c}/{n}.png"] for c, n in order])


def _assert_train(ds: ArrayDataset, pixels: dict[str, np.ndarray]) -> None:
    assert ds.class_names == ("bird", "cat", "dog")
    assert ds.labels.dtype == np.int32
    assert ds.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert ds.images.dtype == np.uint8 and ds.images.shape == (6, 4, 5, 3)
    np.testing.assert_array_equal(ds.images, _expected(pixels, "train", TRAIN_ORDER))
    assert len(ds) == 6


# --------------------------------------------------------------------------- ImageFolder


def test_imagefolder_dir_png_round_trip(tmp_path):
    pixels = _write_tree(tmp_path / "ds", LAYOUT)
    ds = load_split(str(tmp_path / "ds"), "train", cache_dir=str(tmp_path / "c"))
    _assert_train(ds, pixels)
    test = load_split(str(tmp_path / "ds"), "test", cache_dir=str(tmp_path / "c"))
    assert test.labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(
        test.images, _expected(pixels, "test", [("bird", "s"), ("cat", "r"), ("dog", "q")]))
    check_same_classes(ds, test, "test")


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
def test_imagefolder_archive_with_top_folder(tmp_path, suffix):
    pixels = _write_tree(tmp_path / "ds", LAYOUT)
    archive = _make_tar(tmp_path / "ds", tmp_path / f"cifarish{suffix}", "cifarish")
    _assert_train(load_split(str(archive), "train", cache_dir=str(tmp_path / "c")), pixels)


def test_imagefolder_archive_without_top_folder(tmp_path):
    pixels = _write_tree(tmp_path / "ds", LAYOUT)
    archive = tmp_path / "flat.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tmp_path / "ds" / split, arcname=split)
    _assert_train(load_split(str(archive), "train", cache_dir=str(tmp_path / "c")), pixels)


def test_imagefolder_dir_with_wrapper_folder(tmp_path):
    pixels = _write_tree(tmp_path / "outer" / "inner", LAYOUT)
    _assert_train(load_split(str(tmp_path / "outer"), "train", cache_dir=str(tmp_path / "c")),
                  pixels)


def test_jpeg_shape_and_resize(tmp_path):
    _write_tree(tmp_path / "ds", {"train": {"a": ["1", "2"], "b": ["3"]}}, fmt="jpg",
                size=(8, 6))
    ds = load_split(str(tmp_path / "ds"), "train", cache_dir=str(tmp_path / "c"))
    assert ds.images.shape == (3, 8, 6, 3) and ds.images.dtype == np.uint8
    resized = load_split(str(tmp_path / "ds"), "train", image_size=(4, 10),
                         cache_dir=str(tmp_path / "c"))
    assert resized.images.shape == (3, 4, 10, 3)
    with Image.open(tmp_path / "ds/train/a/1.jpg") as im:
        expected = np.asarray(im.convert("RGB").resize((10, 4), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resized.images[0], expected)


def test_non_rgb_modes_converted_to_rgb(tmp_path):
    folder = tmp_path / "ds" / "train" / "k"
    folder.mkdir(parents=True)
    gray = RNG.integers(0, 256, size=(3, 3), dtype=np.uint8)
    rgba = RNG.integers(0, 256, size=(3, 3, 4), dtype=np.uint8)
    Image.fromarray(gray, "L").save(folder / "a.png")
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(folder / "c.gif")
    ds = load_split(str(tmp_path / "ds"), "train", cache_dir=str(tmp_path / "c"))
    assert ds.images.shape == (3, 3, 3, 3)
    np.testing.assert_array_equal(ds.images[0], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(ds.images[1], rgba[..., :3])  # alpha dropped
    with Image.open(folder / "c.gif") as im:
        np.testing.assert_array_equal(ds.images[2], np.asarray(im.convert("RGB")))


def test_hidden_and_non_image_files_ignored(tmp_path):
    pixels = _write_tree(tmp_path / "ds", LAYOUT)
    (tmp_path / "ds/train/cat/.DS_Store").write_bytes(b"junk")
    (tmp_path / "ds/train/cat/._a.png").write_bytes(b"junk")
    (tmp_path / "ds/train/cat/notes.txt").write_text("hello")
    (tmp_path / "ds/train/.hidden_class").mkdir()
    (tmp_path / "ds/train/.hidden_class/x.png").write_bytes(b"junk")
    _assert_train(load_split(str(tmp_path / "ds"), "train", cache_dir=str(tmp_path / "c")),
                  pixels)


def test_process_pool_path_matches_inline(tmp_path, monkeypatch):
    layout = {"train": {"a": [f"{i:02d}" for i in range(7)], "b": [f"{i:02d}" for i in range(6)]}}
    pixels = _write_tree(tmp_path / "ds", layout)
    archive = _make_tar(tmp_path / "ds", tmp_path / "ds.tar.gz", "ds")
    monkeypatch.setattr(sources, "_CHUNK_SIZE", 4)
    monkeypatch.setattr(sources, "_worker_count", lambda: 2)
    ds = load_split(str(archive), "train", cache_dir=str(tmp_path / "c"))
    order = [(c, f"{i:02d}") for c, n in (("a", 7), ("b", 6)) for i in range(n)]
    np.testing.assert_array_equal(ds.images, _expected(pixels, "train", order))
    assert ds.labels.tolist() == [0] * 7 + [1] * 6


class _BrokenPool:
    """Stands in for ProcessPoolExecutor whose workers died (e.g. an unguarded __main__)."""

    def __init__(self, *args, **kwargs):
        pass

    def submit(self, *args, **kwargs):
        raise concurrent.futures.process.BrokenProcessPool("workers died")

    def shutdown(self, *args, **kwargs):
        pass


def test_broken_pool_falls_back_to_in_process_decoding(tmp_path, monkeypatch, caplog):
    pixels = _write_tree(tmp_path / "ds", LAYOUT)
    monkeypatch.setattr(sources, "_CHUNK_SIZE", 2)
    monkeypatch.setattr(sources, "_worker_count", lambda: 2)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _BrokenPool)
    with caplog.at_level(logging.WARNING, logger="cv_jax.data.sources"):
        ds = load_split(tmp_path / "ds", "train", cache_dir=str(tmp_path / "c"))  # a Path works
    _assert_train(ds, pixels)
    assert caplog.text.count("decoding in-process instead") == 1


# --------------------------------------------------------------------------- CIFAR pickles


def _write_cifar10(folder: Path, per_batch: int = 2) -> dict[str, np.ndarray]:
    """Official layout: data_batch_1..5, test_batch, batches.meta (Python-2 style byte keys)."""
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    nhwc = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]),
                         ("test", ["test_batch"])):
        images, labels = [], []
        for file_name in files:
            batch_images = RNG.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
            batch_labels = RNG.integers(0, 3, size=per_batch).tolist()
            data = batch_images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # channel-first
            with open(folder / file_name, "wb") as f:
                pickle.dump({b"batch_label": file_name.encode(), b"labels": batch_labels,
                             b"data": data, b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
            images.append(batch_images)
            labels += batch_labels
        nhwc[split] = np.concatenate(images)
        nhwc[split + "_labels"] = np.array(labels)
    return nhwc


def test_cifar10_pickles_dir_and_parent(tmp_path):
    expected = _write_cifar10(tmp_path / "cifar-10-batches-py")
    for source in (tmp_path / "cifar-10-batches-py", tmp_path):
        for split in ("train", "test"):
            ds = load_split(str(source), split, cache_dir=str(tmp_path / "c"))
            assert ds.class_names == ("airplane", "automobile", "bird")
            np.testing.assert_array_equal(ds.images, expected[split])
            np.testing.assert_array_equal(ds.labels, expected[split + "_labels"])
    assert len(load_split(str(tmp_path), "train", cache_dir=str(tmp_path / "c"))) == 10


def test_cifar10_python_archive(tmp_path):
    expected = _write_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = _make_tar(tmp_path / "src" / "cifar-10-batches-py",
                        tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    ds = load_split(str(archive), "test", image_size=(16, 16), cache_dir=str(tmp_path / "c"))
    assert ds.images.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(ds.labels, expected["test_labels"])
    full = load_split(str(archive), "train", cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(full.images, expected["train"])


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = RNG.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"apple", b"bee"], b"coarse_label_names": [b"x"]}, f)
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": images.transpose(0, 3, 1, 2).reshape(3, 3072),
                         b"fine_labels": [1, 0, 1], b"coarse_labels": [0, 0, 0]}, f)
    ds = load_split(str(tmp_path), "train", cache_dir=str(tmp_path / "c"))
    assert ds.class_names == ("apple", "bee") and ds.labels.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(ds.images, images)


def test_cifar_errors(tmp_path):
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match="'train' and 'test' only, not 'val'"):
        load_split(str(tmp_path), "val", cache_dir=str(tmp_path / "c"))
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3"):
        load_split(str(tmp_path), "train", cache_dir=str(tmp_path / "c"))
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_split(str(tmp_path), "test", cache_dir=str(tmp_path / "c"))


def test_cifar_unpickler_refuses_arbitrary_objects(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": os.getcwd, b"labels": []}, f)  # a callable, not an array
    with pytest.raises(DataError, match="unexpected object posix.getcwd"):
        load_split(str(tmp_path), "test", cache_dir=str(tmp_path / "c"))


# --------------------------------------------------------------------------- TFDS


def test_tfds_mock_source_without_tensorflow(tmp_path):
    had_tf = "tensorflow" in sys.modules
    tfds = pytest.importorskip("tensorflow_datasets")
    # Earlier tests' garbage (the shared memory of Grain's worker processes) is finalised now:
    # its finalisers import multiprocessing's resource_tracker, which fails inside the mock.
    gc.collect()
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_split("tfds:cifar10", "train", cache_dir=str(tmp_path / "c"))
        small = load_split("tfds:cifar10", "test", image_size=(8, 8))
    assert ds.images.shape == (5, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.labels.shape == (5,)
    assert len(ds.class_names) == 10 and set(ds.labels.tolist()) <= set(range(10))
    assert small.images.shape == (5, 8, 8, 3)
    if not had_tf:
        assert "tensorflow" not in sys.modules


def test_tfds_unknown_dataset_error():
    with pytest.raises(DataError, match="tfds build no_such_dataset_xyz"):
        load_split("tfds:no_such_dataset_xyz", "train")


# --------------------------------------------------------------------------- cache


def _fail_decoding(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("decoder called although the split should come from the cache")
    monkeypatch.setattr(sources, "decode_chunk", boom)


@pytest.mark.parametrize("as_archive", [False, True])
def test_cache_hit_and_invalidation(tmp_path, monkeypatch, as_archive):
    pixels = _write_tree(tmp_path / "ds", LAYOUT)
    source = tmp_path / "ds"
    if as_archive:
        source = _make_tar(source, tmp_path / "ds.tar.gz", "ds")
    first = load_split(str(source), "train", cache_dir=str(tmp_path / "c"))
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1
    with monkeypatch.context() as patch:
        _fail_decoding(patch)
        second = load_split(str(source), "train", cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.class_names == first.class_names
    # A different split or image size is a different cache entry.
    assert load_split(str(source), "train", image_size=(2, 2),
                      cache_dir=str(tmp_path / "c")).images.shape == (6, 2, 2, 3)
    # Touching the source invalidates the cache: the decoder must run again.
    touched = source if as_archive else source / "train/cat/a.png"
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with monkeypatch.context() as patch:
        _fail_decoding(patch)
        with pytest.raises(AssertionError, match="decoder called"):
            load_split(str(source), "train", cache_dir=str(tmp_path / "c"))
    _assert_train(load_split(str(source), "train", cache_dir=str(tmp_path / "c")), pixels)


def test_changed_image_content_rebuilds(tmp_path):
    _write_tree(tmp_path / "ds", LAYOUT)
    before = load_split(str(tmp_path / "ds"), "train", cache_dir=str(tmp_path / "c"))
    new = np.zeros((4, 5, 3), np.uint8)
    Image.fromarray(new).save(tmp_path / "ds/train/bird/x.png")
    after = load_split(str(tmp_path / "ds"), "train", cache_dir=str(tmp_path / "c"))
    assert not np.array_equal(before.images[0], new)
    np.testing.assert_array_equal(after.images[0], new)


def test_corrupt_cache_file_is_rebuilt(tmp_path, caplog):
    calls = []

    def build() -> ArrayDataset:
        calls.append(1)
        return ArrayDataset(np.ones((2, 3, 3, 3), np.uint8), np.array([0, 1], np.int32),
                            ("a", "b"))

    key = {"fingerprint": "abc", "split": "train", "image_size": None}
    cached(key, str(tmp_path), build)
    path = cache_lib.cache_path(key, str(tmp_path))
    with open(path, "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.WARNING, logger="cv_jax.data.cache"):
        ds = cached(key, str(tmp_path), build)
    assert len(calls) == 2 and "corrupt" in caplog.text
    assert ds.class_names == ("a", "b") and ds.images.shape == (2, 3, 3, 3)
    again = cached(key, str(tmp_path), build)
    assert len(calls) == 2 and again.class_names == ("a", "b")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_cache_dir_default_from_env(tmp_path):
    ds = ArrayDataset(np.zeros((1, 1, 1, 3), np.uint8), np.zeros(1, np.int32), ("a",))
    cached({"k": 1}, None, lambda: ds)
    assert len(list((tmp_path / "default-cache").glob("*.npz"))) == 1


def test_fingerprint_dir_and_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a.txt").write_text("1")
    before = fingerprint(str(tmp_path / "d"))
    assert fingerprint(str(tmp_path / "d")) == before and len(before) == 64
    (tmp_path / "d/b.txt").write_text("2")
    assert fingerprint(str(tmp_path / "d")) != before
    (tmp_path / "f.tar").write_bytes(b"abc")
    st = os.stat(tmp_path / "f.tar")
    file_print = fingerprint(str(tmp_path / "f.tar"))
    (tmp_path / "f.tar").write_bytes(b"abd")  # same size
    os.utime(tmp_path / "f.tar", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert fingerprint(str(tmp_path / "f.tar")) != file_print


# --------------------------------------------------------------------------- errors


def _load(path, split="train", **kwargs) -> ArrayDataset:
    return load_split(str(path), split, cache_dir=str(path) + "-cache", **kwargs)


def test_error_missing_path(tmp_path):
    with pytest.raises(DataError, match="does-not-exist") as info:
        _load(tmp_path / "does-not-exist")
    assert "data_dir" in str(info.value)


def test_error_missing_split_lists_existing(tmp_path):
    _write_tree(tmp_path / "ds", LAYOUT)
    with pytest.raises(DataError, match="no split folder 'val'") as info:
        _load(tmp_path / "ds", "val")
    assert "'test', 'train'" in str(info.value)


def test_error_split_without_class_folders(tmp_path):
    (tmp_path / "ds/train").mkdir(parents=True)
    Image.fromarray(_random_image()).save(tmp_path / "ds/train/loose.png")
    with pytest.raises(DataError, match="has no class subfolders") as info:
        _load(tmp_path / "ds")
    assert str(tmp_path / "ds" / "train") in str(info.value)
    assert "1 image(s) directly" in str(info.value)


def test_error_empty_class_folder(tmp_path):
    _write_tree(tmp_path / "ds", LAYOUT)
    (tmp_path / "ds/train/empty_class").mkdir()
    (tmp_path / "ds/train/empty_class/readme.txt").write_text("x")
    with pytest.raises(DataError, match="without images") as info:
        _load(tmp_path / "ds")
    assert str(tmp_path / "ds/train/empty_class") in str(info.value)


def _write_bad_files(folder: Path) -> list[str]:
    good = _random_image()
    Image.fromarray(good).save(folder / "truncated.jpg")
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    return ["truncated.jpg", "empty.png", "text.jpg"]


def test_error_bad_files_dir_all_listed(tmp_path):
    _write_tree(tmp_path / "ds", LAYOUT)
    bad = _write_bad_files(tmp_path / "ds/train/cat")
    with pytest.raises(DataError, match="3 file") as info:
        _load(tmp_path / "ds")
    for name in bad:
        assert str(tmp_path / "ds/train/cat" / name) in str(info.value)


def test_error_bad_files_archive_names_member(tmp_path):
    _write_tree(tmp_path / "ds", LAYOUT)
    bad = _write_bad_files(tmp_path / "ds/train/dog")
    archive = _make_tar(tmp_path / "ds", tmp_path / "ds.tar.gz", "top")
    with pytest.raises(DataError) as info:
        _load(archive)
    for name in bad:
        assert f"{archive}:top/train/dog/{name}" in str(info.value)


def test_error_bad_files_truncated_list(tmp_path):
    folder = tmp_path / "ds/train/k"
    folder.mkdir(parents=True)
    for i in range(25):
        (folder / f"bad{i:02d}.png").write_bytes(b"")
    with pytest.raises(DataError, match="25 file") as info:
        _load(tmp_path / "ds")
    assert "bad19.png" in str(info.value) and "bad20.png" not in str(info.value)
    assert "and 5 more" in str(info.value)


def test_error_mixed_sizes_names_two_files(tmp_path):
    _write_tree(tmp_path / "ds", {"train": {"a": ["1"]}}, size=(4, 4))
    _write_tree(tmp_path / "ds", {"train": {"b": ["2"]}}, size=(6, 4))
    with pytest.raises(DataError, match="image_size") as info:
        _load(tmp_path / "ds")
    assert "a/1.png" in str(info.value) and "b/2.png" in str(info.value)
    assert _load(tmp_path / "ds", image_size=(5, 5)).images.shape == (2, 5, 5, 3)


def test_error_unknown_format(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff/readme.txt").write_text("x")
    with pytest.raises(DataError, match="unknown dataset format") as info:
        _load(tmp_path / "stuff")
    assert str(tmp_path / "stuff") in str(info.value)
    (tmp_path / "file.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="file.zip"):
        _load(tmp_path / "file.zip")


def test_error_corrupt_archive(tmp_path):
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08 definitely not gzip")
    with pytest.raises(DataError, match="cannot read archive .*broken.tar.gz"):
        _load(tmp_path / "broken.tar.gz")


def test_error_bad_image_size_argument(tmp_path):
    _write_tree(tmp_path / "ds", LAYOUT)
    with pytest.raises(DataError, match="image_size"):
        _load(tmp_path / "ds", image_size=(0, 4))


def test_check_same_classes_error():
    def make(names):
        return ArrayDataset(np.zeros((1, 1, 1, 3), np.uint8), np.zeros(1, np.int32), names)

    train = make(("bird", "cat", "dog"))
    check_same_classes(train, make(("bird", "cat", "dog")), "test")
    with pytest.raises(DataError) as info:
        check_same_classes(train, make(("bird", "cow", "dog")), "test")
    message = str(info.value)
    assert "missing from test: ['cat']" in message
    assert "present in test but not in train: ['cow']" in message
    with pytest.raises(DataError, match="different order"):
        check_same_classes(train, make(("cat", "bird", "dog")), "val")


# --------------------------------------------------------------------------- find_dataset


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A fake repo root <tmp>/work/main with <tmp>/work/shared/data next to it; no tfds."""
    root = tmp_path / "work" / "main"
    root.mkdir(parents=True)
    (tmp_path / "work/shared/data").mkdir(parents=True)
    monkeypatch.setattr(locate, "_tfds_status", lambda name: (False, "not prepared (test)"))
    return root


def test_find_dataset_explicit_data_dir(repo, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    assert find_dataset("cifar10", str(target), str(repo)) == str(target)
    (target / "cifar10-jpeg.tar.gz").write_bytes(b"")
    assert find_dataset("cifar10", str(target), str(repo)) == str(target / "cifar10-jpeg.tar.gz")
    assert find_dataset("cifar10", "tfds:cifar10", str(repo)) == "tfds:cifar10"
    with pytest.raises(DataError, match="nope"):
        find_dataset("cifar10", str(tmp_path / "nope"), str(repo))


def test_find_dataset_search_order(repo, tmp_path, monkeypatch):
    shared = tmp_path / "work/shared/data/cifar10-jpeg.tar.gz"
    shared.write_bytes(b"")
    assert find_dataset("cifar10", None, str(repo)) == str(shared)
    (repo / "data").mkdir()
    (repo / "data/cifar-10-batches-py").mkdir()
    assert find_dataset("cifar10", None, str(repo)) == str(repo / "data/cifar-10-batches-py")
    env_folder = tmp_path / "env"
    (env_folder / "cifar10").mkdir(parents=True)
    monkeypatch.setenv("CV_JAX_DATA", str(env_folder))
    assert find_dataset("cifar10", None, str(repo)) == str(env_folder / "cifar10")
    # $CV_JAX_DATA may also be the dataset itself.
    monkeypatch.setenv("CV_JAX_DATA", str(shared))
    assert find_dataset("cifar10", None, str(repo)) == str(shared)
    itself = tmp_path / "itself"
    (itself / "train").mkdir(parents=True)
    monkeypatch.setenv("CV_JAX_DATA", str(itself))
    assert find_dataset("cifar10", None, str(repo)) == str(itself)


def test_find_dataset_tfds_fallback(repo, monkeypatch):
    monkeypatch.setattr(locate, "_tfds_status", lambda name: (True, "found"))
    assert find_dataset("cifar10", None, str(repo)) == "tfds:cifar10"


def test_find_dataset_error_lists_every_attempt(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("CV_JAX_DATA", str(tmp_path / "missing-env"))
    with pytest.raises(DataError) as info:
        find_dataset("cifar10", None, str(repo))
    lines = str(info.value).splitlines()
    tried = [line for line in lines if line.startswith("  ") and line.strip()[0].isdigit()]
    assert len(tried) == 6
    assert "config.dataset.data_dir: not set" in tried[0]
    assert str(tmp_path / "missing-env") in tried[1] and "does not exist" in tried[1]
    assert str(repo / "data") in tried[2]
    assert str(tmp_path / "work/shared/data") in tried[3] and "cifar10-jpeg.tar.gz" in tried[3]
    assert tried[4] == (f"  5. {tmp_path / 'keras-home/datasets'} (Keras' download cache, "
                        "$KERAS_HOME/datasets): does not exist")
    assert "tfds:cifar10" in tried[5]
    assert "--config.dataset.data_dir=PATH" in str(info.value)
    assert "CV_JAX_DATA=PATH" in str(info.value)


def test_find_dataset_tfds_check_is_cheap_and_safe():
    prepared, outcome = locate._tfds_status("no_such_dataset_xyz")
    assert prepared is False and "skipped" in outcome


def test_find_dataset_default_repo_root():
    assert locate._default_repo_root() == str(Path(sources.__file__).resolve().parents[2])
