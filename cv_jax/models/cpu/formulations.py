"""Formulations of a train step's layers that XLA:CPU runs faster, with the same values (up to
float32 rounding).

A model built with :data:`CPU` (``cv_jax.models.create_model(..., layer_impl=CPU)``; a run
trains with it when ``config.training.cpu_formulations`` resolves to on, by default on the CPU
backend) uses them:

- every :class:`cv_jax.models.layers.Conv` (:func:`conv_general_dilated`) runs on cv_jax's CPU
  kernels (:mod:`cv_jax.models.cpu.kernels`; equal up to float32 summation order) where they
  apply (float32, NHWC, a multiple of 8 output channels, ...), and otherwise passes its input
  through :func:`materialize`;
- every max pool (:func:`max_pool`) computes its gradient by shifted comparisons instead of
  XLA's select-and-scatter;
- every float32 training-mode :class:`cv_jax.models.layers.BatchNorm` normalises through
  :func:`batch_norm_train`, whose gradient is written out (same values up to float32
  rounding; two passes over the activations in the backward pass instead of four, and no
  stored ``x - mean``).

Measurements: experiments/speed/RESULTS.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cv_jax.models.cpu import kernels as cpu_kernels
from cv_jax.models.layers import LayerImpl, Pads, batch_statistics


def materialize(x: jax.Array) -> jax.Array:
    """``x``, bit for bit, but computed once into memory instead of being recomputed by each
    fused consumer.

    XLA:CPU copies cheap elementwise producers (BatchNorm's normalisation, ReLU, residual adds)
    into every fusion that reads them. In a backward pass those readers include the transposes
    that feed each convolution's weight gradient, so a ResNet recomputes whole chains of
    blocks there (about 40% of a ResNet-20 step on 2 cores). XLA's fusion never duplicates a
    floating-point division, so ``x / 1``, with the 1 hidden from the algebraic simplifier
    behind an optimisation barrier, is computed exactly once.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x / lax.optimization_barrier(jnp.ones((), x.dtype))


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             padding: Pads) -> jax.Array:
    """``flax.linen.max_pool`` of NHWC ``x`` whose gradient comes from
    :func:`_max_pool_gradient` (same values: each window's gradient goes to its first maximum in
    row-major order, as XLA's select-and-scatter sends it)."""
    padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return _max_pool(x, tuple(window), tuple(strides), padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    return nn.max_pool(x, window, strides, padding)


def _max_pool_forward(x, window, strides, padding):
    y = nn.max_pool(x, window, strides, padding)
    return y, (x, y)


def _max_pool_gradient(window, strides, padding, residuals, g):
    """The max pool's input gradient as one pass per window position.

    XLA:CPU expands select-and-scatter into a scatter with four index arrays the size of the
    pooled input (about 12% of an airbench step). Here, for each position (i, j) of the window
    in row-major order, the inputs it picks out (a strided slice) that equal their window's
    maximum, and belong to no window position before it, receive the output gradient through
    a strided (interior-padded) pad. Comparisons, selects and pads are loop-fusible.
    """
    x, y = residuals
    batch, height, width, channels = x.shape
    if isinstance(padding, str):
        padding = lax.padtype_to_pads((height, width), window, strides, padding)
    (top, bottom), (left, right) = padding
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)),
                     constant_values=-jnp.inf)
    out_h, out_w = y.shape[1:3]
    stride_h, stride_w = strides
    span_h, span_w = (out_h - 1) * stride_h + 1, (out_w - 1) * stride_w + 1
    zero = jnp.zeros((), g.dtype)
    taken = jnp.zeros(y.shape, bool)
    grad = jnp.zeros(padded.shape, g.dtype)
    for i in range(window[0]):
        for j in range(window[1]):
            picked = lax.slice(padded, (0, i, j, 0), (batch, i + span_h, j + span_w, channels),
                               (1, stride_h, stride_w, 1))
            first = (picked == y) & ~taken
            taken = taken | first
            grad = grad + lax.pad(jnp.where(first, g, zero), zero, (
                (0, 0, 0),
                (i, padded.shape[1] - i - span_h, stride_h - 1),
                (j, padded.shape[2] - j - span_w, stride_w - 1),
                (0, 0, 0)))
    return (grad[:, top:top + height, left:left + width, :],)


_max_pool.defvjp(_max_pool_forward, _max_pool_gradient)


NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Pads, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
                         feature_group_count: int = 1, precision=None) -> jax.Array:
    """``lax.conv_general_dilated``, where a float32 NHWC 2-D convolution without dilation or
    groups, with a multiple of 8 output channels, runs on cv_jax's CPU kernels
    (:mod:`cv_jax.models.cpu.kernels`): its value, its weight gradient and, onto a multiple of
    8 input channels, its input gradient (:func:`_input_gradient`, any stride). Any other
    convolution is XLA's, on its input passed through :func:`materialize`. (A kernel's input
    is a buffer of its own anyway, so it needs no materialising.)"""
    args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                precision=precision)
    if not _kernel_applies(lhs, rhs, **args):  # XLA's convolution, on a materialised input
        return lax.conv_general_dilated(materialize(lhs), rhs, window_strides, padding, **args)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))


def _kernel_applies(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, precision) -> bool:
    plain = lhs.ndim == 4 and feature_group_count == 1 and precision is None and all(
        d is None or all(v == 1 for v in d) for d in (lhs_dilation, rhs_dilation))
    return (plain and lhs.dtype == rhs.dtype == jnp.float32 and rhs.shape[-1] % 8 == 0
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
            and jax.default_backend() == "cpu" and cpu_kernels.load())


