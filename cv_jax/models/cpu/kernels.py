"""Hand-written CPU kernels, compiled on first use and called from XLA through its FFI.

``conv2d.c``: a 2-D convolution and its weight gradient in the arrays' own NHWC / HWIO
layouts (XLA:CPU runs Eigen's convolutions, and for the weight gradient first transposes both
operands; measurements in experiments/speed/RESULTS.md).

The C file is compiled with the system's C compiler (``$CC``, else ``cc``/``gcc``) for this
machine (``-march=native``, plus ``$CV_JAX_KERNEL_FLAGS``) into the cache folder
(``$CV_JAX_CACHE`` or ``~/.cache/cv_jax``, ``kernels/``), keyed by the source, the flags, the
XLA FFI header and the CPU's features, and registered with XLA once per process. Without a
compiler, or if compiling fails, :func:`load` returns False (with one warning) and callers keep
XLA's own convolution; so does ``CV_JAX_CPU_KERNELS=0``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import numpy as np

from cv_jax.runtime.paths import default_cache_dir

SOURCE = os.path.join(os.path.dirname(__file__), "conv2d.c")
FORWARD, WEIGHT_GRAD = "cv_jax_conv_forward", "cv_jax_conv_weight_grad"  # XLA custom-call names
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-ffp-contract=fast", "-D_GNU_SOURCE",
         "-shared", "-fPIC")


def _flags() -> tuple[str, ...]:
    """FLAGS plus any in ``$CV_JAX_KERNEL_FLAGS`` (e.g. ``-mno-avx512f`` builds the kernels'
    8-float AVX2 tiles on a CPU with AVX-512)."""
    return FLAGS + tuple(os.environ.get("CV_JAX_KERNEL_FLAGS", "").split())


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_features() -> str:
    """The CPU's feature flags (what ``-march=native`` compiles for)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def library_path(compiler: str) -> str:
    """Where the kernel library for this source, compiler, header and CPU is cached."""
    header = os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h")
    digest = hashlib.sha256()
    for part in (pathlib.Path(SOURCE).read_bytes(), pathlib.Path(header).read_bytes(),
                 " ".join(_flags()).encode(), compiler.encode(), _cpu_features().encode(),
                 platform.machine().encode()):
        digest.update(hashlib.sha256(part).digest())
    return os.path.join(default_cache_dir(), "kernels",
                        f"conv2d-{digest.hexdigest()[:16]}.so")


def build(compiler: str) -> str:
    """The cached kernel library for ``compiler``, compiled first if it is not there yet."""
    path = library_path(compiler)
    if not os.path.exists(path):
        _compile(compiler, path)
    return path


def _compile(compiler: str, path: str) -> None:
    """Compiles the kernel to ``path`` (written to a temporary file, then renamed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    try:
        subprocess.run([compiler, *_flags(), "-I", jax.ffi.include_dir(), SOURCE, "-o", tmp],
                       check=True, capture_output=True, text=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.cache
def load() -> bool:
    """Compiles (if not cached) and registers the kernel with XLA's CPU backend; False, with a
    warning, where that is not possible; False if ``$CV_JAX_CPU_KERNELS`` is 0."""
    if os.environ.get("CV_JAX_CPU_KERNELS", "1") == "0":
        return False
    compiler = _compiler()
    if compiler is None:
        warnings.warn("cv_jax: no C compiler (cc/gcc, or $CC) found, so convolutions use "
                      "XLA's own kernels on the CPU (slower); install gcc to use cv_jax's",
                      stacklevel=2)
        return False
    try:
        library = ctypes.cdll.LoadLibrary(build(compiler))
        for target in (FORWARD, WEIGHT_GRAD):
            handler = getattr(library, f"{target}_ffi")
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or error
        warnings.warn(f"cv_jax: compiling {SOURCE} with {compiler} failed ({detail}); "
                      "convolutions use XLA's own kernels", stacklevel=2)
        return False
    return True


def _attributes(strides: tuple[int, int], padding_low: tuple[int, int]) -> dict:
    return dict(pad_h=np.int64(padding_low[0]), pad_w=np.int64(padding_low[1]),
                stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]))


def conv_forward(x: jax.Array, kernel: jax.Array, output_size: tuple[int, int],
                 strides: tuple[int, int], padding_low: tuple[int, int]) -> jax.Array:
    """y (N, OH, OW, CO) = conv(x, kernel) for NHWC ``x`` and HWIO ``kernel``, float32, with
    ``output_size`` = (OH, OW) (the padding's high side follows from it). Needs :func:`load`
    to have returned True and CO a multiple of 8."""
    shape = jax.ShapeDtypeStruct((x.shape[0], *output_size, kernel.shape[-1]), np.float32)
    call = jax.ffi.ffi_call(FORWARD, shape, vmap_method="sequential")
    return call(x, kernel, **_attributes(strides, padding_low))


def conv_weight_grad(x: jax.Array, dy: jax.Array, kernel_size: tuple[int, int],
                     strides: tuple[int, int], padding_low: tuple[int, int]) -> jax.Array:
    """dW (KH, KW, C, CO) of ``y = conv(x, W)`` for NHWC ``x``, HWIO ``W`` and output gradient
    ``dy`` (N, OH, OW, CO), float32; the padding's high side follows from the shapes. Needs
    :func:`load` to have returned True and CO a multiple of 8."""
    shape = jax.ShapeDtypeStruct((*kernel_size, x.shape[-1], dy.shape[-1]), np.float32)
    call = jax.ffi.ffi_call(WEIGHT_GRAD, shape, vmap_method="sequential")
    return call(x, dy, **_attributes(strides, padding_low))
