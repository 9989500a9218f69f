"""Where cv_jax keeps files on this machine (the cache folder of decoded datasets, compiled CPU
kernels and downloaded weights), and the content hash that checks them."""

from __future__ import annotations

import hashlib
import os

CACHE_ENV = "CV_JAX_CACHE"


def default_cache_dir() -> str:
    """Return ``$CV_JAX_CACHE`` if set, else ``~/.cache/cv_jax``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "cv_jax")


def file_sha256(path: str) -> str:
    """The SHA-256 hex digest of the file's contents, read in 1 MiB blocks (hashlib's
    ``file_digest`` needs Python 3.11; 3.10 is supported)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