def _lax_conv(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, padding):
    return _conv_forward(x, w, strides, padding)[0]


def _conv_forward(x, w, strides, padding):
    output_size = jax.eval_shape(lambda x, w: _lax_conv(x, w, strides, padding), x, w).shape[1:3]
    low = tuple(before for before, _ in padding)
    return cpu_kernels.conv_forward(x, w, output_size, strides, low), (x, w)


def _conv_gradient(strides, padding, residuals, g):
    """Weight gradient from cv_jax's kernel; input gradient from its forward kernel too where
    the input has a multiple of 8 channels (:func:`_input_gradient`), else from XLA."""
    x, w = residuals
    (top, _), (left, _) = padding
    weight_grad = cpu_kernels.conv_weight_grad(x, g, w.shape[:2], strides, (top, left))
    if x.shape[-1] % 8 == 0:
        input_grad = _input_gradient(g, w, x.shape[1:3], strides, (top, left))
    else:
        input_grad = jax.vjp(lambda x: _lax_conv(x, w, strides, padding), x)[1](g)[0]
    return input_grad, weight_grad


def _input_gradient(g, w, size, strides, low):
    """dx of ``y = conv(x, w)`` (NHWC, HWIO, input ``size`` (H, W)) from the output gradient
    ``g``, as stride-1 forward convolutions on cv_jax's kernel.

    Input row ih = s * i + r receives from the taps kh = k0 + s * t with k0 = (r + pad) mod s,
    at output rows i + (r + pad - k0) / s - t: a stride-1 convolution of ``g`` with those taps,
    flipped and transposed (in and out channels swapped). With stride 1 that is the whole
    kernel; with stride s there is one such convolution per residue class (r, q) of (ih, iw),
    and their results are interleaved (classes without taps receive zeros)."""
    (sh, sw), (height, width) = strides, size
    rows, cols = -(-height // sh), -(-width // sw)  # the largest class's size
    classes = []
    for r in range(sh):
        row_first, row_pad = _class_taps(r, low[0], sh, w.shape[0])
        for q in range(sw):
            col_first, col_pad = _class_taps(q, low[1], sw, w.shape[1])
            taps = w[row_first::sh, col_first::sw]
            if taps.size == 0:
                classes.append(jnp.zeros((g.shape[0], rows, cols, w.shape[2]), g.dtype))
                continue
            kernel = jnp.transpose(taps[::-1, ::-1], (0, 1, 3, 2))
            classes.append(cpu_kernels.conv_forward(g, kernel, (rows, cols), (1, 1),
                                                    (row_pad, col_pad)))
    if sh == sw == 1:
        return classes[0]
    grid = jnp.stack(classes, axis=3).reshape(g.shape[0], rows, cols, sh, sw, -1)
    interleaved = jnp.transpose(grid, (0, 1, 3, 2, 4, 5)).reshape(
        g.shape[0], rows * sh, cols * sw, -1)
    return interleaved[:, :height, :width]


def _class_taps(r: int, pad: int, stride: int, size: int) -> tuple[int, int]:
    """The first of the kernel taps k0, k0 + s, ... (of ``size``) that reach input positions
    s * i + r, and the low padding of the stride-1 convolution of the output gradient with
    them, flipped."""
    first = (r + pad) % stride
    count = len(range(first, size, stride))
    return first, count - 1 - (r + pad - first) // stride


_conv.defvjp(_conv_forward, _conv_gradient)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> jax.Array:
    """``(x - mean) * (rsqrt(var + epsilon) * scale) + bias`` over the last axis with the batch's
    statistics (:func:`batch_statistics`): flax's training-mode BatchNorm, value for value.

    Its gradient is written out (:func:`_batch_norm_gradient`) instead of differentiated through
    the statistics, which makes XLA:CPU keep ``x - mean`` in memory in the forward pass and
    run four passes over the activations in the backward pass."""
    return _batch_norm_forward(x, scale, bias, epsilon)[0]


def _batch_norm_forward(x, scale, bias, epsilon):
    mean, var = batch_statistics(x)
    inv = lax.rsqrt(var + epsilon)
    return (x - mean) * (inv * scale) + bias, (x, mean, var, inv, scale)


def _batch_norm_gradient(epsilon, residuals, g):
    """With xhat = (x - mean) * inv over M positions per channel: d bias = sum(g), d scale =
    sum(g * xhat) = inv * (sum(g * x) - mean * sum(g)), and dx = scale * inv * (g - mean(g)
    - xhat * mean(g * xhat)), without the last term for a channel whose variance was clipped
    to 0 (as autodiff of the clip gives). dx is affine in g and x per channel, so the backward
    pass reads the activations twice: once for both sums, once for dx."""
    del epsilon
    x, mean, var, inv, scale = residuals
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    grad_bias = jnp.sum(g, axes)
    grad_scale = inv * (jnp.sum(g * x, axes) - mean * grad_bias)
    through_var = jnp.where(var > 0, grad_scale, 0.0) * inv / count
    gain = scale * inv
    grad_x = gain * g - (gain * through_var) * x + gain * (mean * through_var - grad_bias / count)
    return grad_x, grad_scale, grad_bias


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_gradient)


# The layers of a model built to train with these formulations.
CPU = LayerImpl(convolution=conv_general_dilated, max_pooling=max_pool,
                training_batch_norm=batch_norm_train)
