"""A split: decoded in memory (:class:`ArrayDataset`) or as image files or tar members read on
demand (:class:`FileDataset`, for the streaming pipeline), and the error bad dataset input
raises (:class:`DataError`). Both have the labels, class names and image shape of the split,
``take`` (a subset, for the selections of :mod:`cv_jax.data.pipeline`) and ``read`` (one
image)."""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from cv_jax.data.decode import Box, Decoded, Region, decode_one, to_array

_handles = threading.local()  # this thread's open archives, {path: file}, and its process id


class DataError(ValueError):
    """Bad dataset input; the message names the offending file or path and how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of non-UTF-8 file names (``os.fsdecode``'s surrogate
    escapes) shown as ``\\xNN``, so that it can be logged, printed and written as UTF-8."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


@dataclasses.dataclass(frozen=True)
class Crop:
    """A crop of each example read (the streaming pipeline's host crop): ``box(index, height,
    width)`` is the region of example ``index``'s image, of that size, to keep, resized to
    ``size`` x ``size`` as ``resize`` says ('antialias' or 'bilinear', cv_jax/data/decode.py)."""

    size: int
    box: Callable[[int, int, int], Box]
    resize: str = "antialias"


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A fully decoded split: ``images`` uint8 [N, H, W, C], C = 3 (RGB) or 1 (grey: IDX files,
    cv_jax/data/idx.py), ``labels`` int32 [N]."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) left out under bad_files='skip'

    def __post_init__(self) -> None:
        """Check dtypes and shapes so that malformed data fails here, not in training."""
        if self.images.dtype != np.uint8 or self.images.ndim != 4 \
                or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 [N, H, W, 3] or [N, H, W, 1], got "
                             f"{self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int32 [{self.images.shape[0]}], got "
                             f"{self.labels.dtype} {self.labels.shape}")

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of every image."""
        return tuple(self.images.shape[1:])

    def take(self, indices: np.ndarray) -> ArrayDataset:
        """The examples at ``indices``, in that order."""
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

    def read(self, index: int) -> np.ndarray:
        """Image ``index``, uint8 [H, W, 3]."""
        return self.images[index]

    def read_example(self, index: int, crop: Crop | None = None) -> tuple[np.ndarray, int, str]:
        """``(image, index, '')``: as :meth:`FileDataset.read_example`, with no bad files."""
        image = self.images[index]
        if crop is not None:
            grey = image.shape[-1] == 1
            image = to_array(Image.fromarray(image[..., 0] if grey else image),
                             (crop.size, crop.size), "L" if grey else "RGB",
                             crop.box(index, *image.shape[:2]), resize=crop.resize)
        return image, index, ""

    def head(self, count: int) -> np.ndarray:
        """The first ``count`` images, uint8 [count, H, W, 3]."""
        return self.images[:count]


