"""Hostile data: a generated corpus of broken and unusual files in an ImageFolder tree, loaded
under both ``dataset.bad_files`` policies."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import tarfile
import types
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_config, write_image_folder
from PIL import Image

from cv_jax.data.dataset import DataError
from cv_jax.data.locate import find_dataset
from cv_jax.data.sources import load_split

RNG = np.random.default_rng(0)
SIZE = (4, 4)  # (H, W) of the corpus images and of the loaded split


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Never touch ~/.cache or a real $CV_JAX_DATA."""
    monkeypatch.setenv("CV_JAX_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("CV_JAX_DATA", raising=False)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A 1-bit grayscale PNG whose header claims ``width`` x ``height`` pixels, with one tiny
    IDAT: a decompression bomb a few bytes long (its pixels are never needed to spot it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _write_bad_name(folder: Path, name: bytes, data: bytes) -> str:
    """Write a file whose name is raw (possibly non-UTF-8) bytes; return it as os.listdir does."""
    with open(os.fsencode(folder) + b"/" + name, "wb") as f:
        f.write(data)
    return os.fsdecode(name)


@dataclasses.dataclass
class Corpus:
    root: Path
    good: dict[str, np.ndarray]  # train/cat file name -> expected RGB pixels after loading
    dog: np.ndarray  # train/dog/dog.png pixels
    bad: dict[str, str]  # relative path, as reported -> exception type of the reason


def _write_corpus(root: Path) -> Corpus:
    """train/cat: good images in every mode, bad files, ignored files and a symlink loop;
    train/dog: one image; train/empty: no images."""
    cat, dog, empty = (root / "train" / name for name in ("cat", "dog", "empty"))
    for folder in (cat, dog, empty):
        folder.mkdir(parents=True)
    good = {}

    rgb = RNG.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(cat / "rgb.png")
    good["rgb.png"] = rgb
    Image.new("L", SIZE[::-1], 128).save(cat / "gray.png")
    good["gray.png"] = np.full((*SIZE, 3), 128, np.uint8)
    palette = Image.new("P", SIZE[::-1], 0)
    palette.putpalette([10, 20, 30, 200, 100, 50])
    palette.putpixel((1, 0), 1)
    palette.save(cat / "palette.png")
    good["palette.png"] = np.full((*SIZE, 3), (10, 20, 30), np.uint8)
    good["palette.png"][0, 1] = (200, 100, 50)
    rgba = np.zeros((*SIZE, 4), np.uint8)
    rgba[...] = (10, 20, 30, 0)
    rgba[0, 0] = (40, 50, 60, 255)
    Image.fromarray(rgba, "RGBA").save(cat / "rgba.png")
    good["rgba.png"] = rgba[..., :3]  # alpha dropped, not composited
    Image.new("CMYK", SIZE[::-1], (0, 255, 255, 0)).save(cat / "cmyk.jpg", quality=95)
    good["cmyk.jpg"] = np.full((*SIZE, 3), (255, 0, 0), np.uint8)
    sixteen = np.tile(np.array([0, 257, 32768, 65535], np.uint16), (SIZE[0], 1))
    Image.fromarray(sixteen).save(cat / "gray16.png")  # opens as mode I;16
    good["gray16.png"] = np.repeat(np.tile(np.array([0, 1, 128, 255], np.uint8),
                                           (SIZE[0], 1))[..., None], 3, axis=-1)
    big = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(big).save(cat / "big.png")
    good["big.png"] = np.asarray(Image.fromarray(big).resize(SIZE[::-1],
                                                             Image.Resampling.BILINEAR))
    buffer = Path(cat / "tmp.png")
    Image.fromarray(rgb[::-1]).save(buffer)
    good[_write_bad_name(cat, b"caf\xe9.png", buffer.read_bytes())] = rgb[::-1]
    buffer.unlink()

    Image.fromarray(rgb).save(cat / "truncated.jpg", quality=95)
    data = (cat / "truncated.jpg").read_bytes()
    (cat / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (cat / "zero.jpg").write_bytes(b"")
    (cat / "text.jpg").write_text("this is not an image")
    _png_header_only(cat / "bomb.png", 20000, 20000)  # > 2 x Image.MAX_IMAGE_PIXELS: PIL error
    _png_header_only(cat / "warnbomb.png", 10000, 10000)  # > 1 x: PIL only warns
    _write_bad_name(cat, b"bad\xff.jpg", b"not an image either")
    os.symlink("self.jpg", cat / "self.jpg")
    os.mkfifo(cat / "fifo.jpg")
    bad = {"truncated.jpg": "OSError", "zero.jpg": "UnidentifiedImageError",
           "text.jpg": "UnidentifiedImageError", "bomb.png": "DecompressionBombError",
           "warnbomb.png": "DecompressionBombWarning", "bad\\xff.jpg": "UnidentifiedImageError",
           "self.jpg": "OSError", "fifo.jpg": "OSError"}

    (cat / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (cat / "._rgb.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (cat / "notes.txt").write_text("ignored: no image extension")
    os.symlink("..", cat / "up")  # loops back to train/
    (empty / "readme.txt").write_text("no images here")

    dog_pixels = RNG.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    Image.fromarray(dog_pixels).save(dog / "dog.png")
    return Corpus(root, good, dog_pixels, {f"train/cat/{k}": v for k, v in bad.items()})


@pytest.fixture
def corpus(tmp_path) -> Corpus:
    return _write_corpus(tmp_path / "ds")


def _check_reasons(reported: dict[str, str], expected: dict[str, str], prefix: str) -> None:
    """``reported`` names exactly the expected files (under ``prefix``), each with its reason."""
    assert sorted(reported) == sorted(prefix + rel for rel in expected)
    for rel, kind in expected.items():
        assert reported[prefix + rel].startswith(kind + ": "), (rel, reported[prefix + rel])
    assert "Too many levels of symbolic links" in reported[prefix + "train/cat/self.jpg"]
    assert "not a regular file" in reported[prefix + "train/cat/fifo.jpg"]


def _listed_files(message: str) -> dict[str, str]:
    """The ``  file: reason`` lines of a bad-files DataError."""
    return dict(line.strip().split(": ", 1) for line in message.splitlines()
                if line.startswith("  "))


def _expected_images(corpus: Corpus) -> np.ndarray:
    """Good images in load order: class, then file name."""
    return np.stack([corpus.good[name] for name in sorted(corpus.good)] + [corpus.dog])


def test_strict_raises_one_error_naming_every_bad_file(corpus):
    with pytest.raises(DataError) as info:
        load_split(corpus.root, "train", image_size=SIZE, cache_dir=str(corpus.root) + "-c")
    message = str(info.value)
    assert message.startswith(f"8 file(s) in {corpus.root} could not be decoded as images:\n")
    _check_reasons(_listed_files(message), corpus.bad, f"{corpus.root}/")
    assert f"class folder(s) without images: {corpus.root}/train/empty\n" in message
    assert "--config.dataset.bad_files=skip" in message
    for ignored in (".DS_Store", "._rgb.png", "notes.txt", "up", "caf"):
        assert f"{corpus.root}/train/cat/{ignored}" not in message
    message.encode("utf-8")  # printable: the non-UTF-8 name is escaped


def test_skip_loads_exactly_the_good_images(corpus, caplog):
    source = find_dataset("cifar10", str(corpus.root))
    assert source == str(corpus.root)
    with caplog.at_level(logging.WARNING, logger="cv_jax.data"):
        ds = load_split(source, "train", image_size=SIZE, cache_dir=str(corpus.root) + "-c",
                        bad_files="skip")
    assert ds.class_names == ("cat", "dog", "empty")  # the empty class keeps its label
    assert ds.labels.tolist() == [0] * len(corpus.good) + [1]
    np.testing.assert_array_equal(ds.images, _expected_images(corpus))
    _check_reasons(dict(ds.skipped), corpus.bad, f"{corpus.root}/")
    log = caplog.text
    assert f"Skipped 8 bad file(s) in split 'train' of {corpus.root} (bad_files='skip')" in log
    assert f"  {corpus.root}/train/cat/bad\\xff.jpg: UnidentifiedImageError" in log
    assert f"Not following {corpus.root}/train/cat/up: a symlink back to a folder" in log
    assert "Class folder(s) empty in split 'train'" in log


def test_cache_key_includes_the_policy(corpus, caplog):
    kwargs = {"image_size": SIZE, "cache_dir": str(corpus.root) + "-c"}
    skipped = load_split(corpus.root, "train", bad_files="skip", **kwargs)
    with pytest.raises(DataError, match="8 file"):
        load_split(corpus.root, "train", **kwargs)  # strict: not served the skip-run cache
    with caplog.at_level(logging.INFO, logger="cv_jax.data"):
        again = load_split(corpus.root, "train", bad_files="skip", **kwargs)
    assert "Loaded 9 cached examples" in caplog.text
    assert again.skipped == skipped.skipped and len(again.skipped) == 8
    assert "Skipped 8 bad file(s)" in caplog.text  # reported on a cache hit too
    np.testing.assert_array_equal(again.images, skipped.images)


def test_mixed_sizes_without_image_size_rejected_under_skip(corpus):
    with pytest.raises(DataError, match="different sizes") as info:
        load_split(corpus.root, "train", cache_dir=str(corpus.root) + "-c", bad_files="skip")
    assert "big.png is 6x8 (HxW)" in str(info.value)
    assert "config.dataset.image_size=(H, W)" in str(info.value)


def test_unknown_policy_rejected(corpus):
    with pytest.raises(DataError, match=r"bad_files must be one of \('strict', 'skip'\), "
                                        r"got 'ignore'"):
        load_split(corpus.root, "train", bad_files="ignore")


def test_skip_in_archive_names_members(corpus, tmp_path):
    archive = tmp_path / "ds.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(corpus.root, arcname="top")  # symlinks and the FIFO are stored as such
    ds = load_split(archive, "train", image_size=SIZE, cache_dir=str(tmp_path / "c"),
                    bad_files="skip")
    np.testing.assert_array_equal(ds.images, _expected_images(corpus))
    in_archive = {rel: kind for rel, kind in corpus.bad.items()
                  if not rel.endswith(("self.jpg", "fifo.jpg"))}  # not regular members: ignored
    assert sorted(dict(ds.skipped)) == sorted(f"{archive}:top/{rel}" for rel in in_archive)


def test_all_files_bad_is_an_error_under_skip(tmp_path):
    folder = tmp_path / "ds/train/cat"
    folder.mkdir(parents=True)
    (folder / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match="1 file.* could not be decoded") as info:
        load_split(tmp_path / "ds", "train", bad_files="skip")
    assert f"{folder}/zero.png: UnidentifiedImageError" in str(info.value)
    assert "bad_files=skip" not in str(info.value)  # already skipping: no such hint


def test_skipped_files_in_results_json(tmp_path, cache_dir):
    """config.dataset.bad_files='skip' -> load_datasets -> results_record -> results.json (a
    real training run would add ~30 s of compilation and nothing for this path)."""
    from cv_jax.training import datasets
    from cv_jax.training.plan import Plan
    from cv_jax.training.results import results_record, write_results

    root = write_image_folder(tmp_path / "data", {"train": 5, "test": 2})
    (root / "train/cat/zero.png").write_bytes(b"")
    (root / "test/dog/text.jpg").write_text("not an image")
    config = tiny_config(root, cache_dir)
    config.dataset.bad_files = "skip"
    data = datasets.load_datasets(config)
    assert (len(data.train), len(data.test)) == (4 * 5, 4 * 2)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    state = types.SimpleNamespace(params={"w": np.zeros(3)}, opt_state=())  # what it reads
    write_results(str(tmp_path), results_record(
        config, Plan(1, 2, 1), 2, state, {}, None, {}, mesh, skipped=data.skipped))
    with open(tmp_path / "results.json") as f:
        written = json.load(f)
    assert written["num_skipped_files"] == 2
    assert sorted(written["skipped_files"]) == [str(root / "test/dog/text.jpg"),
                                                str(root / "train/cat/zero.png")]
    assert written["skipped_files"][str(root / "train/cat/zero.png")] == (
        f"UnidentifiedImageError: cannot identify image file '{root}/train/cat/zero.png'")
