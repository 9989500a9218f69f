"""Load a whole dataset split into memory as uint8 arrays.

Supported sources (see :func:`load_split`):

* an ImageFolder tree ``<root>/<split>/<class>/<image>``, as a directory or a ``.tar.gz`` /
  ``.tgz`` / ``.tar`` archive; the tree may sit below one or more wrapper folders (e.g.
  ``cifar10/train/cat/0001.jpg``): the shallowest folder named ``<split>`` is used;
* the official CIFAR-10 / CIFAR-100 python batches (``cifar-10-batches-py``,
  ``cifar-100-python``), as the batches folder, a folder containing it, or the downloaded
  ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``; CIFAR-100 uses the 100 fine labels;
* the IDX files of MNIST and Fashion-MNIST (``train-images-idx3-ubyte[.gz]``, ...), in a
  folder, below one, or in an archive, and Keras' ``mnist.npz``: one grey channel,
  uint8 [N, H, W, 1] (:mod:`cv_jax.data.idx`);
* ``tfds:<name>`` or ``tfds:<name>@<data_dir>``: a prepared TFDS dataset, read through
  ``tfds.data_source`` (never imports TensorFlow, never downloads).

Conventions:

* Images are RGB (IDX files and mnist.npz aside, which stay one grey channel): grayscale,
  RGBA/LA (alpha dropped, not composited, as torchvision's and Keras' loaders do), CMYK,
  palette and other modes are converted with PIL ``.convert('RGB')``; 16-bit grayscale (PIL
  modes ``I;16``/``I``) is first scaled from 0..65535 to 0..255 (value / 257, rounded; PIL
  alone would clip); animated images use frame 0. With ``image_size`` every image is resized
  to it (bilinear); without it, images of different sizes are an error naming two of them,
  whatever the bad-file policy.
* Files and folders whose name starts with ``.`` (``.DS_Store``, macOS ``._*`` files) and
  ``__MACOSX`` folders are ignored, as are files without an image extension
  (:data:`IMAGE_EXTENSIONS`, case-insensitive). Images must sit directly in their class folder;
  deeper sub-folders are not searched. Folder symlinks are followed, except one leading back to
  a folder above it (a loop), which is logged and left out.
* Class names are the sorted class-folder names (torchvision ImageFolder / Keras order), the
  label is the index into them; examples are ordered by (class, file name).
* Bad files (undecodable, truncated, unreadable, not a regular file, or more pixels than PIL's
  ``Image.MAX_IMAGE_PIXELS`` decompression-bomb limit) follow ``bad_files``: ``'strict'`` stops
  with one DataError listing them and every class folder without images (torchvision
  ImageFolder's default); ``'skip'`` leaves them out, logs them and records them in
  ``ArrayDataset.skipped``, and keeps a class folder without images as a class with 0 examples
  (Keras' behaviour, so labels still line up with other splits), with a warning. File names
  that are not valid UTF-8 are shown with ``\\xNN`` escapes. CIFAR, IDX and TFDS sources have
  no per-file policy.

Decoding runs in a process pool while a tar archive is still being read. PIL's per-image work
for small images (header parsing, mode conversion) is mostly Python and holds the GIL, so a
thread pool was slower than one thread on CIFAR-10; processes are spawned rather than forked
because forking after JAX has started its threads can deadlock. As with any spawn-based
multiprocessing, a script that calls load_split must keep its top-level code under
``if __name__ == "__main__":``; otherwise the pool fails and decoding falls back, with a
warning, to the calling process. Splits with fewer than ``_CHUNK_SIZE`` images are always
decoded in-process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import logging
import multiprocessing
import os
import pickle
import posixpath
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

# From the submodule: importing cv_jax.config imports cv_jax.models, which imports this package.
from cv_jax.config.schema import BAD_FILES_POLICIES
from cv_jax.data import idx
from cv_jax.data.cache import cached, fingerprint
from cv_jax.data.dataset import ArrayDataset, DataError, FileDataset, TarMembers, printable
from cv_jax.data.decode import Decoded, Payload, Region, array_to_rgb, decode_chunk, decode_one
from cv_jax.data.walk import walk

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
NPZ_SUFFIX = ".npz"  # Keras' mnist.npz (cv_jax/data/idx.py)
TFDS_PREFIX = "tfds:"
_IGNORED_DIRS = frozenset({"__MACOSX"})
_CHUNK_SIZE = 1024  # images per decode task; also the threshold for starting the pool
_MAX_WORKERS = 8
_MAX_LISTED = 20  # bad files named in one error message
# PIL modes of 16-bit grayscale (a 16-bit PNG opens as I;16, in older Pillow as I).
_SIZE_HINT = "set config.dataset.image_size=(H, W) to resize every image"
_LOCATION_HINT = (
    "Fix: point --config.dataset.data_dir (or CV_JAX_DATA) at an ImageFolder tree "
    "<root>/<split>/<class>/<image>.jpg (directory or .tar.gz/.tgz/.tar), a CIFAR python "
    "batches folder (cifar-10-batches-py) or cifar-10-python.tar.gz, a folder of MNIST / "
    "Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...) or Keras' mnist.npz, or use "
    "'tfds:<name>'."
)



# --------------------------------------------------------------------------- image decoding


def decode_image(path: str, image_size: Sequence[int] | None = None,
                 channels: int = 3) -> np.ndarray:
    """One image file as uint8 [H, W, channels], RGB (3) or grey (1), converted and resized as
    :func:`load_split` does; DataError naming the file if it cannot be decoded."""
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: images have 3 (RGB) or 1 (grey) channels")
    decoded = decode_one(os.fspath(path), _normalize_size(image_size),
                         "RGB" if channels == 3 else "L")
    if isinstance(decoded, str):
        raise DataError(f"cannot decode {path} as an image ({decoded}); give a readable image "
                        f"file ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return decoded


def _worker_count() -> int:
    """Number of decode processes: the CPUs available to this process, at most _MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, _MAX_WORKERS)


