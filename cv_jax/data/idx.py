"""MNIST-format datasets: the IDX files of MNIST and Fashion-MNIST, and Keras' ``mnist.npz``.

An IDX file (LeCun & Cortes, the MNIST database) is a header and raw values: bytes 0-1 zero,
byte 2 the value type (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D
float32, 0x0E float64), byte 3 the number of dimensions, then each size as a big-endian
uint32, then the values in C order. MNIST and Fashion-MNIST (Xiao, Rasul & Vollgraf 2017,
arXiv:1708.07747) ship four of them, gzipped or not: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``
(``t10k`` is the test split). Images must be unsigned bytes [N, H, W] and become one channel,
uint8 [N, H, W, 1]; labels unsigned bytes [N], with N equal in the two files.

The parser is written here, with numpy: tfds' MNIST builder reads the files through TensorFlow
(and skips the header unchecked), Keras' loaders need Keras, and torchvision's reader needs
torch, which training does not install.

IDX files carry no class names: a folder whose name contains "fashion" gets Fashion-MNIST's
(:data:`FASHION_MNIST_CLASSES`), any other the label numbers '0', '1', ...; at least ten
classes, more if the labels go higher.

Keras' ``mnist.npz`` holds the same arrays as ``x_train``, ``y_train``, ``x_test`` and
``y_test`` (:func:`load_npz`).
"""

from __future__ import annotations

import gzip
import posixpath
import zlib
from collections.abc import Callable, Iterable

import numpy as np
from PIL import Image

from cv_jax.data.dataset import ArrayDataset, DataError
from cv_jax.data.decode import to_array

# split -> the base names of its images and labels files (each also looked for with '.gz').
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FILE_NAMES = frozenset(name + suffix for pair in SPLIT_FILES.values() for name in pair
                       for suffix in ("", ".gz"))
# The label names of Fashion-MNIST, in label order (zalandoresearch/fashion-mnist README).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
NUM_CLASSES = 10
# IDX value types: code -> name (the format's full list; only unsigned bytes are read here).
_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
          0x0D: "float32", 0x0E: "float64"}
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "Fix: re-download the file (MNIST / Fashion-MNIST IDX files)."


