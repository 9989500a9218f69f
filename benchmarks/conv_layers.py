"""Per-layer convolution timings on the CPU: cv_jax's kernels, XLA's convolutions, PyTorch.

For each 3x3 layer shape of a CIFAR ResNet (and the stride-2 ones), prints the median time in
ms (and GFLOP/s) of the forward pass, the input gradient and the weight gradient, each as its
own jitted program (cv_jax: the kernels as the CPU formulations call them; PyTorch: eager,
channels_last, torch.nn.grad).

    python benchmarks/conv_layers.py --batch=128 --repeats=15
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from cv_jax.models.cpu import formulations as cpu_formulations
from cv_jax.models.cpu import kernels as cpu_kernels

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 128, "Batch size.")
flags.DEFINE_integer("repeats", 15, "Timed calls per pass (median reported).")
flags.DEFINE_bool("torch", True, "Also time PyTorch's passes.")

# (height, width, in channels, out channels, stride)
LAYERS = ((32, 32, 16, 16, 1), (16, 16, 32, 32, 1), (8, 8, 64, 64, 1),
          (32, 32, 16, 32, 2), (16, 16, 32, 64, 2))
NHWC = ("NHWC", "HWIO", "NHWC")


def _median_ms(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _jax_passes(x, w, stride):
    padding = ((1, 1), (1, 1))
    strides = (stride, stride)

    def xla(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)

    y = xla(x, w)
    out_size = y.shape[1:3]
    kernel = {
        "forward": jax.jit(lambda x, w: cpu_kernels.conv_forward(x, w, out_size, strides, (1, 1))),
        "weight grad": jax.jit(lambda x, g: cpu_kernels.conv_weight_grad(
            x, g, (3, 3), strides, (1, 1))),
    }
    kernel["input grad"] = jax.jit(lambda g, w: cpu_formulations._input_gradient(
        g, w, x.shape[1:3], strides, (1, 1)))
    xla_passes = {
        "forward": jax.jit(xla),
        "input grad": jax.jit(lambda g, w: jax.vjp(lambda x: xla(x, w), x)[1](g)[0]),
        "weight grad": jax.jit(lambda x, g: jax.vjp(lambda w: xla(x, w), w)[1](g)[0]),
    }
    return y, kernel, xla_passes


def _torch_passes(x, w, stride):
    import torch

    tx = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    tw = torch.from_numpy(np.asarray(w)).permute(3, 2, 0, 1).contiguous(
        memory_format=torch.channels_last)
    ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1)
    g = torch.ones_like(ty)

    def timed(fn):
        fn()
        times = []
        for _ in range(FLAGS.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    with torch.no_grad():
        return {
            "forward": timed(lambda: torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1)),
            "input grad": timed(lambda: torch.nn.grad.conv2d_input(
                tx.shape, tw, g, stride=stride, padding=1)),
            "weight grad": timed(lambda: torch.nn.grad.conv2d_weight(
                tx, tw.shape, g, stride=stride, padding=1)),
        }


def main(argv):
    del argv
    if not cpu_kernels.load():
        raise SystemExit("cv_jax's CPU kernels are not available (CV_JAX_CPU_KERNELS=0 or no "
                         "C compiler)")
    print(f"jax {jax.__version__}, batch {FLAGS.batch}, median of {FLAGS.repeats} calls, "
          "ms (GFLOP/s)")
    print("| layer | stride | pass | cv_jax kernel | XLA | PyTorch |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for h, wd, c, co, stride in LAYERS:
        x = jnp.asarray(rng.standard_normal((FLAGS.batch, h, wd, c), np.float32))
        w = jnp.asarray(rng.standard_normal((3, 3, c, co), np.float32))
        y, kernel, xla_passes = _jax_passes(x, w, stride)
        g = jnp.ones_like(y)
        gflop = 2 * y.size * 9 * c / 1e9
        torch_ms = _torch_passes(x, w, stride) if FLAGS.torch else {}
        operands = {"forward": (x, w), "input grad": (g, w), "weight grad": (x, g)}
        for name in ("forward", "input grad", "weight grad"):
            cells = []
            for ms in (_median_ms(kernel[name], *operands[name]) if name in kernel else None,
                       _median_ms(xla_passes[name], *operands[name]),
                       torch_ms.get(name)):
                cells.append("–" if ms is None else f"{ms:.1f} ({gflop / ms * 1e3:.0f})")
            print(f"| {h}x{wd}x{c}->{co} | {stride} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    app.run(main)