class _Decoder:
    """Decode images in chunks of ``_CHUNK_SIZE``, in a process pool once a chunk fills up.

    Use as a context manager; ``add`` payloads in any order, then read ``results()``. If the
    pool breaks (a worker died, or a script without an ``if __name__ == "__main__":`` guard
    made the spawned workers fail), a warning is logged and the chunks are decoded in-process.
    """

    def __init__(self, image_size: tuple[int, int] | None) -> None:
        self._image_size = image_size
        self._keys: list[str] = []
        self._pending: list[Payload] = []
        self._chunks: list[tuple[list[Payload], concurrent.futures.Future | None]] = []
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._pool_broken = False

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, key: str, payload: Payload) -> None:
        """Queue one image for decoding under ``key``."""
        self._keys.append(key)
        self._pending.append(payload)
        if len(self._pending) >= _CHUNK_SIZE:
            self._flush()

    def _flush(self) -> None:
        """Hand the pending chunk to the pool (started on the first full chunk) if possible."""
        chunk, self._pending = self._pending, []
        if self._pool is None and not self._pool_broken and _worker_count() > 1 \
                and len(chunk) >= _CHUNK_SIZE:
            # spawn, not fork: forking a process in which JAX already runs threads can deadlock.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                _worker_count(), mp_context=multiprocessing.get_context("spawn"))
        future = None
        if self._pool is not None and not self._pool_broken:
            try:
                future = self._pool.submit(decode_chunk, chunk, self._image_size)
            except concurrent.futures.process.BrokenProcessPool as e:
                self._mark_broken(e)
        self._chunks.append((chunk, future))

    def _mark_broken(self, error: BaseException) -> None:
        """Log once that the pool failed; later chunks are decoded in-process."""
        if not self._pool_broken:
            logger.warning("Image decoding pool failed (%s); decoding in-process instead. If "
                           "you run a script, put its code under `if __name__ == '__main__':`.",
                           error)
        self._pool_broken = True

    def _chunk_result(self, chunk: list[Payload],
                      future: concurrent.futures.Future | None) -> Sequence[Decoded]:
        """Result of one chunk, decoding it here if it has no (working) future."""
        if future is not None:
            try:
                return future.result()
            except concurrent.futures.process.BrokenProcessPool as e:
                self._mark_broken(e)
        return decode_chunk(chunk, self._image_size)

    def results(self) -> dict[str, Decoded]:
        """Wait for all chunks; return ``{key: array or error text}``."""
        if self._pending:
            self._flush()
        decoded: list[Decoded] = []
        for chunk, future in self._chunks:
            decoded.extend(self._chunk_result(chunk, future))
        return dict(zip(self._keys, decoded, strict=True))


def _stack_images(arrays: Sequence[np.ndarray], names: Sequence[str], where: str) -> np.ndarray:
    """Stack same-sized images; DataError naming two files if the sizes differ."""
    if not arrays:
        raise DataError(f"{where} contains no images. {_LOCATION_HINT}")
    first = arrays[0].shape
    for name, array in zip(names, arrays, strict=True):
        if array.shape != first:
            raise DataError(
                f"images in {where} have different sizes: {names[0]} is "
                f"{first[0]}x{first[1]} (HxW) but {name} is {array.shape[0]}x{array.shape[1]}; "
                f"{_SIZE_HINT}.")
    return np.stack(arrays)


def _listed(bad: Sequence[tuple[str, str]]) -> str:
    """``  file: reason`` lines for the first ``_MAX_LISTED`` files, then the count left out."""
    lines = [f"  {name}: {reason}" for name, reason in bad[:_MAX_LISTED]]
    if len(bad) > _MAX_LISTED:
        lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
    return "\n".join(lines)


def _bad_files_error(bad: Sequence[tuple[str, str]], empty: Sequence[str], where: str,
                     bad_files: str) -> DataError:
    """One DataError naming the undecodable files (see :func:`_listed`) and every class
    folder without images; under 'strict' it points at 'skip'."""
    parts = []
    if bad:
        parts.append(f"{len(bad)} file(s) in {where} could not be decoded as images:\n"
                     + _listed(bad))
    if empty:
        parts.append(f"class folder(s) without images: {', '.join(empty)}")
    skip = "; or set --config.dataset.bad_files=skip (load_split(bad_files='skip')) to leave " \
        "bad files out and keep empty classes" if bad_files == "strict" else ""
    return DataError(
        "\n".join(parts) + "\nFix: delete or replace the bad files, and add images to or remove "
        f"the empty class folders (images need an extension in {sorted(IMAGE_EXTENSIONS)}; "
        f"names starting with '.' are ignored){skip}.")


# --------------------------------------------------------------------------- tree listing


@dataclasses.dataclass
class _Listing:
    """Files and folders of a directory or archive, as '/'-separated paths relative to it."""

    where: str  # the directory or archive path, for messages
    display: Callable[[str], str]  # relative path -> name shown in messages
    files: list[str] = dataclasses.field(default_factory=list)
    dirs: set[str] = dataclasses.field(default_factory=set)

    def add_file(self, rel: str) -> None:
        """Record a file and all its parent folders."""
        self.files.append(rel)
        self.add_dir(_parent(rel))

    def add_dir(self, rel: str) -> None:
        """Record a folder and all its parents (the root itself is '')."""
        while rel and rel not in self.dirs:
            self.dirs.add(rel)
            rel = _parent(rel)


