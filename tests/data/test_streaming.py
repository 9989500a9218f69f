"""The streaming pipeline's batches (cv_jax/data/streaming.py): the resident pipeline's batches,
split across processes, resumable from their state, host augmentation keyed by (seed, epoch,
example), and bad files named."""

import dataclasses
import shutil

import jax
import numpy as np
import pytest
from conftest import write_image_folder, write_photo_folder
from PIL import Image

from cv_jax.data import pipeline
from cv_jax.data.dataset import DataError
from cv_jax.data.decode import decode_one, draft, resize_bilinear
from cv_jax.data.sources import list_split, load_split
from cv_jax.data.streaming import HostAugment, Stream

BATCH = 16
STEPS_PER_EPOCH = 96 // BATCH  # tiny_folder: 4 classes x 24 train images


def order(epoch: int) -> np.ndarray:
    """The resident pipeline's order of tiny_folder's train split at ``epoch``."""
    return np.asarray(pipeline.epoch_permutation(jax.random.key_data(jax.random.key(3)),
                                                 epoch, 96))


def stream(split, **kwargs) -> Stream:
    return Stream(split, order, STEPS_PER_EPOCH, BATCH, **{"threads": 2, **kwargs})


def take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def assert_same_batches(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() - {"bad"} == b.keys() - {"bad"}
        assert not any(a.get("bad", ())) and not any(b.get("bad", ()))
        for key in b.keys() - {"bad"}:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def splits(tiny_folder, cache_dir):
    """``(resident, files)``: tiny_folder's train split decoded, and as files."""
    return load_split(tiny_folder, "train", cache_dir=cache_dir), list_split(tiny_folder, "train")


def test_the_files_are_the_resident_loaders_in_its_order(splits):
    resident, files = splits
    assert files.class_names == resident.class_names
    np.testing.assert_array_equal(files.labels, resident.labels)
    assert files.image_shape == resident.image_shape == (16, 16, 3)
    np.testing.assert_array_equal(files.head(len(files)), resident.images)


def test_streamed_batches_are_the_resident_batches_over_two_epochs(splits):
    resident, files = splits
    expected = []
    for step in range(2 * STEPS_PER_EPOCH):
        rows = order(step // STEPS_PER_EPOCH)[step % STEPS_PER_EPOCH * BATCH:][:BATCH]
        expected.append({"image": resident.images[rows], "label": resident.labels[rows],
                         "index": rows.astype(np.int32)})
    for split in (files, resident):  # decoded as read, or read from the arrays
        assert_same_batches(take(stream(split).batches(), len(expected)), expected)


def test_each_process_reads_its_rows_of_every_global_batch(splits):
    _, files = splits
    whole = take(stream(files).batches(), STEPS_PER_EPOCH + 2)
    parts = [take(stream(files, process_index=p, process_count=4).batches(), len(whole))
             for p in range(4)]
    for step, batch in enumerate(whole):
        for p in range(4):
            assert parts[p][step]["image"].shape == (BATCH // 4, 16, 16, 3)
        joined = {k: np.concatenate([part[step][k] for part in parts])
                  for k in ("image", "label", "index")}
        assert_same_batches([joined], [batch])


def test_a_stream_resumes_from_its_state_or_its_step(splits):
    _, files = splits
    whole = take(stream(files).batches(), 2 * STEPS_PER_EPOCH)
    for stop in (3, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 1):
        first = stream(files).batches()
        take(first, stop)
        state = first.get_state()
        assert state["step"] == stop
        restored = stream(files).batches()
        restored.set_state(state)
        assert_same_batches(take(restored, 2 * STEPS_PER_EPOCH - stop), whole[stop:])
        assert_same_batches(take(stream(files).batches(stop), 2), whole[stop:stop + 2])


def test_a_worker_process_gives_the_same_batches_and_a_restorable_state(splits):
    _, files = splits
    whole = take(stream(files).batches(), STEPS_PER_EPOCH + 2)
    worker = stream(files, workers=1).batches()
    assert_same_batches(take(worker, 4), whole[:4])
    state = worker.get_state()
    worker.close()
    restored = stream(files, workers=1).batches()
    restored.set_state(state)
    assert_same_batches(take(restored, len(whole) - 4), whole[4:])
    restored.close()


def resized_crop(image: np.ndarray, box, size: int) -> np.ndarray:
    """``box`` (top, left, height, width) of ``image`` resized bilinearly to ``size`` square."""
    top, left, height, width = box
    crop = Image.fromarray(image[top:top + height, left:left + width])
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


def bilinear_crop(image: np.ndarray, box, size: int) -> np.ndarray:
    """``box`` of ``image`` resized to ``size`` square without antialiasing."""
    top, left, height, width = box
    return resize_bilinear(image, [left, top, left + width, top + height], (size, size))


@pytest.mark.parametrize("resize,expected_crop", [("antialias", resized_crop),
                                                  ("bilinear", bilinear_crop)])
def test_host_augmentation_is_keyed_by_seed_epoch_and_example(splits, resize, expected_crop):
    resident, files = splits
    augment = HostAugment(seed=0, crop=8, scale=(0.2, 1.0), flip=True, resize=resize)
    boxes = {(s, e, i): dataclasses.replace(augment, seed=s).box(e, i, 16, 16)
             for s in (0, 1) for e in (0, 1) for i in (0, 1)}
    assert boxes[0, 0, 0] == augment.box(0, 0, 16, 16) and len(set(boxes.values())) > 1
    for top, left, height, width in boxes.values():
        assert 0 <= top <= 16 - height and 0 <= left <= 16 - width
        assert 0.2 * 256 - 16 <= height * width <= 256
    first = take(stream(files, augment=augment).batches(), 2)
    for batch in first:  # each example: its box of the image, resized, mirrored if drawn so
        for image, index in zip(batch["image"], batch["index"], strict=True):
            expected = expected_crop(resident.images[index], augment.box(0, index, 16, 16), 8)
            mirrored = augment.flips(0, index)
            np.testing.assert_array_equal(image, expected[:, ::-1] if mirrored else expected)
    assert {augment.flips(0, i) for i in range(8)} == {False, True}
    # Cropped from the decoded arrays or from the files, by one process or split over two.
    assert_same_batches(take(stream(resident, augment=augment).batches(), 2), first)
    again = take(stream(files, augment=augment, process_index=1, process_count=2)
                 .batches(), 2)
    for a, b in zip(first, again, strict=True):  # process 1 reads the rows 8..15
        np.testing.assert_array_equal(a["image"][BATCH // 2:], b["image"])


def test_a_crop_reads_photos_of_any_size_at_their_own_size(tmp_path):
    root = write_photo_folder(tmp_path / "photos", {"train": 4})
    files = list_split(root, "train", crop=48)
    assert files.image_shape == (48, 48, 3) and len(files) == 12
    with pytest.raises(DataError, match="Fix: set config.dataset.image_size=.H, W."):
        list_split(root, "train").read(1)  # without a crop, sizes must agree
    augment = HostAugment(seed=0, crop=48, flip=True)
    batch = next(Stream(files, lambda e: np.arange(12), 1, 12, augment=augment).batches())
    assert batch["image"].shape == (12, 48, 48, 3)
    sizes = set()
    for image, index in zip(batch["image"], batch["index"], strict=True):
        with Image.open(files.paths[index]) as photo:
            full = np.asarray(photo.convert("RGB"))
        sizes.add(full.shape)
        box = augment.box(0, index, *full.shape[:2])  # under 2 x 48 px: not drafted
        expected = resized_crop(full, box, 48)
        mirrored = augment.flips(0, index)
        np.testing.assert_array_equal(image, expected[:, ::-1] if mirrored else expected)
    assert len(sizes) == 12
    # A validation split carved from it reads whole images at image_size.
    sized = list_split(root, "train", image_size=(32, 32), crop=48)
    assert sized.image_shape == (48, 48, 3) and sized.decoded().images.shape == (12, 32, 32, 3)


def smooth_photo(height: int, width: int) -> np.ndarray:
    """A photo-like image: low-frequency colour waves."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    waves = [np.sin(2 * np.pi * (a * x + b * y)) for a, b in ((1.5, 0.5), (0.3, 2.0), (2, 2))]
    return np.stack([(127.5 + 100 * w).astype(np.uint8) for w in waves], axis=-1)


def test_a_large_jpeg_is_decoded_at_the_smallest_dct_scale_that_covers_the_crop(tmp_path):
    path = str(tmp_path / "large.jpg")
    Image.fromarray(smooth_photo(600, 800)).save(path, quality=95)
    png = str(tmp_path / "large.png")
    Image.fromarray(smooth_photo(600, 800)).save(png)
    for box, size, scale in [((0, 0, 600, 800), 64, 8), ((100, 200, 300, 300), 64, 4),
                             ((0, 0, 600, 800), 224, 2), ((10, 20, 300, 250), 224, 1)]:
        with Image.open(path) as image:
            assert draft(image, box, (size, size)) == scale
        with Image.open(png) as image:
            assert draft(image, box, (size, size)) == 1
    with Image.open(path) as image:
        full = np.asarray(image.convert("RGB"))
    for box in [(0, 0, 600, 800), (100, 200, 300, 300), (37, 411, 517, 389)]:
        drafted = decode_one(path, (64, 64), region=lambda h, w, box=box: box)
        expected = resized_crop(full, box, 64)  # decoded at full size, then cropped
        difference = np.abs(drafted.astype(int) - expected)
        # A box misplaced by 4 pixels (half a pixel at 1/8) differs by 5.6-5.9 on average.
        assert drafted.shape == (64, 64, 3) and difference.mean() < 1 and difference.max() <= 4


def test_bilinear_resize_interpolates_between_pixel_centres_without_antialiasing():
    ramp = np.tile((np.arange(200, dtype=np.uint8) // 2 * 2)[None, :, None], (4, 1, 3))
    ramp[:, 1::2] += 1  # ramp[y, x] = x: bilinear interpolation of it is exact
    # Box columns 10..110 to 50 pixels: output x samples 10 + 2 (x + 0.5) - 0.5 = 10.5 + 2x,
    # halfway between two columns, (10 + 2x + 11 + 2x) / 2 (rounded half up: OpenCV's fixed
    # point), whatever the rows; a 2x shrink with antialiasing would average 4 columns.
    shrunk = resize_bilinear(ramp, [10, 0, 110, 4], (3, 50))
    np.testing.assert_array_equal(shrunk, np.broadcast_to((11 + 2 * np.arange(50))[None, :, None],
                                                          (3, 50, 3)))
    # Fractional edges (a drafted JPEG's): columns 10.25..12.25 to 8 pixels sample
    # 10.25 + 0.25 (x + 0.5) - 0.5 = 9.875 + 0.25x (no ties to round).
    grown = resize_bilinear(ramp[..., :1], [10.25, 0, 12.25, 4], (2, 8))
    assert grown.shape == (2, 8)
    np.testing.assert_array_equal(grown[0], np.round(9.875 + 0.25 * np.arange(8)))
    # Off the image's edge, the edge repeats.
    assert resize_bilinear(ramp, [-20, 0, 0, 4], (1, 4))[0, :, 0].tolist() == [0, 0, 0, 0]


def test_a_bilinear_crop_of_a_grey_image_keeps_one_channel(tmp_path):
    path = str(tmp_path / "grey.png")
    Image.fromarray(smooth_photo(40, 60)[..., 0]).save(path)
    crop = decode_one(path, (16, 16), "L", region=lambda h, w: (5, 10, 20, 30),
                      resize="bilinear")
    with Image.open(path) as image:
        grey = np.asarray(image)
    np.testing.assert_array_equal(crop[..., 0], resize_bilinear(grey, [10, 5, 40, 25], (16, 16)))
    assert crop.shape == (16, 16, 1)


def test_without_opencv_a_bilinear_crop_is_an_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)
    path = str(tmp_path / "photo.png")
    Image.fromarray(smooth_photo(40, 60)).save(path)
    with pytest.raises(ImportError, match=r"pip install 'cv_jax\[opencv\]'"):
        decode_one(path, (16, 16), region=lambda h, w: (0, 0, 20, 20), resize="bilinear")
    crop = decode_one(path, (16, 16), region=lambda h, w: (0, 0, 20, 20))  # Pillow's: no OpenCV
    assert crop.shape == (16, 16, 3)


@pytest.fixture
def with_bad_file(tmp_path):
    root = write_image_folder(tmp_path / "bad", {"train": 4}, size=8)
    bad = root / "train" / "dog" / "001.png"
    bad.write_bytes(b"not a png")
    return root, bad


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_file_stops_the_stream_naming_it(with_bad_file, workers):
    root, bad = with_bad_file
    files = list_split(root, "train")
    batches = Stream(files, lambda e: np.arange(16), 1, 16, workers=workers).batches()
    with pytest.raises(Exception, match=f"cannot decode {bad}") as raised:
        next(batches)
    assert "bad_files=skip" in str(raised.value)
    batches.close()


def test_under_skip_the_next_good_example_takes_a_bad_files_place_and_is_named(
        with_bad_file):
    root, bad = with_bad_file
    assert_the_next_example_replaces(list_split(root, "train", bad_files="skip"), str(bad))


def assert_the_next_example_replaces(split, bad: str) -> None:
    """In the first batch of 16 streamed from ``split`` (bad_files='skip'), the example after
    the file ``bad`` takes its place, and only that row names it."""
    at = list(split.paths).index(bad)
    batch = next(Stream(split, lambda e: np.arange(16), 1, 16).batches())
    expected = np.arange(16)
    expected[at] = at + 1
    np.testing.assert_array_equal(batch["index"], expected)
    np.testing.assert_array_equal(batch["image"][at], split.read(at + 1))
    assert batch["bad"][at].startswith(f"{bad}: UnidentifiedImageError")
    assert [b for i, b in enumerate(batch["bad"]) if i != at] == [""] * 15


def test_an_empty_class_folder_is_refused_when_strict_and_kept_when_skipping(tmp_path):
    root = write_image_folder(tmp_path / "gap", {"train": 2}, size=8)
    shutil.rmtree(root / "train" / "frog")
    (root / "train" / "frog").mkdir()
    with pytest.raises(DataError, match="class folder.s. without images: .*frog"):
        list_split(root, "train")
    files = list_split(root, "train", bad_files="skip")
    assert files.class_names == ("cat", "dog", "frog", "ship")
    assert np.bincount(files.labels).tolist() == [2, 2, 0, 2]


def test_a_compressed_archive_is_not_listed_and_an_unprepared_tfds_split_is_an_error(
        tmp_path, tiny_folder):
    archive = shutil.make_archive(str(tmp_path / "tiny"), "gztar", tiny_folder)
    assert list_split(archive, "train") is None
    with pytest.raises(DataError, match="tfds build no_such_dataset_xyz"):
        list_split("tfds:no_such_dataset_xyz", "train")
