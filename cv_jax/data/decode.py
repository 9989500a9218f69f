"""Decoding image files into uint8 arrays (RGB, or one grey channel): what the decode worker
processes of :mod:`cv_jax.data.sources` run. It imports only PIL and numpy (and OpenCV, for a
``resize='bilinear'`` crop only), so a spawned worker starts fast.
"""

from __future__ import annotations

import io
import math
import os
import stat
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# Payload handed to a decode worker: file bytes (archive member) or a file path (directory).
Payload = bytes | str
# Decode result: a uint8 [H, W, 3] (RGB) or [H, W, 1] (mode 'L') array, or the error text for an
# undecodable file.
Decoded = np.ndarray | str
# A region of an image: (top, left, height, width) in the pixels of the image at its own size.
Box = tuple[int, int, int, int]
# How a kept region is resized: 'antialias' (Pillow's bilinear filter, widened when it shrinks:
# torchvision's RandomResizedCrop on PIL images) or 'bilinear' (OpenCV's INTER_LINEAR, four
# pixels per output pixel, no antialiasing: tf.image.resize's default, as big_vision's
# inception_crop; several times cheaper; the optional extra cv_jax[opencv]). The config key:
# dataset.stream_resize.
OPENCV_INSTALL = "pip install 'cv_jax[opencv]'"
# The region to keep of an image of (height, width) pixels (the streaming pipeline's host crop).
Region = Callable[[int, int], Box]


def to_array(image: Image.Image, image_size: tuple[int, int] | None,
             mode: str = "RGB", box: Box | None = None, scale: float = 1.0,
             resize: str = "antialias") -> np.ndarray:
    """Convert a PIL image to ``mode`` ('RGB', or 'L': one grey channel, ITU-R 601 luma), keep
    only ``box`` of it if given, resize it bilinearly to ``image_size`` (H, W) if given;
    uint8 [H, W, 3] or [H, W, 1]. ``scale`` > 1: the image was decoded at 1/``scale`` of its
    size (:func:`draft`) and ``box`` is in the pixels of its full size. ``resize`` ('antialias'
    or 'bilinear', above) says how a ``box`` is resized."""
    if image.mode in _SIXTEEN_BIT_MODES:  # .convert() would clip 0..65535 to 0..255
        wide = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode != mode:
        image = image.convert(mode)
    if box is not None:
        top, left, height, width = box
        edges = (left, top, left + width, top + height)
        if image_size is not None and resize == "bilinear":
            array = resize_bilinear(np.asarray(image), [edge / scale for edge in edges],
                                    image_size)
            return array[..., None] if mode == "L" else array
        if scale == 1:
            image = image.crop(edges)
        else:  # drafted to image_size: the box's edges fall between the smaller image's pixels
            image = image.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR,
                                 box=tuple(edge / scale for edge in edges))
    if image_size is not None and image.size != (image_size[1], image_size[0]):
        image = image.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if mode == "L" else array