def _is_ignored(rel: str) -> bool:
    """Hidden ('.'-prefixed) names and __MACOSX folders anywhere in the path are ignored."""
    return any(part.startswith(".") or part in _IGNORED_DIRS for part in rel.split("/"))


def _parent(rel: str) -> str:
    """Parent of a normalized relative path ('' for top-level entries); a fast dirname."""
    return rel.rpartition("/")[0]


def _is_image(rel: str) -> bool:
    """Whether ``rel`` has an image extension."""
    dot = rel.rfind(".")
    return dot > rel.rfind("/") and rel[dot:].lower() in IMAGE_EXTENSIONS


def _depth(rel: str) -> int:
    """Number of path components ('' has depth 0)."""
    return rel.count("/") + 1 if rel else 0


def _is_split_dir(rel: str, split: str) -> bool:
    """Whether folder ``rel`` is named ``split`` (``split`` may itself contain '/')."""
    return rel == split or rel.endswith("/" + split)


def _class_image_split_dir(rel: str) -> str | None:
    """For ``.../<split>/<class>/<image>`` return ``.../<split>``, else None."""
    parts = rel.rsplit("/", 2)
    return parts[0] if len(parts) == 3 and _is_image(rel) else None


def _warn_loop(path: str) -> None:
    """Log a folder symlink that is not followed because it loops."""
    logger.warning("Not following %s: a symlink back to a folder above it (a loop).",
                   printable(path))


def _list_dir(root: str) -> _Listing:
    """List a directory tree (following symlinks, but not round loops), skipping ignored names."""
    listing = _Listing(where=root, display=lambda rel: os.path.join(root, *rel.split("/")))
    for rel, is_dir, _ in walk(root, skip=_is_ignored, on_loop=_warn_loop):
        if is_dir:
            listing.add_dir(rel)
        else:
            listing.add_file(rel)
    return listing


def list_images(root: str) -> list[str]:
    """Paths of every image file below folder ``root``, recursively, sorted by relative path
    (names starting with '.' and __MACOSX folders skipped, as in a dataset tree)."""
    listing = _list_dir(root)
    return [listing.display(rel) for rel in sorted(listing.files) if _is_image(rel)]


# --------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class _FolderPlan:
    """An ImageFolder split: class names and (label, relative path) in output order."""

    split_dir: str
    class_names: tuple[str, ...]
    entries: tuple[tuple[int, str], ...]
    empty_classes: tuple[str, ...]  # class folders without image files


@dataclasses.dataclass(frozen=True)
class _CifarVariant:
    """File and field names of one official CIFAR python release."""

    meta_file: str
    names_field: str
    labels_field: str
    split_files: dict[str, tuple[str, ...]]


_CIFAR10 = _CifarVariant("batches.meta", "label_names", "labels", {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)})
_CIFAR100 = _CifarVariant("meta", "fine_label_names", "fine_labels", {
    "train": ("train",), "test": ("test",)})
_CIFAR_FILES = frozenset(
    {v.meta_file for v in (_CIFAR10, _CIFAR100)}
    | {f for v in (_CIFAR10, _CIFAR100) for files in v.split_files.values() for f in files})
# Files an archive's members are kept in memory for: CIFAR batches and IDX files.
_ARRAY_FILES = _CIFAR_FILES | idx.FILE_NAMES


@dataclasses.dataclass(frozen=True)
class _CifarPlan:
    """CIFAR python batches found in ``folder`` ('' for the root)."""

    folder: str
    variant: _CifarVariant

    def path(self, name: str) -> str:
        """Relative path of one batch file."""
        return posixpath.join(self.folder, name)


@dataclasses.dataclass(frozen=True)
class _IdxPlan:
    """IDX files (MNIST, Fashion-MNIST) found in ``folder`` ('' for the root)."""

    folder: str


def _find_cifar(listing: _Listing) -> _CifarPlan | None:
    """Return the shallowest folder holding CIFAR python batches, if any."""
    files = set(listing.files)
    found = []
    for rel in listing.files:
        folder, name = posixpath.split(rel)
        if name == _CIFAR10.meta_file:
            found.append(_CifarPlan(folder, _CIFAR10))
        elif name == _CIFAR100.meta_file and any(
                posixpath.join(folder, f) in files for f in ("train", "test")):
            found.append(_CifarPlan(folder, _CIFAR100))
    return min(found, key=lambda p: (_depth(p.folder), p.folder), default=None)


def _plan_folder(listing: _Listing, split_dir: str) -> _FolderPlan:
    """Collect classes and images of one split folder."""
    shown = listing.display(split_dir)
    classes = sorted(posixpath.basename(d) for d in listing.dirs
                     if _parent(d) == split_dir)
    if not classes:
        loose = sum(1 for f in listing.files if _parent(f) == split_dir and _is_image(f))
        extra = f" It holds {loose} image(s) directly; move them into one folder per class." \
            if loose else ""
        raise DataError(f"split folder {shown} has no class subfolders; expected "
                        f"{shown}/<class>/<image>.jpg.{extra}")
    by_class: dict[str, list[str]] = {name: [] for name in classes}
    for rel in listing.files:
        class_dir = _parent(rel)
        if _parent(class_dir) == split_dir and _is_image(rel):
            by_class[posixpath.basename(class_dir)].append(rel)
    entries = tuple((label, rel) for label, name in enumerate(classes)
                    for rel in sorted(by_class[name], key=posixpath.basename))
    empty = tuple(c for c in classes if not by_class[c])
    return _FolderPlan(split_dir, tuple(classes), entries, empty)


