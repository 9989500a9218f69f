"""Streaming from an uncompressed tar (cv_jax/data/sources.py list_split, FileDataset reading
members by offset): the resident loader's batches from the same archive, the member index built
once and cached, bad members under strict and skip, a worker process, a training run, the host
crop of members and records; and the sources streamed from their decoded arrays, saying so."""

import logging
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import CLASSES, write_image_folder
from test_streaming import (
    BATCH,
    STEPS_PER_EPOCH,
    assert_same_batches,
    assert_the_next_example_replaces,
    order,
    stream,
    take,
)

from cv_jax.data.dataset import DataError, TarMembers
from cv_jax.data.sources import list_split, load_split
from cv_jax.data.streaming import HostAugment, Stream


@pytest.fixture(scope="module")
def tiny_tar(tiny_folder, tmp_path_factory):
    """tiny_folder as an uncompressed tar, members named './train/cat/000.png', ..."""
    folder = tmp_path_factory.mktemp("tar")
    return shutil.make_archive(str(folder / "tiny"), "tar", tiny_folder)


@pytest.fixture(scope="module")
def tar_splits(tiny_tar, cache_dir):
    """``(resident, members)``: the tar's train split decoded, and as members read on demand."""
    return (load_split(tiny_tar, "train", cache_dir=cache_dir),
            list_split(tiny_tar, "train", cache_dir=cache_dir))


def resident_batches(resident, steps: int) -> list[dict]:
    """The resident pipeline's first ``steps`` batches of ``resident``."""
    batches = []
    for step in range(steps):
        rows = order(step // STEPS_PER_EPOCH)[step % STEPS_PER_EPOCH * BATCH:][:BATCH]
        batches.append({"image": resident.images[rows], "label": resident.labels[rows],
                        "index": rows.astype(np.int32)})
    return batches


def test_tar_members_are_the_resident_loaders_in_its_order(tar_splits, tiny_tar):
    resident, members = tar_splits
    assert members.reader == TarMembers(tiny_tar) and members.keys.shape == (96, 2)
    assert members.paths[0] == f"{tiny_tar}:train/cat/000.png"
    assert members.class_names == resident.class_names == ("cat", "dog", "frog", "ship")
    np.testing.assert_array_equal(members.labels, resident.labels)
    assert members.image_shape == resident.image_shape == (16, 16, 3)
    np.testing.assert_array_equal(members.head(len(members)), resident.images)


def test_streamed_tar_batches_are_the_resident_batches_over_two_epochs(tar_splits):
    resident, members = tar_splits
    expected = resident_batches(resident, 2 * STEPS_PER_EPOCH)
    assert_same_batches(take(stream(members).batches(), len(expected)), expected)


def test_a_worker_process_reads_the_tar_to_the_same_batches(tar_splits):
    resident, members = tar_splits
    batches = stream(members, workers=1).batches()
    assert_same_batches(take(batches, STEPS_PER_EPOCH + 1),
                        resident_batches(resident, STEPS_PER_EPOCH + 1))
    batches.close()


def test_the_index_is_built_once_and_rebuilt_when_the_archive_changes(tiny_folder, tmp_path,
                                                                     monkeypatch, caplog):
    archive = shutil.make_archive(str(tmp_path / "tiny"), "tar", tiny_folder)
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    cache = str(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="cv_jax"):
        first = list_split(archive, "train", cache_dir=cache)
        assert len(opened) == 1 and "Indexed 132 files of archive" in caplog.text
        caplog.clear()
        again = list_split(archive, "test", cache_dir=cache)  # the other split: same index
        assert len(opened) == 1 and "Loaded 132 cached member offsets of the archive" \
            in caplog.text
        assert len(first) == 96 and len(again) == 36
        with open(archive, "ab") as f:  # a changed archive has another fingerprint
            f.write(b"\0" * 512)
        list_split(archive, "train", cache_dir=cache)
    assert len(opened) == 2


@pytest.fixture
def bad_tar(tmp_path):
    """A tar of an 8-pixel ImageFolder tree whose 'train/dog/001.png' is not an image."""
    root = write_image_folder(tmp_path / "bad", {"train": 4}, size=8)
    (root / "train" / "dog" / "001.png").write_bytes(b"not a png")
    archive = tar_of(root, tmp_path / "bad.tar")
    return archive, f"{archive}:top/train/dog/001.png"


def tar_of(root, archive) -> str:
    """An uncompressed tar of the folder ``root``, as ``top/...``."""
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="top")
    return str(archive)


def test_a_bad_member_stops_the_stream_naming_archive_and_member(bad_tar, tmp_path):
    archive, bad = bad_tar
    members = list_split(archive, "train", cache_dir=str(tmp_path / "c"))
    batches = Stream(members, lambda e: np.arange(16), 1, 16).batches()
    with pytest.raises(DataError, match=f"cannot decode {bad} as an image "
                                        r"\(UnidentifiedImageError.*bad_files=skip"):
        next(batches)
    batches.close()


def test_under_skip_the_next_good_member_takes_a_bad_members_place(bad_tar, tmp_path):
    archive, bad = bad_tar
    assert_the_next_example_replaces(
        list_split(archive, "train", bad_files="skip", cache_dir=str(tmp_path / "c")), bad)