def opencv() -> Any:
    """The ``cv2`` module (imported on first use: an optional extra), or an ImportError naming
    the extra to install."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(f"resize='bilinear' needs OpenCV, which is not installed: "
                          f"{OPENCV_INSTALL}") from e
    return cv2


def resize_bilinear(array: np.ndarray, edges: list[float], size: tuple[int, int]
                    ) -> np.ndarray:
    """The region ``edges`` = (left, top, right, bottom) of ``array`` (in its pixels, edges
    between pixels, possibly fractional) resampled to ``size`` (H, W) by OpenCV's bilinear
    interpolation without antialiasing (pixel centres aligned, as ``cv2.resize`` and
    ``tf.image.resize`` align them; samples past the image's border repeat its edge).
    ``cv2.warpAffine`` rather than ``cv2.resize`` of a slice: it takes the fractional edges a
    drafted JPEG gives. OpenCV's own thread pool is set to one thread: the pipeline already
    reads in parallel (threads, worker processes), and a pool per reader only adds overhead."""
    cv2 = opencv()
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    left, top, right, bottom = edges
    height, width = size
    step_x, step_y = (right - left) / width, (bottom - top) / height
    # Output pixel (x, y) samples the source at (left + (x + 0.5) * step_x - 0.5, ...).
    matrix = np.array([[step_x, 0.0, left + 0.5 * step_x - 0.5],
                       [0.0, step_y, top + 0.5 * step_y - 0.5]])
    return cv2.warpAffine(np.ascontiguousarray(array), matrix, (width, height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def array_to_rgb(array: np.ndarray, image_size: tuple[int, int] | None,
                 region: Region | None = None, resize: str = "antialias") -> np.ndarray:
    """Return an in-memory image array ([H, W], [H, W, 1|3|4]) as RGB uint8, ``region(height,
    width)`` of it kept if given (as :func:`decode_one` keeps it), resized if asked."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    is_rgb = array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3
    if region is None and is_rgb and (image_size is None or array.shape[:2] == tuple(image_size)):
        return array
    box = None if region is None else region(*array.shape[:2])
    return to_array(Image.fromarray(array), image_size, box=box, resize=resize)


def draft(image: Image.Image, box: Box, size: tuple[int, int]) -> float:
    """Has a JPEG ``image`` (opened, not yet loaded) decoded at the smallest of 1/1, 1/2, 1/4 and
    1/8 of its size (PIL's ``draft``: scaled in the DCT domain, several times faster) at which
    ``box`` still spans ``size`` (H, W) pixels or more; returns that factor (1: full size, and
    for any other format)."""
    if image.format != "JPEG":
        return 1.0
    _, _, height, width = box
    full_width, full_height = image.size
    # draft() takes the largest factor s with full // request >= s, so box / s >= size.
    request = (math.ceil(full_width * size[1] / width), math.ceil(full_height * size[0] / height))
    drafted = image.draft(None, request)
    return 1.0 if drafted is None else full_width / drafted[1][2]


def refuse_bomb(image: Image.Image) -> None:
    """Raises PIL's DecompressionBombWarning (as an exception) for an opened image over
    ``Image.MAX_IMAGE_PIXELS``, which PIL's ``open`` only warns about below twice the limit.
    (Checked here rather than by turning the warning into an error with
    ``warnings.catch_warnings``, which is not thread-safe: the streaming pipeline decodes in
    threads.)"""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise Image.DecompressionBombWarning(
            f"Image size ({image.width * image.height} pixels) exceeds limit of {limit} pixels, "
            "could be decompression bomb DOS attack.")


def decode_one(payload: Payload, image_size: tuple[int, int] | None,
               mode: str = "RGB", region: Region | None = None,
               resize: str = "antialias") -> Decoded:
    """Decode one encoded image (bytes or a file path) in ``mode`` (see :func:`to_array`);
    return the error text on failure. With ``region``, only ``region(height, width)`` of the
    image is kept, resized to ``image_size`` as ``resize`` says ('antialias' or 'bilinear'),
    and a JPEG is decoded no larger than that needs (:func:`draft`).

    Images over PIL's ``Image.MAX_IMAGE_PIXELS`` (a decompression-bomb guard, which PIL only
    warns about below twice the limit) are refused before their pixels are read.
    """
    try:
        if isinstance(payload, str) and not stat.S_ISREG(os.stat(payload).st_mode):
            raise OSError("not a regular file (opening a FIFO or device could block)")
        source = io.BytesIO(payload) if isinstance(payload, bytes) else payload
        with Image.open(source) as image:
            refuse_bomb(image)
            if region is None:
                return to_array(image, image_size, mode)
            box = region(image.height, image.width)
            scale = draft(image, box, image_size) if image_size is not None else 1.0
            return to_array(image, image_size, mode, box, scale, resize)
    except ImportError:  # a missing optional package (resize='bilinear'), not a bad file
        raise
    except Exception as e:  # any decoder failure means "bad file"
        return f"{type(e).__name__}: {e}"


def decode_chunk(payloads: list[Payload],
                  image_size: tuple[int, int] | None) -> np.ndarray | list[Decoded]:
    """Decode a chunk of images (runs in a worker process).

    Returns one stacked array when every image decoded to the same shape (much cheaper to send
    back than many small arrays), else the per-image list of arrays and error texts.
    """
    decoded = [decode_one(p, image_size) for p in payloads]
    shapes = {d.shape if isinstance(d, np.ndarray) else None for d in decoded}
    if len(shapes) == 1 and None not in shapes:
        return np.stack(decoded)
    return decoded