def _missing_split_error(listing: _Listing, split: str) -> DataError:
    """DataError for a source with images but no ``split`` folder, or of unknown format."""
    split_dirs = sorted({d for f in listing.files if (d := _class_image_split_dir(f)) is not None})
    if split_dirs:
        shown = ", ".join(repr(d) for d in split_dirs)
        return DataError(
            f"no split folder {split!r} in {listing.where}; folders that hold class subfolders "
            f"with images: {shown}. Fix: use one of those split names or create "
            f"<root>/{split}/<class>/<image>.jpg.")
    top = sorted({rel.split("/")[0] for rel in listing.files} | {d.split("/")[0]
                                                              for d in listing.dirs})
    return DataError(
        f"unknown dataset format: {listing.where} is neither an ImageFolder tree "
        f"(<root>/<split>/<class>/<image>.jpg) nor CIFAR python batches (data_batch_1..5, "
        f"test_batch, batches.meta) nor IDX files ({', '.join(sorted(idx.FILE_NAMES)[:4])}, "
        f"...); top-level entries: {top[:_MAX_LISTED]}. {_LOCATION_HINT}")


def _plan(listing: _Listing, split: str) -> _FolderPlan | _CifarPlan | _IdxPlan:
    """Decide how to read ``split``: the shallowest ``split`` folder, else CIFAR batches, else
    IDX files."""
    split_dirs = sorted((d for d in listing.dirs if _is_split_dir(d, split)),
                        key=lambda d: (_depth(d), d))
    if split_dirs:
        tied = [d for d in split_dirs if _depth(d) == _depth(split_dirs[0])]
        if len(tied) > 1:
            raise DataError(f"ambiguous split {split!r} in {listing.where}: several folders "
                            f"match ({', '.join(tied)}). Fix: point data_dir at one of them.")
        return _plan_folder(listing, split_dirs[0])
    cifar = _find_cifar(listing)
    if cifar is not None:
        return cifar
    idx_folder = idx.find_folder(listing.files)
    if idx_folder is not None:
        return _IdxPlan(idx_folder)
    raise _missing_split_error(listing, split)


# --------------------------------------------------------------------------- assembling


def _assemble(plan: _FolderPlan, decoded: dict[str, Decoded], listing: _Listing,
              bad_files: str) -> ArrayDataset:
    """Turn decode results into an ArrayDataset under the ``bad_files`` policy: 'strict' raises
    one DataError listing every bad file and empty class folder; 'skip' leaves bad files out
    (recorded in ``skipped``) unless none is good."""
    bad = [(printable(listing.display(rel)), printable(decoded[rel]))
           for _, rel in plan.entries if isinstance(decoded[rel], str)]
    kept = [(label, rel) for label, rel in plan.entries if not isinstance(decoded[rel], str)]
    if bad_files == "strict" and (bad or plan.empty_classes):
        empty = [listing.display(posixpath.join(plan.split_dir, c)) for c in plan.empty_classes]
        raise _bad_files_error(bad, empty, listing.where, bad_files)
    if bad and not kept:  # 'skip' with nothing left: the reasons say more than "no images"
        raise _bad_files_error(bad, [], listing.where, bad_files)
    names = [listing.display(rel) for _, rel in kept]
    images = _stack_images([decoded[rel] for _, rel in kept], names,
                           listing.display(plan.split_dir))
    labels = np.array([label for label, _ in kept], dtype=np.int32)
    return ArrayDataset(images, labels, plan.class_names, skipped=tuple(bad))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only accepts what CIFAR batches contain (dicts, lists, numpy arrays)."""

    _ALLOWED = frozenset({
        *((f"numpy.{core}.multiarray", name) for core in ("core", "_core")
          for name in ("_reconstruct", "scalar")),
        *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    })

    def find_class(self, module: str, name: str):
        """Resolve only allow-listed numpy reconstructors; refuse everything else."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core." + module[len("numpy.core."):]  # avoid numpy 2's warning
        return super().find_class(module, name)


def _unpickle(data: bytes, shown: str) -> dict:
    """Unpickle one CIFAR batch (Python 2 pickles: byte-string keys)."""
    try:
        batch = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any failure means a damaged batch file
        raise DataError(f"cannot read CIFAR batch {shown}: {type(e).__name__}: {e}. "
                        "Fix: re-download the CIFAR python archive.") from e
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch {shown} holds a {type(batch).__name__}, not a dict; "
                        "Fix: re-download the CIFAR python archive.")
    return batch


def _field(batch: dict, name: str, shown: str):
    """Return ``batch[name]`` accepting bytes or str keys; DataError if missing."""
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise DataError(f"CIFAR batch {shown} has no field {name!r}; "
                    "Fix: re-download the CIFAR python archive.")