def read_member(archive: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of the file ``archive`` (an uncompressed tar member's
    data), read through a handle of this thread's own: Grain's reading threads and worker
    processes never share a file position. tarfile has no such read: ``extractfile`` needs
    the TarFile, its member list and its one handle."""
    if getattr(_handles, "pid", None) != os.getpid():  # a new thread, or a forked worker
        _handles.files, _handles.pid = {}, os.getpid()
    handle = _handles.files.get(archive)
    if handle is None:
        handle = _handles.files[archive] = open(archive, "rb")  # closed with its thread
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise OSError(f"{len(data)} of the member's {size} bytes read: the archive is shorter "
                      "than when it was indexed")
    return data


@dataclasses.dataclass(frozen=True)
class TarMembers:
    """A :class:`FileDataset` reader: the members of the uncompressed tar ``archive``, each
    keyed by the (offset, size) of its bytes, read by seeking (:func:`read_member`)."""

    archive: str

    def __call__(self, key: np.ndarray, image_size: tuple[int, int] | None,
                 region: Region | None = None, resize: str = "antialias") -> Decoded:
        """The member at ``key`` decoded (``region`` of it, as :func:`decode_one` keeps and
        resizes it), or the reason it cannot be read or decoded."""
        try:
            data = read_member(self.archive, int(key[0]), int(key[1]))
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        return decode_one(data, image_size, region=region, resize=resize)


Reader = Callable[[Any, tuple[int, int] | None, Region | None, str], Decoded]
"""How a :class:`FileDataset` reads an example: ``reader(key, image_size, region, resize)`` ->
the image, decoded, ``region(height, width)`` of it kept if given and resized as ``resize``
says (:func:`decode_one`), or the reason it cannot be; picklable, for Grain's worker
processes."""


@dataclasses.dataclass(frozen=True)
class FileDataset:
    """A split as images read and decoded when read: ``paths`` [N] (str), the name of each
    example in messages, ``labels`` int32 [N]. Without ``reader`` an example is the image file
    its path names; with one, ``reader(keys[i], image_size, region)`` reads example ``i``: a tar
    member (:class:`TarMembers`, paths 'ARCHIVE:MEMBER') or a TFDS record
    (``cv_jax.data.sources``).

    ``image_size`` (H, W) resizes every image as it is read; without it every image must have
    ``image_shape``. A :class:`Crop` (the streaming pipeline's host crop) reads its region of
    each image at the image's own size instead, whatever the sizes; ``image_shape`` is then
    the crop's, the shape training reads. Reading decodes as the resident loader does
    (:mod:`cv_jax.data.decode`); a file that does not decode follows ``bad_files``
    (:meth:`read_example`).
    """

    paths: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    image_size: tuple[int, int] | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    bad_files: str = "strict"
    reader: Reader | None = None
    keys: np.ndarray | None = None

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray) -> FileDataset:
        """The examples at ``indices``, in that order."""
        keys = None if self.keys is None else self.keys[indices]
        return dataclasses.replace(self, paths=self.paths[indices], labels=self.labels[indices],
                                   keys=keys)

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` decoded, uint8 [H, W, 3]; DataError naming its file if it cannot be
        decoded or has another size."""
        return self._checked(index, self._decode(index))

    def _checked(self, index: int, decoded: np.ndarray | str) -> np.ndarray:
        """``decoded`` (image ``index``), or DataError naming its file if it did not decode."""
        if isinstance(decoded, str):
            raise self._bad(index, decoded)
        return decoded

    def first_shape(self) -> tuple[int, ...]:
        """The shape of the first image, under ``bad_files='skip'`` of the first that decodes
        (the image shape of a split listed without ``image_size``); :meth:`read`'s DataError
        under 'strict'."""
        for index in range(len(self)):
            decoded = self.load(index)
            if not isinstance(decoded, str):
                return decoded.shape
            if self.bad_files != "skip":
                raise self._bad(index, decoded)
        raise DataError(f"no file of the split decodes, the first: {self.paths[0]}. Fix: point "
                        "config.dataset.data_dir at readable images.")

    def _bad(self, index: int, reason: str) -> DataError:
        """The error for example ``index``, whose file does not decode for ``reason``."""
        return DataError(f"cannot decode {self.paths[index]} as an image ({reason}). Fix: "
                         "delete or replace the file, or set --config.dataset.bad_files=skip.")

    def read_example(self, index: int, crop: Crop | None = None) -> tuple[np.ndarray, int, str]:
        """``(image, index read, bad)``: example ``index`` (``crop``'s region of it, if given),
        or under ``bad_files='skip'``, where its file does not decode, the next example in file
        order that does (so a batch keeps its size), with ``bad`` = 'file: reason' of each file
        passed over ('' if none). Under 'strict', :meth:`read`'s DataError."""
        if self.bad_files != "skip":
            return self._checked(index, self._decode(index, crop)), index, ""
        bad = []
        for offset in range(len(self)):
            at = (index + offset) % len(self)
            decoded = self._decode(at, crop)
            if not isinstance(decoded, str):
                return decoded, at, "\n".join(bad)
            bad.append(f"{self.paths[at]}: {decoded}")
        raise DataError(f"no file of the split decodes:\n{bad[0]}\n... Fix: point "
                        "config.dataset.data_dir at readable images.")

    def load(self, index: int, crop: Crop | None = None) -> Decoded:
        """Image ``index`` decoded (resized to ``image_size`` if given; with ``crop``, its
        region of the image at its own size, resized to the crop), or the reason its file or
        record cannot be read or decoded."""
        size, region, resize = self.image_size, None, "antialias"
        if crop is not None:
            size, region = (crop.size, crop.size), functools.partial(crop.box, index)
            resize = crop.resize
        if self.reader is None:
            return decode_one(str(self.paths[index]), size, region=region, resize=resize)
        return self.reader(self.keys[index], size, region, resize)

    def _decode(self, index: int, crop: Crop | None = None) -> np.ndarray | str:
        """Image ``index`` (``crop``'s region of it), or the reason its file does not decode;
        DataError if its size is not the split's (whatever ``bad_files`` says, as in the
        resident loader)."""
        decoded = self.load(index, crop)
        if crop is not None or isinstance(decoded, str):
            return decoded
        shape = (*self.image_size, 3) if self.image_size else self.image_shape
        if decoded.shape != shape:
            path = self.paths[index]
            raise DataError(f"{path} is {decoded.shape[0]}x{decoded.shape[1]} (HxW) but the "
                            f"split's images are {shape[0]}x{shape[1]}; Fix: set "
                            "config.dataset.image_size=(H, W) to resize every image.")
        return decoded

    def head(self, count: int) -> np.ndarray:
        """The first ``count`` images, decoded, uint8 [count, H, W, 3]."""
        return np.stack([self.read(i) for i in range(min(count, len(self)))])

    def decoded(self) -> ArrayDataset:
        """The whole split decoded into memory (for a small one: a validation split)."""
        return ArrayDataset(self.head(len(self)), self.labels, self.class_names, self.skipped)


Split = ArrayDataset | FileDataset
