"""XLA:CPU flags cv_jax's commands set before JAX starts its backend
(:func:`cv_jax.runtime.cpu_defaults.apply`, only where no accelerator plugin is installed).

Measured on a 2-core x86 CPU with jaxlib 0.10.2 (benchmarks/xla_cpu_flags.py,
experiments/speed/RESULTS.md): routing XLA:CPU's dot products, which include the convolutions
XLA rewrites as dots (most of a CNN's weight gradients), through the YNNPACK library trains
ResNet-20 about 1.5x faster than XLA's default kernels; its reductions (BatchNorm's batch
statistics) through YNNPACK too, a further few percent. Only CPU computations are affected;
GPU and TPU programs ignore the flag.

XLA aborts the process on a flag it does not know, and these are experimental flags, so they
are added only for the jaxlib versions they were measured on (``MEASURED_ON``), never twice, and
never over a value already in ``XLA_FLAGS``. ``CV_JAX_XLA_DEFAULTS=0`` turns them off.
"""

from __future__ import annotations

import os

# flag name -> value; every one measured faster, not just different
CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "dot,reduce"}
MEASURED_ON = ("0.10.2",)


def _jaxlib_version() -> str | None:
    try:
        from jaxlib.version import __version__
    except ImportError:
        return None
    return __version__


def with_cpu_flags(xla_flags: str, jaxlib_version: str | None) -> str:
    """``xla_flags`` plus each of ``CPU_FLAGS`` it does not set yet, if ``jaxlib_version`` is
    one they were measured on; else ``xla_flags`` unchanged."""
    if jaxlib_version not in MEASURED_ON:
        return xla_flags
    added = [f"--{name}={value}" for name, value in CPU_FLAGS.items()
             if f"--{name}=" not in xla_flags]
    return " ".join([xla_flags.strip(), *added]).strip()


def apply_defaults() -> None:
    """Adds cv_jax's CPU flags to ``$XLA_FLAGS`` (effective if JAX's backend has not started)."""
    if os.environ.get("CV_JAX_XLA_DEFAULTS", "1") == "0":
        return
    os.environ["XLA_FLAGS"] = with_cpu_flags(os.environ.get("XLA_FLAGS", ""),
                                             _jaxlib_version())