def _load_cifar(plan: _CifarPlan, split: str, read: Callable[[str], bytes],
                listing: _Listing, image_size: tuple[int, int] | None) -> ArrayDataset:
    """Read the CIFAR batches of ``split`` into NHWC RGB arrays."""
    variant = plan.variant
    if split not in variant.split_files:
        raise DataError(f"CIFAR batches in {listing.display(plan.folder) or listing.where} have "
                        f"splits 'train' and 'test' only, not {split!r}.")
    files = set(listing.files)
    needed = (variant.meta_file, *variant.split_files[split])
    missing = [listing.display(plan.path(n)) for n in needed if plan.path(n) not in files]
    if missing:
        raise DataError(f"incomplete CIFAR batches, missing: {', '.join(missing)}. "
                        "Fix: re-download the CIFAR python archive.")
    meta_name = listing.display(plan.path(variant.meta_file))
    meta = _unpickle(read(plan.path(variant.meta_file)), meta_name)
    names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                  for n in _field(meta, variant.names_field, meta_name))
    images, labels = [], []
    for name in variant.split_files[split]:
        shown = listing.display(plan.path(name))
        batch = _unpickle(read(plan.path(name)), shown)
        data = np.asarray(_field(batch, "data", shown), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"CIFAR batch {shown}: data has shape {data.shape}, expected "
                            "[N, 3072]; Fix: re-download the CIFAR python archive.")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(_field(batch, variant.labels_field, shown), dtype=np.int32))
    stacked = np.ascontiguousarray(np.concatenate(images))
    if image_size is not None and tuple(image_size) != (32, 32):
        stacked = np.stack([array_to_rgb(image, image_size) for image in stacked])
    return ArrayDataset(stacked, np.concatenate(labels), names)


def _load_arrays(plan: _CifarPlan | _IdxPlan, split: str, read: Callable[[str], bytes],
                 listing: _Listing, image_size: tuple[int, int] | None) -> ArrayDataset:
    """Read ``split`` of the CIFAR batches or IDX files ``plan`` found."""
    if isinstance(plan, _IdxPlan):
        return idx.load_split(plan.folder, split, listing.files, read, listing.display,
                              listing.where, image_size)
    return _load_cifar(plan, split, read, listing, image_size)


# --------------------------------------------------------------------------- sources


def _build_from_dir(root: str, split: str, image_size: tuple[int, int] | None,
                    bad_files: str) -> ArrayDataset:
    """Decode a split from a directory (ImageFolder tree, CIFAR batches or IDX files)."""
    listing = _list_dir(root)
    plan = _plan(listing, split)
    if not isinstance(plan, _FolderPlan):
        def read(rel: str) -> bytes:
            with open(os.path.join(root, *rel.split("/")), "rb") as f:
                return f.read()
        return _load_arrays(plan, split, read, listing, image_size)
    with _Decoder(image_size) as decoder:
        for _, rel in plan.entries:
            decoder.add(rel, listing.display(rel))
        decoded = decoder.results()
    return _assemble(plan, decoded, listing, bad_files)


def _is_archive(path: str) -> bool:
    """Whether ``path`` has a tar archive suffix."""
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _build_from_archive(path: str, split: str, image_size: tuple[int, int] | None,
                        bad_files: str) -> ArrayDataset:
    """Decode a split from a tar archive in one streaming pass.

    Members that look like ``.../<split>/<class>/<image>`` are decoded in the background while
    the archive is still being read; CIFAR batches and IDX files are kept in memory. The folder
    plan is made once the whole listing is known.
    """
    listing = _archive_listing(path)
    blobs: dict[str, bytes] = {}
    with _Decoder(image_size) as decoder:
        with _reading(path), tarfile.open(path, "r|*") as archive:
            for member, rel in _members(archive, listing):
                _stash_member(archive, member, rel, split, decoder, blobs)
        plan = _plan(listing, split)
        if not isinstance(plan, _FolderPlan):
            return _load_arrays(plan, split, blobs.__getitem__, listing, image_size)
        decoded = decoder.results()
    return _assemble(plan, decoded, listing, bad_files)


def _archive_listing(path: str) -> _Listing:
    """An empty listing of the archive ``path``; its members are shown as 'ARCHIVE:MEMBER'."""
    return _Listing(where=path, display=lambda rel: f"{path}:{rel}")


def _members(archive: tarfile.TarFile,
             listing: _Listing) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """The regular-file members of ``archive`` with their normalised paths, ignored names left
    out; files and folders are recorded in ``listing`` as they come."""
    for member in archive:
        rel = posixpath.normpath(member.name.lstrip("/"))
        if rel == "." or _is_ignored(rel):
            continue
        if member.isdir():
            listing.add_dir(rel)
        elif member.isfile():
            listing.add_file(rel)
            yield member, rel


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """Turns what reading the archive ``path`` raises into a DataError naming it."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"cannot read archive {path}: {type(e).__name__}: {e}. "
                        "Fix: re-download or re-create the archive.") from e


@dataclasses.dataclass(frozen=True)
class _TarIndex:
    """Where the files of an uncompressed tar are: ``files`` (member paths, normalised, in
    archive order), ``dirs`` (every folder) and ``spans`` [files, 2] int64, the (offset, size)
    of each file's bytes."""

    files: np.ndarray
    dirs: np.ndarray
    spans: np.ndarray

    def __len__(self) -> int:
        """Number of files."""
        return len(self.files)

    def listing(self, path: str) -> _Listing:
        """The archive's listing, as :func:`_build_from_archive` makes it in one pass."""
        listing = _archive_listing(path)
        listing.files.extend(str(rel) for rel in self.files)
        listing.dirs.update(str(rel) for rel in self.dirs)
        return listing

    @classmethod
    def from_arrays(cls, npz: Mapping[str, np.ndarray]) -> _TarIndex:
        """The index from its cache file's arrays."""
        return cls(npz["files"], npz["dirs"], npz["spans"])


