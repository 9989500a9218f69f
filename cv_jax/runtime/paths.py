"""Where cv_jax keeps files on this machine: the cache folder of decoded datasets and compiled
CPU kernels."""

from __future__ import annotations

import os

CACHE_ENV = "CV_JAX_CACHE"


def default_cache_dir() -> str:
    """Return ``$CV_JAX_CACHE`` if set, else ``~/.cache/cv_jax``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "cv_jax")