def decompress(data: bytes, shown: str) -> bytes:
    """``data``, gunzipped if it starts with the gzip magic bytes (whatever the file name)."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot decompress {shown}: {type(e).__name__}: {e} (a truncated "
                        f"download?). {_FIX}") from e


def parse_idx(data: bytes, shown: str, ndim: int, what: str) -> np.ndarray:
    """The unsigned-byte array of IDX file ``shown`` (raw or gzipped ``data``), which must
    have ``ndim`` dimensions (``what`` it holds, for messages); DataError otherwise."""
    data = decompress(data, shown)
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DataError(f"{shown} is not an IDX file: it starts with bytes "
                        f"{data[:4].hex(' ') or '(none)'}, expected 00 00 <type> <dimensions>. "
                        f"{_FIX}")
    code, dims = data[2], data[3]
    if code != _UBYTE:
        kind = _TYPES.get(code, "not an IDX type")
        raise DataError(f"{shown}: IDX value type 0x{code:02x} ({kind}) is not supported; "
                        f"{what} must be unsigned bytes (0x08). {_FIX}")
    if dims != ndim:
        raise DataError(f"{shown}: IDX file of {dims} dimension(s), expected {ndim} for "
                        f"{what}. {_FIX}")
    start = 4 + 4 * dims
    if len(data) < start:
        raise DataError(f"{shown} is truncated: {len(data)} bytes, shorter than its "
                        f"{start}-byte header. {_FIX}")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", dims, 4))
    expected = start + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{shown} is {problem}: {len(data)} bytes, expected {expected} (a "
                        f"{start}-byte header and {'x'.join(map(str, shape))} values). {_FIX}")
    return np.frombuffer(data, np.uint8, offset=start).reshape(shape)


def find_folder(files: Iterable[str]) -> str | None:
    """The shallowest folder ('' for the root) holding an IDX file of :data:`FILE_NAMES`
    among ``files`` ('/'-separated relative paths), or None."""
    folders = [posixpath.dirname(rel) for rel in files if posixpath.basename(rel) in FILE_NAMES]
    return min(folders, key=lambda f: (f.count("/") + bool(f), f), default=None)


def class_names(where: str, labels: np.ndarray) -> tuple[str, ...]:
    """Fashion-MNIST's names if ``where`` names a fashion folder, else '0', '1', ...; at least
    :data:`NUM_CLASSES` of them, more if the labels go higher."""
    count = max(NUM_CLASSES, int(labels.max(initial=0)) + 1)
    if count == NUM_CLASSES and "fashion" in posixpath.basename(where.rstrip("/")).lower():
        return FASHION_MNIST_CLASSES
    return tuple(str(k) for k in range(count))


def load_split(folder: str, split: str, files: Iterable[str], read: Callable[[str], bytes],
               display: Callable[[str], str], where: str,
               image_size: tuple[int, int] | None) -> ArrayDataset:
    """Split ``split`` of the IDX files in ``folder`` (relative to a listing of ``files``,
    read with ``read``, shown as ``display(rel)``; ``where`` names the dataset's folder)."""
    shown = display(folder) if folder else where
    if split not in SPLIT_FILES:
        raise DataError(f"IDX files in {shown} have splits 'train' and "
                        f"'test' only, not {split!r}; Fix: set config.dataset.train_split/"
                        "test_split to 'train' and 'test'.")
    present = set(files)
    paths = []
    for base in SPLIT_FILES[split]:
        found = [posixpath.join(folder, base + s) for s in (".gz", "")
                 if posixpath.join(folder, base + s) in present]
        if not found:
            raise DataError(f"IDX split {split!r} needs {base}.gz (or {base}) in {shown}, "
                            f"which is missing. Fix: download it there (MNIST / Fashion-MNIST "
                            "IDX files).")
        paths.append(found[0])
    images_path, labels_path = paths
    images = parse_idx(read(images_path), display(images_path), 3, "images [N, H, W]")
    labels = parse_idx(read(labels_path), display(labels_path), 1, "labels [N]")
    return _dataset(images, labels, display(images_path), display(labels_path), shown,
                    image_size)


def load_npz(path: str, split: str, image_size: tuple[int, int] | None) -> ArrayDataset:
    """Split ``split`` of Keras' ``mnist.npz`` (``x_train`` uint8 [N, 28, 28], ``y_train``
    [N], ``x_test``, ``y_test``); DataError naming the file and the missing or bad key."""
    if split not in SPLIT_FILES:
        raise DataError(f"{path} has splits 'train' and 'test' only, not {split!r}; Fix: set "
                        "config.dataset.train_split/test_split to 'train' and 'test'.")
    keys = (f"x_{split}", f"y_{split}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{path} has no array {missing[0]!r} (it holds {npz.files}); "
                                "expected Keras' mnist.npz keys x_train, y_train, x_test, "
                                "y_test. Fix: re-download mnist.npz.")
            images, labels = (npz[k] for k in keys)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path} as an .npz: {type(e).__name__}: {e}. Fix: "
                        "re-download mnist.npz.") from e
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{path}: {keys[0]} is {images.dtype} {images.shape}, expected uint8 "
                        "[N, H, W]. Fix: re-download mnist.npz.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {keys[1]} is {labels.dtype} {labels.shape}, expected "
                        "integers [N]. Fix: re-download mnist.npz.")
    return _dataset(images, labels, f"{path}:{keys[0]}", f"{path}:{keys[1]}", path, image_size)


def _dataset(images: np.ndarray, labels: np.ndarray, images_shown: str, labels_shown: str,
             where: str, image_size: tuple[int, int] | None) -> ArrayDataset:
    """Images [N, H, W] and labels [N] as a one-channel ArrayDataset, resized if asked."""
    if len(images) != len(labels):
        raise DataError(f"{images_shown} holds {len(images)} images but {labels_shown} "
                        f"{len(labels)} labels; the two files must come from the same split "
                        f"and download. {_FIX}")
    if labels.min(initial=0) < 0:
        raise DataError(f"{labels_shown} holds negative labels; expected 0, 1, ... {_FIX}")
    if image_size is not None and tuple(image_size) != images.shape[1:3]:
        images = np.stack([to_array(Image.fromarray(image), image_size, mode="L")[..., 0]
                           for image in images])
    return ArrayDataset(np.ascontiguousarray(images[..., None]), labels.astype(np.int32),
                        class_names(where, labels))