def _index_tar(path: str, cache_dir: str | None) -> _TarIndex:
    """The index of the uncompressed tar ``path`` (a member's offset and size, for reading it
    by seeking), scanned once and cached under the archive's fingerprint. Scanning reads each
    member's header and seeks over its data; a compressed archive cannot be read so."""

    def scan() -> _TarIndex:
        start = time.perf_counter()
        listing = _archive_listing(path)
        with _reading(path), tarfile.open(path, "r:") as archive:
            spans = [(member.offset_data, member.size)
                     for member, _ in _members(archive, listing)]
        logger.info("Indexed %d files of archive %s in %.1f s", len(spans), path,
                    time.perf_counter() - start)
        return _TarIndex(np.array(listing.files, dtype=str),
                         np.array(sorted(listing.dirs), dtype=str),
                         np.array(spans, dtype=np.int64).reshape(-1, 2))

    return cached({"fingerprint": fingerprint(path), "index": "tar members"}, cache_dir, scan,
                  to_arrays=dataclasses.asdict, from_arrays=_TarIndex.from_arrays,
                  what="member offsets of the archive")


def _build_from_npz(path: str, split: str, image_size: tuple[int, int] | None,
                    bad_files: str) -> ArrayDataset:
    """Read a split of Keras' mnist.npz (no per-file policy: ``bad_files`` is unused)."""
    return idx.load_npz(path, split, image_size)


def _stash_member(archive: tarfile.TarFile, member: tarfile.TarInfo, rel: str, split: str,
                  decoder: _Decoder, blobs: dict[str, bytes]) -> None:
    """Queue a candidate image of ``split`` for decoding, or keep a CIFAR batch's or an IDX
    file's bytes."""
    split_dir = _class_image_split_dir(rel)
    is_candidate = split_dir is not None and _is_split_dir(split_dir, split)
    if not is_candidate and posixpath.basename(rel) not in _ARRAY_FILES:
        return
    extracted = archive.extractfile(member)
    data = extracted.read() if extracted is not None else b""
    if is_candidate:
        decoder.add(rel, data)
    else:
        blobs[rel] = data


def _normalize_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    """Validate ``image_size`` as two positive ints (H, W)."""
    if image_size is None:
        return None
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise DataError(f"image_size must be (height, width) with positive values, got "
                        f"{image_size!r}; Fix: set config.dataset.image_size=(H, W) or None.")
    return size


@dataclasses.dataclass(frozen=True)
class _Tfds:
    """An opened TFDS split: its data source, image and label feature keys, class names, and
    how messages name it."""

    source: Any
    image_key: str
    label_key: str
    class_names: tuple[str, ...]
    where: str


def _open_tfds(spec: str, split: str, decoders: dict | None = None) -> _Tfds:
    """Split ``split`` of the prepared TFDS dataset ``name[@data_dir]`` through
    ``tfds.data_source``: random access to its array_record files, with no TensorFlow and no
    download."""
    import tensorflow_datasets as tfds  # lazy: slow import, only needed for this source

    name, _, data_dir = spec.partition("@")
    where = f"{TFDS_PREFIX}{spec} split {split!r}"
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                                  decoders=decoders)
    except Exception as e:  # tfds raises many types for "not available"
        raise DataError(
            f"cannot open {where}: {type(e).__name__}: {e}. Fix: prepare it once with "
            f"`tfds build {name}` (needs `pip install cv_jax[tfds-prepare]`), give its folder as "
            f"'{TFDS_PREFIX}{name}@DATA_DIR', or use an ImageFolder/CIFAR copy via "
            "--config.dataset.data_dir.") from e
    features = source.dataset_info.features
    label_key = _feature_key(features, tfds.features.ClassLabel, "label", where)
    return _Tfds(source, _feature_key(features, tfds.features.Image, "image", where), label_key,
                 tuple(features[label_key].names), where)


def _tfds_image(example: dict, image_key: str, image_size: tuple[int, int] | None,
                region: Region | None = None, resize: str = "antialias") -> np.ndarray:
    """A TFDS example's image (decoded by tfds) as RGB uint8, ``region`` of it kept if given,
    resized to ``image_size`` (as ``resize`` says, for a region)."""
    return array_to_rgb(np.asarray(example[image_key]), image_size, region, resize)


def _load_tfds(spec: str, split: str, image_size: tuple[int, int] | None) -> ArrayDataset:
    """Read a prepared TFDS dataset ``name[@data_dir]`` via tfds.data_source (no TensorFlow)."""
    tfds = _open_tfds(spec, split)
    arrays, labels = [], []
    for index in range(len(tfds.source)):
        example = tfds.source[index]
        arrays.append(_tfds_image(example, tfds.image_key, image_size))
        labels.append(int(example[tfds.label_key]))
    names = [f"{tfds.where} example {i}" for i in range(len(arrays))]
    return ArrayDataset(_stack_images(arrays, names, tfds.where),
                        np.array(labels, dtype=np.int32), tfds.class_names)


_TFDS_SOURCES: dict[tuple[str, str, int], Any] = {}  # (spec, split, process id) -> data source
# One thread at a time opens a data source and reads its first record: the first opening in a
# process imports tensorflow_datasets, and reading decodes through more of its lazily imported
# modules (etils); two threads importing them at once can deadlock (a Grain worker process's
# reading threads all start with a record each).
_TFDS_OPENING = threading.Lock()


