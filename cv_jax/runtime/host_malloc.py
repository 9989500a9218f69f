"""glibc malloc settings cv_jax's commands apply before JAX's backend starts its threads
(:func:`cv_jax.runtime.cpu_defaults.apply`).

XLA:CPU runs most convolutions through Eigen, whose contraction packs its operands into freshly
malloc'ed scratch (75 MB per 32x32x16 convolution of ResNet-20 at batch 128), and JAX's CPU
client mallocs each call's temporaries (302 MB for that train step). glibc serves every request
over its mmap threshold (at most 32 MB), and every request from a thread's own arena over 64
MB, with a new ``mmap`` and returns it with ``munmap`` on free, so the kernel page-faults and
zeroes the scratch again on every step: ~74,000 page faults per ResNet-20 step. With one arena,
no mmap'ed chunks and a high trim threshold, freed scratch stays in the heap and is reused:
page faults per step fall ~30-fold and the CPU train step runs ~7% faster
(experiments/speed/RESULTS.md). The price is memory the process keeps rather than returning it
to the system (peak RSS of that benchmark 1.5 -> 2.6 GB).

The settings are process-wide, so they reach every library in the process (PyTorch too).
They were measured for the CPU backend, so they are applied only where no JAX accelerator
plugin (CUDA, ROCm, TPU) is installed, only with glibc, never over a ``MALLOC_*`` variable
the user set (glibc reads those itself), and not at all with ``CV_JAX_MALLOC_DEFAULTS=0``.
Threads that made their first allocation before the settings keep their arenas, so apply them
before starting JAX's backend (``jax.devices()``, the first array).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import platform

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# (mallopt parameter, value, the environment variable glibc reads for it)
SETTINGS = (
    (M_ARENA_MAX, 1, "MALLOC_ARENA_MAX"),  # every thread allocates from the main heap
    (M_MMAP_MAX, 0, "MALLOC_MMAP_MAX_"),  # which serves large requests too, without mmap
    (M_TRIM_THRESHOLD, 2**31 - 1, "MALLOC_TRIM_THRESHOLD_"),  # and keeps what is freed
)


def accelerator_plugins() -> list[str]:
    """JAX's installed accelerator plugins (``jax_plugins.*``, ``libtpu``), found without
    importing JAX."""
    found = []
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        found += [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)]
    if importlib.util.find_spec("libtpu") is not None:
        found.append("libtpu")
    return found


def settings_to_apply(environ: dict[str, str], libc_name: str,
                      plugins: list[str]) -> list[tuple[int, int]]:
    """The (parameter, value) pairs to pass to mallopt in this environment."""
    if (libc_name != "glibc" or plugins
            or environ.get("CV_JAX_MALLOC_DEFAULTS", "1") == "0"):
        return []
    return [(param, value) for param, value, env_name in SETTINGS if env_name not in environ]


def apply_defaults() -> list[tuple[int, int]]:
    """Applies :data:`SETTINGS` through glibc's ``mallopt``; returns the pairs applied."""
    pairs = settings_to_apply(dict(os.environ), platform.libc_ver()[0], accelerator_plugins())
    if not pairs:
        return []
    libc = ctypes.CDLL(None)
    return [(param, value) for param, value in pairs if libc.mallopt(param, value) == 1]