def test_a_bad_first_member_is_an_error_when_listing_under_strict(tmp_path):
    root = write_image_folder(tmp_path / "first", {"train": 2}, size=8)
    (root / "train" / "cat" / "000.png").write_bytes(b"")
    archive = tar_of(root, tmp_path / "first.tar")
    with pytest.raises(DataError, match=f"cannot decode {archive}:top/train/cat/000.png"):
        list_split(archive, "train", cache_dir=str(tmp_path / "c"))
    skipping = list_split(archive, "train", bad_files="skip", cache_dir=str(tmp_path / "c"))
    assert skipping.image_shape == (8, 8, 3) and len(skipping) == 8


def test_compressed_archives_and_arrays_are_not_listed_and_the_log_says_why(
        tiny_folder, tmp_path, caplog):
    gz = shutil.make_archive(str(tmp_path / "tiny"), "gztar", tiny_folder)
    with caplog.at_level(logging.INFO, logger="cv_jax"):
        assert list_split(gz, "train") is None
    assert (f"If streamed, split 'train' of {gz} is streamed from its decoded arrays (the "
            "whole split in host memory, cached): a compressed archive cannot be read at "
            "random; to stream its images from disk, decompress it (gunzip: .tar.gz -> .tar) "
            "or extract it.") in caplog.text



@pytest.fixture(scope="module")
def tiny_tfds(tiny_folder, tmp_path_factory):
    """tiny_folder's images as a prepared TFDS dataset (array_record files), written without
    TensorFlow: tfds serialises examples itself and stores the PNG bytes as they are (only
    encoding an image array would need TensorFlow). Returns 'tfds:NAME@DATA_DIR'."""
    tfds = pytest.importorskip("tensorflow_datasets")
    data_dir = tmp_path_factory.mktemp("tfds")

    class CvJaxTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(16, 16, 3)),
                "label": tfds.features.ClassLabel(names=CLASSES)}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in ("train", "test")}

        def _generate_examples(self, split):
            for label, name in enumerate(CLASSES):
                for path in sorted((tiny_folder / split / name).iterdir()):
                    yield f"{name}/{path.name}", {"image": path.read_bytes(), "label": label}

    with tfds.core.registered.skip_registration():  # read back from its files, by name
        builder = CvJaxTinyImages(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return f"tfds:cv_jax_tiny_images@{data_dir}"


def test_tfds_records_stream_the_resident_batches_without_tensorflow(tiny_tfds, cache_dir,
                                                                     caplog):
    had_tensorflow = "tensorflow" in sys.modules
    resident = load_split(tiny_tfds, "train")
    with caplog.at_level(logging.INFO, logger="cv_jax"):
        records = list_split(tiny_tfds, "train", cache_dir=cache_dir)
        assert list_split(tiny_tfds, "train", cache_dir=cache_dir).keys.tolist() == \
            list(range(96))
    assert "Loaded 96 cached labels of the TFDS split" in caplog.text
    assert f"Listed 96 images of split 'train' in {tiny_tfds}" in caplog.text
    assert records.class_names == resident.class_names == CLASSES
    assert records.paths[5] == f"{tiny_tfds} split 'train' example 5"
    assert records.image_shape == (16, 16, 3)
    np.testing.assert_array_equal(records.labels, resident.labels)
    expected = resident_batches(resident, STEPS_PER_EPOCH + 1)
    assert_same_batches(take(stream(records).batches(), len(expected)), expected)
    worker = stream(records, workers=1).batches()  # the worker opens the data source itself
    assert_same_batches(take(worker, 2), expected[:2])
    worker.close()
    if not had_tensorflow:
        assert "tensorflow" not in sys.modules


OPEN_FROM_THREADS = """
import sys, threading
import numpy as np
from cv_jax.data.sources import _TfdsRecords
reader = _TfdsRecords(sys.argv[1].removeprefix("tfds:"), "train", "image")
images = [None] * 8
def read(i):
    images[i] = reader(np.int64(i), None)
threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
np.save(sys.argv[2], np.stack(images))
"""


def test_threads_opening_a_tfds_source_at_once_in_a_fresh_process_do_not_deadlock(
        tiny_tfds, cache_dir, tmp_path):
    # A Grain worker process's reading threads all open the data source at its first batch;
    # importing tensorflow_datasets from several threads at once once hung a worker for ever
    # (a race: this run of it does not always hit the window; it checks the reads agree).
    out = tmp_path / "images.npy"
    subprocess.run([sys.executable, "-c", OPEN_FROM_THREADS, tiny_tfds, str(out)], check=True,
                   timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    resident = load_split(tiny_tfds, "train", cache_dir=cache_dir)
    np.testing.assert_array_equal(np.load(out), resident.images[:8])


@pytest.mark.parametrize("source", ["tiny_tar", "tiny_tfds"])
def test_a_host_crop_of_tar_members_and_tfds_records_is_the_resident_crop(source, cache_dir,
                                                                          request):
    source = request.getfixturevalue(source)
    resident = load_split(source, "train", cache_dir=cache_dir)
    cropped = list_split(source, "train", cache_dir=cache_dir, crop=8)
    assert cropped.image_shape == (8, 8, 3)
    augment = HostAugment(seed=0, crop=8, scale=(0.2, 1.0), flip=True)
    expected = take(stream(resident, augment=augment).batches(), 2)
    assert_same_batches(take(stream(cropped, augment=augment).batches(), 2), expected)
    worker = stream(cropped, augment=augment, workers=1).batches()
    assert_same_batches(take(worker, 2), expected)
    worker.close()