@dataclasses.dataclass(frozen=True)
class _TfdsRecords:
    """A FileDataset reader: the records of split ``split`` of the TFDS dataset ``spec``, keyed
    by index, each image as :func:`_load_tfds` converts it. The data source is opened once per
    process (its random-access reads are thread-safe, as Grain requires of a data source)."""

    spec: str
    split: str
    image_key: str

    def __call__(self, key: np.integer, image_size: tuple[int, int] | None,
                 region: Region | None = None, resize: str = "antialias") -> Decoded:
        """Record ``key``'s image (``region`` of it, if given, resized as ``resize`` says), or
        the reason it cannot be read."""
        opened = (self.spec, self.split, os.getpid())
        try:
            if opened not in _TFDS_SOURCES:
                with _TFDS_OPENING:
                    if opened not in _TFDS_SOURCES:
                        source = _open_tfds(self.spec, self.split).source
                        if len(source):
                            source[0]  # the lazy imports of reading, under the lock too
                        _TFDS_SOURCES[opened] = source
            return _tfds_image(_TFDS_SOURCES[opened][int(key)], self.image_key, image_size,
                               region, resize)
        except ImportError:  # a missing optional package (resize='bilinear'), not a bad record
            raise
        except Exception as e:  # a record that does not read or decode is a bad example
            return f"{type(e).__name__}: {e}"


def _tfds_labels(spec: str, split: str, tfds: _Tfds, cache_dir: str | None) -> np.ndarray:
    """The labels of every record of an opened TFDS split, read with the images left
    undecoded, and cached under the fingerprint of the prepared dataset's folder (a folder
    on this machine; one elsewhere is read again each time)."""
    from tensorflow_datasets import decode  # lazy, as in _open_tfds

    def scan() -> np.ndarray:
        records = _open_tfds(spec, split, {tfds.image_key: decode.SkipDecoding()}).source
        return np.array([int(records[i][tfds.label_key]) for i in range(len(records))],
                        dtype=np.int32)

    folder = os.fspath(tfds.source.dataset_info.data_dir)
    if not os.path.isdir(folder):
        return scan()
    return cached({"fingerprint": fingerprint(folder), "tfds": spec, "split": split}, cache_dir,
                  scan, to_arrays=lambda labels: {"labels": labels},
                  from_arrays=lambda npz: npz["labels"], what="labels of the TFDS split")


def _feature_key(features, feature_type: type, preferred: str, where: str) -> str:
    """Key of the ``preferred`` feature if it has ``feature_type``, else the first that does."""
    keys = [k for k in features.keys() if isinstance(features[k], feature_type)]
    if preferred in keys:
        return preferred
    if not keys:
        raise DataError(f"{where} has no {feature_type.__name__} feature (features: "
                        f"{list(features.keys())}); only image classification datasets work.")
    return keys[0]


def load_split(source: str, split: str, *, image_size: tuple[int, int] | None = None,
               cache_dir: str | None = None, bad_files: str = "strict") -> ArrayDataset:
    """Load one split of a dataset fully into memory (see the module docstring for formats).

    Args:
      source: an ImageFolder directory or .tar.gz/.tgz/.tar archive, a CIFAR python batches
        folder / its parent / cifar-10-python.tar.gz, a folder (or archive) of MNIST-format
        IDX files, Keras' mnist.npz, or 'tfds:<name>[@<data_dir>]'.
      split: 'train', 'test', or (ImageFolder) any split folder name.
      image_size: (H, W) to resize every image to with PIL bilinear; if None, all images
        must already have the same size.
      cache_dir: folder for decoded-split caches (default $CV_JAX_CACHE or ~/.cache/cv_jax).
        File sources are cached; tfds sources are read directly (they are already prepared).
      bad_files: 'strict' (undecodable files or class folders without images are one
        DataError listing them all) or 'skip' (bad files left out, logged and listed in the
        result's ``skipped``; empty classes kept with 0 examples); part of the cache key.

    Raises:
      DataError: the source is missing or malformed, or (strict) has bad files.
    """
    size = _normalize_size(image_size)
    if bad_files not in BAD_FILES_POLICIES:
        raise DataError(f"bad_files must be one of {BAD_FILES_POLICIES}, got {bad_files!r}; "
                        "Fix: set config.dataset.bad_files='strict' or 'skip'.")
    source = os.fspath(source)
    if source.startswith(TFDS_PREFIX):
        return _load_tfds(source[len(TFDS_PREFIX):], split, size)
    path = os.path.abspath(os.path.expanduser(source))
    if not os.path.exists(path):
        raise DataError(f"dataset path does not exist: {path}. {_LOCATION_HINT}")
    is_npz = os.path.isfile(path) and path.lower().endswith(NPZ_SUFFIX)
    if os.path.isfile(path) and not _is_archive(path) and not is_npz:
        raise DataError(f"unknown dataset format: {path} is a file but not a "
                        f"{'/'.join(ARCHIVE_SUFFIXES)} archive or an {NPZ_SUFFIX} (Keras' "
                        f"mnist.npz). {_LOCATION_HINT}")
    build_fn = (_build_from_npz if is_npz else
                _build_from_archive if os.path.isfile(path) else _build_from_dir)

    def build() -> ArrayDataset:
        start = time.perf_counter()
        dataset = build_fn(path, split, size, bad_files)
        logger.info("Decoded %d images of split %r from %s in %.1f s", len(dataset), split,
                    path, time.perf_counter() - start)
        return dataset

    key = {"fingerprint": fingerprint(path), "split": split, "image_size": size,
           "bad_files": bad_files}
    dataset = cached(key, cache_dir, build)
    _report_gaps(dataset, f"split {split!r} of {printable(path)}")
    return dataset


