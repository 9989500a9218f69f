"""The CPU defaults cv_jax's commands apply before JAX starts its backend: the measured XLA:CPU
flags (:mod:`cv_jax.runtime.xla_flags`) and glibc malloc settings
(:mod:`cv_jax.runtime.host_malloc`).

Both were measured for the CPU backend, so :func:`apply` does nothing where a JAX accelerator
plugin (CUDA, ROCm, TPU) is installed. Importing cv_jax changes nothing in the process: each
command calls :func:`apply` in its ``__main__`` block, and a program that uses cv_jax as a
library may call it too, before its first JAX computation.
"""

from __future__ import annotations

from cv_jax.runtime import host_malloc, xla_flags


def apply() -> bool:
    """Applies the CPU defaults unless an accelerator plugin is installed; returns whether it
    did (each part still leaves alone what the user set, and honours its own off switch)."""
    if host_malloc.accelerator_plugins():
        return False
    xla_flags.apply_defaults()
    host_malloc.apply_defaults()
    return True
