"""On-disk cache of decoded datasets.

A decoded split is stored as an uncompressed ``.npz`` (``images``, ``labels``, ``class_names``,
``skipped``) named after the SHA-256 of its key parts. The key includes a :func:`fingerprint`
of the source, so editing, adding or touching a source file produces a new key and the split
is rebuilt; old entries are left in place (delete the cache folder to reclaim space). It also
includes the bad-file policy, so a split built with bad files skipped never serves a strict
load. An uncompressed tar's index (where each member's bytes are, for the streaming pipeline)
is cached the same way, as named arrays keyed by the archive's fingerprint.

The cache folder is, in order of precedence: the ``cache_dir`` argument, ``$CV_JAX_CACHE``,
``~/.cache/cv_jax``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np

from cv_jax.data.dataset import ArrayDataset
from cv_jax.data.walk import walk
from cv_jax.runtime.paths import default_cache_dir, file_sha256

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Bump when the decoding or the stored layout changes, so old cache entries are not reused.
CACHE_FORMAT_VERSION = 2  # 2: 16-bit images scaled, not clipped; `skipped` stored
# What np.load and ArrayDataset validation raise on a truncated or otherwise damaged file.
_CORRUPT_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)




def fingerprint(path: str) -> str:
    """Return a SHA-256 hex digest that changes whenever the source at ``path`` changes.

    For a directory it covers ``(relative path, size, mtime_ns)`` of every file below it (file
    contents are not read, so this stays fast for tens of thousands of images). For a file
    (an archive) it covers ``(size, mtime_ns, sha256 of the contents)``.
    """
    digest = hashlib.sha256()
    if os.path.isdir(path):
        digest.update(b"dir\n")
        for rel, is_dir, entry in walk(path):
            try:
                st = entry.stat()
            except OSError:  # a dangling or self-referencing symlink
                continue
            if not is_dir:  # fsencode: file names need not be valid UTF-8
                digest.update(os.fsencode(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n"))
    else:
        st = os.stat(path)
        digest.update(f"file\n{st.st_size}\0{st.st_mtime_ns}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def cache_path(key_parts: dict, cache_dir: str | None) -> str:
    """Return the cache file path for ``key_parts`` (the format version is added to the key)."""
    key = json.dumps({**key_parts, "cache_format": CACHE_FORMAT_VERSION}, sort_keys=True,
                     default=str)
    name = hashlib.sha256(key.encode()).hexdigest()
    return os.path.join(cache_dir or default_cache_dir(), f"{name}.npz")


def _dataset_arrays(dataset: ArrayDataset) -> dict[str, np.ndarray]:
    """A decoded split as the arrays of its cache file."""
    return {"images": dataset.images, "labels": dataset.labels,
            "class_names": np.array(dataset.class_names, dtype=str),
            "skipped": np.array(dataset.skipped, dtype=str).reshape(-1, 2)}


def _dataset(npz: Mapping[str, np.ndarray]) -> ArrayDataset:
    """A decoded split from its cache file's arrays (ArrayDataset checks dtypes and shapes)."""
    return ArrayDataset(
        images=npz["images"],
        labels=npz["labels"],
        class_names=tuple(str(name) for name in npz["class_names"]),
        skipped=tuple((str(name), str(reason)) for name, reason in npz["skipped"]),
    )


def _read(path: str, from_arrays: Callable[[Mapping[str, np.ndarray]], T]) -> T:
    """Load a cache file; raises one of ``_CORRUPT_ERRORS`` if it is damaged."""
    with np.load(path, allow_pickle=False) as npz:
        return from_arrays(npz)


def _write(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically: temp file in the same folder, then os.replace."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _try_read(path: str, from_arrays: Callable[[Mapping[str, np.ndarray]], T]) -> T | None:
    """Return the cached value, or None if absent; a corrupt file is deleted with a warning."""
    if not os.path.exists(path):
        return None
    try:
        return _read(path, from_arrays)
    except _CORRUPT_ERRORS as e:
        logger.warning("Cache file %s is corrupt (%s: %s); deleting and rebuilding it.",
                       path, type(e).__name__, e)
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        return None


def cached(key_parts: dict, cache_dir: str | None, build: Callable[[], T], *,
           to_arrays: Callable[[T], dict[str, np.ndarray]] = _dataset_arrays,
           from_arrays: Callable[[Mapping[str, np.ndarray]], T] = _dataset,
           what: str = "examples") -> T:
    """Return the value cached under ``key_parts``, building and storing it on a miss.

    ``key_parts`` must be JSON-serialisable and identify the content (source fingerprint,
    split, image size, ...). The value is a decoded split (:class:`ArrayDataset`), or, with
    ``to_arrays``/``from_arrays``, anything stored as named arrays (an archive's index);
    ``len(value)`` ``what`` are logged on a hit. If the cache folder cannot be written, a
    warning is logged and the freshly built value is returned uncached.
    """
    path = cache_path(key_parts, cache_dir)
    value = _try_read(path, from_arrays)
    if value is not None:
        logger.info("Loaded %d cached %s from %s", len(value), what, path)
        return value
    value = build()
    try:
        _write(path, to_arrays(value))
    except OSError as e:
        logger.warning("Could not write dataset cache %s (%s); continuing without it.", path, e)
    return value