def list_split(source: str, split: str, *, image_size: tuple[int, int] | None = None,
               bad_files: str = "strict", cache_dir: str | None = None,
               crop: int = 0) -> FileDataset | None:
    """A ``split`` as images to read and decode when batched (the streaming pipeline): the
    images, labels and class order :func:`load_split` would decode, found by the same listing
    and plan. An ImageFolder directory is walked; an uncompressed ``.tar`` is indexed once
    (each member's offset and size, cached in ``cache_dir`` under the archive's fingerprint)
    and its members are read by seeking; a ``tfds:`` split's records are read by index through
    ``tfds.data_source`` (their labels read once and cached).

    None, with the reason logged, for a source read with :func:`load_split` instead: a
    compressed archive (gzip has no random access), CIFAR batches, IDX files, mnist.npz.

    ``crop`` > 0 (the stream's host crop, ``dataset.stream_crop``): training reads a crop of
    each image at its own size, ``crop`` square, which is the split's image shape. Nothing is
    decoded but the first image (for the image shape, unless ``crop`` or ``image_size`` gives
    it); class folders without images are an error under ``bad_files='strict'``, as in
    :func:`load_split`.
    """
    size = _normalize_size(image_size)
    source = os.fspath(source)
    if source.startswith(TFDS_PREFIX):
        spec = source[len(TFDS_PREFIX):]
        tfds = _open_tfds(spec, split)
        labels = _tfds_labels(spec, split, tfds, cache_dir)
        paths = np.array([f"{tfds.where} example {i}" for i in range(len(labels))], dtype=object)
        files = FileDataset(paths, labels, tfds.class_names, (0, 0, 3), size,
                            bad_files=bad_files, reader=_TfdsRecords(spec, split, tfds.image_key),
                            keys=np.arange(len(labels)))
        return _shaped(files, size, crop, split, source, [])
    path = os.path.abspath(os.path.expanduser(source))
    arrays = f"If streamed, split {split!r} of {printable(source)} is streamed from its " \
        "decoded arrays (the whole split in host memory, cached):"
    if not os.path.exists(path):
        return None
    index = None
    if os.path.isfile(path):
        if not path.lower().endswith(".tar"):
            logger.info("%s %s", arrays, "a compressed archive cannot be read at random; to "
                        "stream its images from disk, decompress it (gunzip: .tar.gz -> .tar) or "
                        "extract it." if _is_archive(path) else "Keras' mnist.npz is arrays.")
            return None
        index = _index_tar(path, cache_dir)
        listing = index.listing(path)
    else:
        listing = _list_dir(path)
    plan = _plan(listing, split)
    if not isinstance(plan, _FolderPlan):
        logger.info("%s it holds %s, small enough to keep decoded.", arrays,
                    "CIFAR batches" if isinstance(plan, _CifarPlan) else "IDX files")
        return None
    empty = [listing.display(posixpath.join(plan.split_dir, c)) for c in plan.empty_classes]
    if not plan.entries or (bad_files == "strict" and empty):
        raise _bad_files_error([], empty, listing.where, bad_files)
    paths = np.array([listing.display(rel) for _, rel in plan.entries], dtype=object)
    labels = np.array([label for label, _ in plan.entries], dtype=np.int32)
    files = FileDataset(paths, labels, plan.class_names, (0, 0, 3), size, bad_files=bad_files)
    if index is not None:  # the last member of a path, as extracting the archive keeps it
        spans = dict(zip(listing.files, index.spans.tolist(), strict=True))
        members = np.array([spans[rel] for _, rel in plan.entries], dtype=np.int64)
        files = dataclasses.replace(files, reader=TarMembers(path), keys=members.reshape(-1, 2))
    return _shaped(files, size, crop, split, path, empty)


def _shaped(files: FileDataset, size: tuple[int, int] | None, crop: int, split: str,
            where: str, empty: list[str]) -> FileDataset:
    """``files`` with its image shape: the ``crop``'s if > 0, else ``size``'s, else its first
    image's; logged."""
    shape = (crop, crop, 3) if crop else (*size, 3) if size is not None else files.first_shape()
    files = dataclasses.replace(files, image_shape=shape)
    logger.info("Listed %d images of split %r in %s (streamed: decoded as batches are read)",
                len(files), split, where)
    if empty:
        logger.warning("Class folder(s) %s have no images; kept as classes with 0 examples so "
                       "that labels match other splits.", ", ".join(map(printable, empty)))
    return files


def _report_gaps(dataset: ArrayDataset, what: str) -> None:
    """Warn about skipped files and classes without examples (on cache hits too)."""
    if dataset.skipped:
        logger.warning("Skipped %d bad file(s) in %s (bad_files='skip'):\n%s",
                       len(dataset.skipped), what, _listed(dataset.skipped))
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    empty = [name for name, count in zip(dataset.class_names, counts, strict=True) if not count]
    if empty:
        logger.warning("Class folder(s) %s in %s have no images; kept as classes with 0 "
                       "examples so that labels match other splits.",
                       ", ".join(printable(name) for name in empty), what)


def check_same_classes(train: ArrayDataset, other: ArrayDataset, other_name: str) -> None:
    """Raise DataError unless ``other`` has exactly the class list of ``train``, in order."""
    if train.class_names == other.class_names:
        return
    missing = [c for c in train.class_names if c not in other.class_names]
    extra = [c for c in other.class_names if c not in train.class_names]
    parts = []
    if missing:
        parts.append(f"missing from {other_name}: {missing}")
    if extra:
        parts.append(f"present in {other_name} but not in train: {extra}")
    if not parts:
        parts.append(f"same classes in a different order: train {list(train.class_names)} vs "
                     f"{other_name} {list(other.class_names)}")
    raise DataError(f"class lists of train and {other_name} differ ({'; '.join(parts)}). "
                    f"Fix: give both splits the same class subfolders so labels line up.")
